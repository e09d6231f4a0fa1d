package streamagent

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent/logfile"
)

// coordState is what the elected coordinator keeps between ticks, touched
// only by the coordinator goroutine.
type coordState struct {
	// storages are the tasks' storages by incarnation, opened once, for
	// the neighbour check.
	storages map[string]storage.Storage
	// conflicts remembers what was last logged per task, so a standing
	// conflict is logged once, not every tick.
	conflicts map[string]string
	// recovery probes and resumes tasks paused by recoverable errors.
	recovery *recovery
	// kick makes the coordinator tick now (a task was paused).
	kick chan struct{}
}

// kickNow asks the coordinator, if this agent is it, for a tick now; it
// never blocks.
func (c *coordState) kickNow() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func taskKey(t *meta.TaskStatus) string { return fmt.Sprintf("%s/%d", t.Info.Name, t.Incarnation) }

// forgetExcept closes what belongs to tasks no longer live (nil: the
// coordinator lost its election), and stops their probers.
func (c *coordState) forgetExcept(live map[string]bool) {
	c.recovery.forgetExcept(live)
	for k, st := range c.storages {
		if !live[k] {
			st.Close()
			delete(c.storages, k)
		}
	}
	for k := range c.conflicts {
		if !live[k] {
			delete(c.conflicts, k)
		}
	}
}

// advanceTask publishes a running task's global checkpoint — the minimum
// over its key space of what any store has flushed, never backwards — and
// returns the value now standing. It stands back while another advancer
// (TiDB's) owns the cluster's log backup: two writers of central_global
// are unsafe.
func (a *Agent) advanceTask(ctx context.Context, t *meta.TaskStatus) (uint64, error) {
	name := t.Info.Name
	nb, err := a.cfg.Meta.Neighbours(ctx, name, t.Incarnation, a.storageWriters(ctx, t)...)
	if err != nil {
		return 0, err
	}
	a.metrics.advancerOwner.WithLabelValues(name).Set(b2f(len(nb.AdvancerKeys) > 0))
	a.metrics.foreignWriters.WithLabelValues(name).Set(float64(len(nb.ForeignStores)))
	if said := strings.Join(nb.Describe(), "; "); said != a.coord.conflicts[taskKey(t)] {
		a.coord.conflicts[taskKey(t)] = said
		if said != "" {
			a.cfg.Logger.Error("another log-backup writer runs beside the agents", "task", name, "conflict", said)
		} else {
			a.cfg.Logger.Info("no other log-backup writer any more", "task", name)
		}
	}
	if len(nb.AdvancerKeys) > 0 {
		g, ok, err := a.cfg.Meta.GlobalCheckpoint(ctx, name)
		if err != nil || !ok {
			return t.Info.StartTs, err
		}
		return max(g, t.Info.StartTs), nil
	}
	ranges, err := a.cfg.Meta.Ranges(ctx, name)
	if err != nil {
		return 0, err
	}
	covered := taskSpans(ranges)
	known, err := knownCheckpoints(ctx, a.cfg.Meta, name, t.Incarnation, covered, t.Info.StartTs)
	if err != nil {
		return 0, err
	}
	g := globalCheckpoint(known, covered)
	if g > 0 {
		stored, err := a.cfg.Meta.Incarnation(name, t.Incarnation).AdvanceGlobalCheckpoint(ctx, name, g)
		if err != nil {
			return 0, err
		}
		g = stored
	}
	g = max(g, t.Info.StartTs)
	return g, a.checkLag(ctx, t, g)
}

// storageWriters lists the stores that wrote v1/global_checkpoint/<store>.ts
// in the task's storage: TiKV's log backup writes it after every flush, so
// a store there without an agent of ours is TiKV's own writer. Best
// effort: an unreachable storage is the flushes' business, not this check's.
func (a *Agent) storageWriters(ctx context.Context, t *meta.TaskStatus) []uint64 {
	st := a.coord.storages[taskKey(t)]
	if st == nil {
		octx, cancel := context.WithTimeout(ctx, 10*time.Second)
		s, err := a.cfg.OpenStorage(octx, t.Info.Storage)
		cancel()
		if err != nil {
			return nil
		}
		st = s
		a.coord.storages[taskKey(t)] = st
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var stores []uint64
	_ = st.List(lctx, logfile.GlobalCheckpointDir, func(o storage.ObjectInfo) error {
		base := strings.TrimSuffix(strings.TrimPrefix(o.Name, logfile.GlobalCheckpointDir), ".ts")
		if id, err := strconv.ParseUint(base, 10, 64); err == nil {
			stores = append(stores, id)
		}
		return nil
	})
	return stores
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// dropStaleCampaign removes this store's election keys left by an earlier
// session of its own, lost while etcd was unreachable: etcd keeps their
// lease for a whole TTL after it comes back, which would hold every
// candidate back that long (and automatic recovery with them), although
// their owner is this very agent, campaigning again.
func (a *Agent) dropStaleCampaign(ctx context.Context, sess *concurrency.Session) {
	cli := a.cfg.Meta.Raw()
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := cli.Get(rctx, meta.CoordinatorPrefix(), clientv3.WithPrefix())
	if err != nil {
		return // the campaign waits the TTL out, as before
	}
	me := fmt.Sprint(a.cfg.StoreID)
	for _, kv := range resp.Kvs {
		if string(kv.Value) != me || clientv3.LeaseID(kv.Lease) == sess.Lease() {
			continue
		}
		_, err := cli.Txn(rctx).If(clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision)).
			Then(clientv3.OpDelete(string(kv.Key))).Commit()
		if err != nil {
			a.cfg.Logger.Warn("cannot remove this agent's stale coordinator campaign", "err", err)
		}
	}
}
