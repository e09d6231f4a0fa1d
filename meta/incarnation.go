package meta

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrStaleIncarnation: a write was refused because the task it belongs to
// was stopped, or stopped and started again, since the writer read it.
var ErrStaleIncarnation = errors.New("the task was stopped or started anew; this state belongs to an earlier incarnation")

// A task's incarnation is the create revision of its info key. TiDB's own
// `br log stop` deletes only BR's keys, and a stop can race a flush, so
// state written for one incarnation must never be read, or written, as
// another's: agent-owned keys carry the incarnation in their path, and an
// agent's writes go through a fenced client (Incarnation) whose every
// transaction compares the info key's create revision.
type fence struct {
	task string
	inc  int64
}

// Incarnation returns a view of the client whose writes of task state
// (checkpoints, span checkpoints, last errors, pause, history) only land
// while task's info key still has create revision inc; otherwise they fail
// with ErrStaleIncarnation. Reads are unchanged.
func (c *Client) Incarnation(task string, inc int64) *Client {
	cc := *c
	cc.fence = &fence{task: task, inc: inc}
	return &cc
}

// fenceCmps is the fence's condition, if any, for a write of task's state.
func (c *Client) fenceCmps(task string) ([]clientv3.Cmp, error) {
	if c.fence == nil {
		return nil, nil
	}
	if c.fence.task != task {
		return nil, fmt.Errorf("a client fenced for task %q cannot write task %q", c.fence.task, task)
	}
	return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(InfoKey(task)), "=", c.fence.inc)}, nil
}

// commit runs ops if cmps and the fence hold. ok is false when cmps failed
// but the fence held (the caller may read again and retry); a failed fence
// is ErrStaleIncarnation.
func (c *Client) commit(ctx context.Context, task string, cmps []clientv3.Cmp, ops ...clientv3.Op) (ok bool, err error) {
	fc, err := c.fenceCmps(task)
	if err != nil {
		return false, err
	}
	rctx, cancel := c.ctx(ctx)
	defer cancel()
	txn := c.cli.Txn(rctx).If(append(cmps, fc...)...).Then(ops...)
	if fc != nil {
		txn = txn.Else(clientv3.OpGet(InfoKey(task), clientv3.WithKeysOnly()))
	}
	resp, err := txn.Commit()
	if err != nil {
		return false, err
	}
	if resp.Succeeded {
		return true, nil
	}
	if fc != nil {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 || kvs[0].CreateRevision != c.fence.inc {
			return false, fmt.Errorf("task %q incarnation %d: %w", task, c.fence.inc, ErrStaleIncarnation)
		}
	}
	return false, nil
}

// put writes one key of task's state, fenced.
func (c *Client) put(ctx context.Context, task, key, value string) error {
	_, err := c.commit(ctx, task, nil, clientv3.OpPut(key, value))
	return err
}

// agentStateDirs are the per-task trees the agents keep, each
// <dir><task>/<incarnation>/….
var agentStateDirs = []string{agentDir + "span-checkpoint/", agentDir + "history/", agentDir + "recovery/", agentDir + "progress/"}

// CleanStaleAgentState removes agent-owned state of tasks that no longer
// exist and of earlier incarnations of those that do (TiDB's `br log stop`
// leaves it behind). Each removal is conditional on the incarnation still
// not being the live one, so a task started meanwhile keeps its state.
// Keys of the layout before incarnations (<dir><task>/<key>) are removed
// too. It returns how many incarnations' state it removed.
func (c *Client) CleanStaleAgentState(ctx context.Context) (int, error) {
	type stale struct {
		task string
		inc  int64
	}
	seen := map[stale]bool{}
	var found []stale
	var legacy []clientv3.Op
	for _, dir := range agentStateDirs {
		rctx, cancel := c.ctx(ctx)
		resp, err := c.cli.Get(rctx, dir, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		cancel()
		if err != nil {
			return 0, fmt.Errorf("list agent state: %w", err)
		}
		for _, kv := range resp.Kvs {
			task, rest, ok := strings.Cut(strings.TrimPrefix(string(kv.Key), dir), "/")
			if !ok {
				continue
			}
			incs, _, nested := strings.Cut(rest, "/")
			inc, err := strconv.ParseInt(incs, 10, 64)
			if !nested || err != nil || inc <= 0 {
				legacy = append(legacy, clientv3.OpDelete(string(kv.Key)))
				continue
			}
			if s := (stale{task, inc}); !seen[s] {
				seen[s] = true
				found = append(found, s)
			}
		}
	}
	for _, op := range legacy {
		rctx, cancel := c.ctx(ctx)
		_, err := c.cli.Do(rctx, op)
		cancel()
		if err != nil {
			return 0, fmt.Errorf("remove agent state of the old layout: %w", err)
		}
	}
	removed := 0
	for _, s := range found {
		ops := make([]clientv3.Op, 0, len(agentStateDirs))
		for _, dir := range agentStateDirs {
			ops = append(ops, clientv3.OpDelete(fmt.Sprintf("%s%s/%d/", dir, s.task, s.inc), clientv3.WithPrefix()))
		}
		rctx, cancel := c.ctx(ctx)
		resp, err := c.cli.Txn(rctx).
			If(clientv3.Compare(clientv3.CreateRevision(InfoKey(s.task)), "!=", s.inc)).
			Then(ops...).Commit()
		cancel()
		if err != nil {
			return removed, fmt.Errorf("remove stale state of task %q: %w", s.task, err)
		}
		if resp.Succeeded {
			removed++
		}
	}
	return removed, nil
}
