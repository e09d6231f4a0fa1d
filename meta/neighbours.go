package meta

import (
	"context"
	"fmt"
	"sort"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// AdvancerOwnerPrefix is where TiDB's log-backup advancers campaign (the
// owner manager's election, prompt "log-backup"): every tidb-server with
// [log-backup] enable = true holds a leased key here, and the owner writes
// central_global. Our coordinator campaigns elsewhere (CoordinatorPrefix).
func AdvancerOwnerPrefix() string { return Prefix + "/owner/" }

// Neighbours are the other writers of a task's log-backup state that etcd
// shows: TiDB's advancer and TiKV's built-in log backup. Two writers of one
// checkpoint are unsafe (docs/DEPLOY.md).
type Neighbours struct {
	// AdvancerKeys are the live campaign keys of TiDB's advancer.
	AdvancerKeys []string
	// ForeignStores wrote store or storage checkpoints of this task but
	// have no live agent of ours and never published our span checkpoints
	// for this incarnation: TiKV's own log backup runs on them.
	ForeignStores []uint64
}

// Conflicting reports whether anyone else writes the task's state.
func (n *Neighbours) Conflicting() bool {
	return n != nil && (len(n.AdvancerKeys) > 0 || len(n.ForeignStores) > 0)
}

// Describe says what conflicts, for people.
func (n *Neighbours) Describe() []string {
	var out []string
	if len(n.AdvancerKeys) > 0 {
		out = append(out, fmt.Sprintf("TiDB's log-backup advancer is running (%d campaign key(s) under %s); the agents' coordinator does not write the global checkpoint while it does — turn it off (docs/DEPLOY.md)",
			len(n.AdvancerKeys), AdvancerOwnerPrefix()))
	}
	for _, s := range n.ForeignStores {
		out = append(out, fmt.Sprintf("store %d writes checkpoints of this task without an agent of ours: TiKV's built-in log backup is on there — set log-backup.enable = false (docs/DEPLOY.md)", s))
	}
	return out
}

// Neighbours reads who else writes task's state, given the stores our
// agents know (extra, e.g. from the task's storage) as well as etcd's.
func (c *Client) Neighbours(ctx context.Context, task string, inc int64, storageStores ...uint64) (*Neighbours, error) {
	n := &Neighbours{}
	rctx, cancel := c.ctx(ctx)
	resp, err := c.cli.Get(rctx, AdvancerOwnerPrefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	cancel()
	if err != nil {
		return nil, fmt.Errorf("read advancer campaign: %w", err)
	}
	for _, kv := range resp.Kvs {
		n.AdvancerKeys = append(n.AdvancerKeys, string(kv.Key))
	}
	writers := map[uint64]bool{}
	for _, s := range storageStores {
		writers[s] = true
	}
	var bad []CorruptRecord // a corrupt checkpoint says nothing of who wrote it
	cps, err := c.Tolerant(&bad).CheckpointsExceptRegions(ctx, task)
	if err != nil {
		return nil, err
	}
	for _, cp := range cps {
		if cp.Kind == CheckpointStore {
			writers[cp.StoreID] = true
		}
	}
	scs, err := c.Tolerant(&bad).StorageCheckpoints(ctx, task)
	if err != nil {
		return nil, err
	}
	for s := range scs {
		writers[s] = true
	}
	if len(writers) == 0 {
		return n, nil
	}
	ours, err := c.SpanCheckpoints(ctx, task, inc)
	if err != nil {
		return nil, err
	}
	agents, err := c.Agents(ctx)
	if err != nil {
		return nil, err
	}
	for s := range writers {
		if _, ok := ours[s]; ok {
			continue
		}
		if _, ok := agents[s]; ok {
			continue
		}
		n.ForeignStores = append(n.ForeignStores, s)
	}
	sort.Slice(n.ForeignStores, func(i, j int) bool { return n.ForeignStores[i] < n.ForeignStores[j] })
	return n, nil
}
