package meta

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
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

// AgentConflictError is a claim refused because another agent holds the
// store's registration.
type AgentConflictError struct {
	Other *lbpb.AgentRegistration
}

func (e *AgentConflictError) Error() string {
	started := time.UnixMilli(e.Other.StartedAtUnixMs).UTC().Format(time.RFC3339)
	return fmt.Sprintf("store %d already has a live agent on host %q (pid %d, started %s): two agents of one store flush the same regions twice; stop that one first, or pass --take-over to replace it",
		e.Other.StoreId, e.Other.Hostname, e.Other.Pid, started)
}

// AgentClaim is a store's registration held by this agent.
type AgentClaim struct {
	// Lost closes when the registration is gone: the lease lost, the key
	// deleted, or another agent took the store over (TakenBy says who).
	Lost    <-chan struct{}
	takenBy atomic.Pointer[lbpb.AgentRegistration]
}

// TakenBy is the agent that took the store over, nil if none did.
func (a *AgentClaim) TakenBy() *lbpb.AgentRegistration { return a.takenBy.Load() }

// ClaimAgent registers reg as the one agent of its store under a lease of
// ttl and keeps it alive until ctx ends. A registration already there is
// replaced only when replace says so; otherwise the claim fails with an
// *AgentConflictError naming the other agent. The registration is watched:
// an agent that loses it to another stops being the store's agent, and
// its lease revoke on exit deletes nothing but its own registration (a
// key now under another lease is not touched).
func (c *Client) ClaimAgent(ctx context.Context, reg *lbpb.AgentRegistration, ttl time.Duration, replace func(other *lbpb.AgentRegistration) bool) (*AgentClaim, error) {
	raw, err := proto.Marshal(reg)
	if err != nil {
		return nil, fmt.Errorf("encode agent registration: %w", err)
	}
	key := AgentKey(reg.StoreId)
	rctx, cancel := c.ctx(ctx)
	lease, err := c.cli.Grant(rctx, int64(max(ttl/time.Second, 1)))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("grant agent lease: %w", err)
	}
	revoke := func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
		_, _ = c.cli.Revoke(rctx, lease.ID)
		cancel()
	}
	put := clientv3.OpPut(key, string(raw), clientv3.WithLease(lease.ID))
	rctx, cancel = c.ctx(ctx)
	resp, err := c.cli.Txn(rctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(put).Else(clientv3.OpGet(key)).Commit()
	cancel()
	if err != nil {
		revoke()
		return nil, fmt.Errorf("register agent of store %d: %w", reg.StoreId, err)
	}
	putRev := resp.Header.Revision
	if !resp.Succeeded {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) > 0 {
			other, derr := DecodeAgentRegistration(key, kvs[0].Value)
			if derr == nil && !replace(other) {
				revoke()
				return nil, &AgentConflictError{Other: other}
			}
			// An undecodable registration is nobody's: replaced.
			cmp := clientv3.Compare(clientv3.ModRevision(key), "=", kvs[0].ModRevision)
			rctx, cancel = c.ctx(ctx)
			tr, err := c.cli.Txn(rctx).If(cmp).Then(put).Commit()
			cancel()
			if err == nil && !tr.Succeeded {
				err = errors.New("it changed meanwhile")
			}
			if err != nil {
				revoke()
				return nil, fmt.Errorf("replace the registration of store %d: %w", reg.StoreId, err)
			}
			putRev = tr.Header.Revision
		} else {
			revoke()
			return nil, fmt.Errorf("register agent of store %d: the key vanished meanwhile", reg.StoreId)
		}
	}
	kctx, stop := context.WithCancel(ctx)
	ka, err := c.cli.KeepAlive(kctx, lease.ID)
	if err != nil {
		stop()
		revoke()
		return nil, fmt.Errorf("keep agent lease alive: %w", err)
	}
	lost := make(chan struct{})
	claim := &AgentClaim{Lost: lost}
	watch := c.cli.Watch(clientv3.WithRequireLeader(kctx), key, clientv3.WithRev(putRev+1))
	go func() {
		defer close(lost)
		defer stop()
		for {
			select {
			case _, ok := <-ka:
				if !ok {
					if ctx.Err() != nil {
						// A clean exit: the registration goes now, not a
						// lease TTL later, so status and `--wait` see the
						// agent gone at once.
						revoke()
					}
					return
				}
			case wr, ok := <-watch:
				if !ok || wr.Err() != nil {
					// The watch cannot be trusted any more: give the
					// registration up and let the caller claim again.
					revoke()
					return
				}
				for _, ev := range wr.Events {
					if ev.Type == clientv3.EventTypePut && clientv3.LeaseID(ev.Kv.Lease) == lease.ID {
						continue
					}
					if ev.Type == clientv3.EventTypePut {
						if other, err := DecodeAgentRegistration(key, ev.Kv.Value); err == nil {
							claim.takenBy.Store(other)
						}
					}
					revoke() // only this lease's keys: never the new owner's
					return
				}
			}
		}
	}()
	return claim, nil
}
