package meta

import (
	"context"
	"fmt"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"logbackup/proto/lbpb"
)

// Keys logbackup adds beside BR's layout. They live under
// /tidb/br-stream/stream-agent/, outside the info/..pause/ key range that
// task watchers follow, so their churn never reaches those watchers.
const agentDir = Prefix + "/stream-agent/"

// AgentPrefix holds one registration per live agent.
func AgentPrefix() string { return agentDir + "agents/" }

// AgentKey is a store's agent registration (leased).
func AgentKey(store uint64) string { return AgentPrefix() + strconv.FormatUint(store, 10) }

// agentStatePrefix covers every incarnation's state of a task in one of the
// per-task trees (span-checkpoint/, history/, recovery/).
func agentStatePrefix(dir, task string) string { return agentDir + dir + task + "/" }

// incarnationPrefix is one incarnation's state in one of those trees.
func incarnationPrefix(dir, task string, inc int64) string {
	return agentStatePrefix(dir, task) + strconv.FormatInt(inc, 10) + "/"
}

// SpanCheckpointPrefix holds each store's flushed key ranges of one
// incarnation of a task.
func SpanCheckpointPrefix(task string, inc int64) string {
	return incarnationPrefix("span-checkpoint/", task, inc)
}

// SpanCheckpointKey is one store's record.
func SpanCheckpointKey(task string, inc int64, store uint64) string {
	return SpanCheckpointPrefix(task, inc) + strconv.FormatUint(store, 10)
}

// CoordinatorPrefix is the election of the agent that publishes global
// checkpoints.
func CoordinatorPrefix() string { return agentDir + "coordinator/" }

// RegisterAgent writes reg under a lease of ttl and keeps it alive until
// ctx ends. The returned channel closes if the lease is lost (etcd
// unreachable for longer than ttl); the caller registers again.
func (c *Client) RegisterAgent(ctx context.Context, reg *lbpb.AgentRegistration, ttl time.Duration) (<-chan struct{}, error) {
	raw, err := proto.Marshal(reg)
	if err != nil {
		return nil, fmt.Errorf("encode agent registration: %w", err)
	}
	rctx, cancel := c.ctx(ctx)
	lease, err := c.cli.Grant(rctx, int64(max(ttl/time.Second, 1)))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("grant agent lease: %w", err)
	}
	rctx, cancel = c.ctx(ctx)
	_, err = c.cli.Put(rctx, AgentKey(reg.StoreId), string(raw), clientv3.WithLease(lease.ID))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("register agent of store %d: %w", reg.StoreId, err)
	}
	ka, err := c.cli.KeepAlive(ctx, lease.ID)
	if err != nil {
		return nil, fmt.Errorf("keep agent lease alive: %w", err)
	}
	lost := make(chan struct{})
	go func() {
		defer close(lost)
		for range ka {
		}
		if ctx.Err() != nil {
			// A clean exit: the registration goes now, not a lease TTL
			// later, so status and `--wait` see the agent gone at once.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
			_, _ = c.cli.Revoke(rctx, lease.ID)
			cancel()
		}
	}()
	return lost, nil
}

// Agents returns the live agents' registrations by store.
func (c *Client) Agents(ctx context.Context) (map[uint64]*lbpb.AgentRegistration, error) {
	out := map[uint64]*lbpb.AgentRegistration{}
	err := c.scan(ctx, AgentPrefix(), func(k, v []byte) error {
		reg, err := DecodeAgentRegistration(string(k), v)
		if err != nil {
			return err
		}
		out[reg.StoreId] = reg
		return nil
	})
	return out, err
}

// PutSpanCheckpoints replaces a store's flushed-range record of one
// incarnation of a task.
func (c *Client) PutSpanCheckpoints(ctx context.Context, task string, inc int64, sc *lbpb.SpanCheckpoints) error {
	raw, err := proto.Marshal(sc)
	if err != nil {
		return fmt.Errorf("encode span checkpoints: %w", err)
	}
	if err := c.put(ctx, task, SpanCheckpointKey(task, inc, sc.StoreId), string(raw)); err != nil {
		return fmt.Errorf("put span checkpoints of store %d: %w", sc.StoreId, err)
	}
	return nil
}

// SpanCheckpoints returns every store's flushed-range record of one
// incarnation of a task.
func (c *Client) SpanCheckpoints(ctx context.Context, task string, inc int64) (map[uint64]*lbpb.SpanCheckpoints, error) {
	out := map[uint64]*lbpb.SpanCheckpoints{}
	err := c.scan(ctx, SpanCheckpointPrefix(task, inc), func(k, v []byte) error {
		sc, err := DecodeSpanCheckpoints(string(k), v)
		if err != nil {
			return err
		}
		out[sc.StoreId] = sc
		return nil
	})
	return out, err
}
