package streamagent

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/client-go/v2/oracle"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent/checkpoint"
	"logbackup/streamagent/errs"
	"logbackup/streamagent/logfile"
	"logbackup/streamagent/recovery"
	"logbackup/streamagent/retry"
	"logbackup/streamagent/task"
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
	recovery *recovery.Recovery
	// kick makes the coordinator tick now (a task was paused).
	kick chan struct{}
	// budgets count each running task's failed advances in a row, by
	// meta.TaskStatus.IncarnationKey; lastGlobal is the last global checkpoint that stood, kept
	// exported while advances fail so its lag keeps growing.
	budgets    map[string]*retry.Counter
	lastGlobal map[string]uint64
	moved      map[string]moved
	// orphans: since when the stores holding a standing global
	// checkpoint back have had no live agent, by IncarnationKey.
	orphans map[string]time.Time
	// failing is what this agent's runners report for a task whose global
	// checkpoint cannot advance, by task name; read by the runners' loops.
	failMu  sync.Mutex
	failing map[string]task.CoordFailure
}

// setFailing records (or, with f nil, clears) a task's advance failure.
func (c *coordState) setFailing(name string, f *task.CoordFailure) {
	c.failMu.Lock()
	defer c.failMu.Unlock()
	if f == nil {
		delete(c.failing, name)
		return
	}
	if c.failing == nil {
		c.failing = map[string]task.CoordFailure{}
	}
	c.failing[name] = *f
}

// failure is the task's advance failure, if any.
func (c *coordState) failure(name string) (task.CoordFailure, bool) {
	c.failMu.Lock()
	defer c.failMu.Unlock()
	f, ok := c.failing[name]
	return f, ok
}

// advanceFailed counts a failed advance of a running task against the
// retry budget. Before, a global checkpoint that could not advance left
// the task NORMAL with a lag growing unseen (garbage in central_global
// froze it for good); now the store report says RETRYING and why, and a
// failure that outlasts the budget's duration becomes a LastError and an
// ERROR pause. What counts is a record that cannot be read, and it counts
// as retryable: one that another store rewrites at its next flush heals by
// itself, and only one that outlasts the budget needs a person. An etcd
// that cannot be reached is left to the runners, whose flushes meet it.
func (a *Agent) advanceFailed(ctx context.Context, t *meta.TaskStatus, err error) {
	if ctx.Err() != nil || errors.Is(err, meta.ErrStaleIncarnation) || errors.Is(err, meta.ErrTaskNotFound) {
		return
	}
	if !errors.Is(err, meta.ErrMalformed) {
		// etcd unreachable or failing (every read and write here is
		// etcd's): the runners' flushes meet it too and spend their own
		// budget, and no report could be written meanwhile anyway.
		return
	}
	k := t.IncarnationKey()
	b := a.coord.budgets[k]
	if b == nil {
		b = &retry.Counter{Limit: RetryBudget{Attempts: math.MaxInt, Duration: a.cfg.RetryBudget.Duration}}
		a.coord.budgets[k] = b
	}
	info := errs.Classify(err)
	info.Class = errs.Retryable
	a.metrics.CountError(string(info.Code))
	err = fmt.Errorf("the global checkpoint cannot advance: %w", err)
	f := b.Fail(time.Now(), info, err)
	if f == nil {
		a.coord.setFailing(t.Info.Name, &task.CoordFailure{Failures: b.Failures, Since: b.Since, Msg: storage.Redact(err.Error())})
		return
	}
	delete(a.coord.budgets, k)
	a.coord.setFailing(t.Info.Name, nil)
	a.spawn(func() { a.reportFatal(ctx, t, f) })
}

// forgetAdvance drops a task's advance state (it was paused: a resume
// starts afresh).
func (a *Agent) forgetAdvance(t *meta.TaskStatus) {
	k := t.IncarnationKey()
	delete(a.coord.budgets, k)
	delete(a.coord.moved, k)
	delete(a.coord.orphans, k)
	a.coord.setFailing(t.Info.Name, nil)
}

// advanceSucceeded resets a task's advance budget, and reports a global
// checkpoint that stands although no advance fails.
func (a *Agent) advanceSucceeded(ctx context.Context, t *meta.TaskStatus, g uint64) {
	k := t.IncarnationKey()
	delete(a.coord.budgets, k)
	now := time.Now()
	m, ok := a.coord.moved[k]
	if !ok || g > m.ts {
		a.coord.moved[k] = moved{ts: g, at: now}
		delete(a.coord.orphans, k)
		a.coord.setFailing(t.Info.Name, nil)
		return
	}
	limit := a.cfg.FlushInterval + stallMargin
	lag := now.Sub(oracle.GetTimeFromTS(g))
	if now.Sub(m.at) <= limit || lag <= limit {
		delete(a.coord.orphans, k)
		a.coord.setFailing(t.Info.Name, nil)
		return
	}
	// Every flush and every advance succeeds, yet the checkpoint stands
	// (a store whose ranges nobody flushes: no agent there, or one stuck
	// without an error). Said in the store report, so status is not NORMAL
	// and HEALTHY; the lag gauge grows.
	stood := now.Sub(m.at)
	held, why := a.holdingBack(ctx, t)
	msg := fmt.Sprintf("the global checkpoint has not moved for %s (lag %s) although no flush or advance fails; %s",
		stood.Round(time.Second), lag.Round(time.Second), why)
	// Past the retry budget's duration, when what holds it back is stores
	// with no agent at all (and they have had none that long), it needs a
	// person, as any failure that outlasts the budget does: a LastError
	// and an ERROR pause (before, only the 48 h lag limit ever paused
	// it). A store whose agent lives stands the checkpoint for a reason of
	// its own (a start being retried, a scan, failing flushes), which its
	// own budget reports: a pause here would beat it to a code that needs
	// a person (the two-minute nemesis found that).
	if orphan := a.orphaned(ctx, t, held, now); orphan > 0 && stood >= a.cfg.RetryBudget.Duration && orphan >= a.cfg.RetryBudget.Duration {
		a.forgetAdvance(t)
		delete(a.coord.orphans, k)
		f := &retry.Fatal{Info: errs.Lookup(errs.CodeCheckpointStalled),
			Err: fmt.Errorf("%s; past the retry budget of %s", msg, a.cfg.RetryBudget.Duration)}
		a.spawn(func() { a.reportFatal(ctx, t, f) })
		return
	}
	a.coord.setFailing(t.Info.Name, &task.CoordFailure{Since: m.at, Msg: msg})
}

// orphaned is how long the stores in held (those holding the task's global
// checkpoint back) have all been without a live agent, as seen by this
// coordinator's ticks; 0 while any has one, or when that is unknown.
func (a *Agent) orphaned(ctx context.Context, t *meta.TaskStatus, held []uint64, now time.Time) time.Duration {
	k := t.IncarnationKey()
	if len(held) == 0 {
		delete(a.coord.orphans, k)
		return 0
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	live, err := a.cfg.Meta.Agents(rctx)
	if err != nil {
		delete(a.coord.orphans, k)
		return 0
	}
	for _, id := range held {
		if live[id] != nil {
			delete(a.coord.orphans, k)
			return 0
		}
	}
	since, ok := a.coord.orphans[k]
	if !ok {
		a.coord.orphans[k] = now
		return 0
	}
	return now.Sub(since)
}

// stallMargin: a global checkpoint that stands this much past a flush
// interval (and lags as much) is reported as stuck.
const stallMargin = 30 * time.Second

// moved is when a task's global checkpoint last moved.
type moved struct {
	ts uint64
	at time.Time
}

// holdingBack names the stores that hold a standing global checkpoint
// back: those PD knows with no store checkpoint for the task, else the
// store with the lowest store checkpoint. Best effort: no stores when it
// cannot tell.
func (a *Agent) holdingBack(ctx context.Context, t *meta.TaskStatus) ([]uint64, string) {
	var bad []meta.CorruptRecord
	cps, err := a.cfg.Meta.Tolerant(&bad).CheckpointsExceptRegions(ctx, t.Info.Name)
	if err != nil {
		return nil, "cannot read the store checkpoints: " + err.Error()
	}
	have := map[uint64]uint64{}
	var low uint64
	var lowStore uint64
	for _, cp := range cps {
		if cp.Kind != meta.CheckpointStore {
			continue
		}
		have[cp.StoreID] = cp.TS
		if lowStore == 0 || cp.TS < low {
			low, lowStore = cp.TS, cp.StoreID
		}
	}
	pctx, cancel := meta.PDCallContext(ctx, 10*time.Second)
	stores, err := a.cfg.PD.GetAllStores(pctx)
	cancel()
	var missing []string
	var ids []uint64
	if err == nil {
		for _, s := range stores {
			if _, ok := have[s.Id]; !ok && s.GetState() == metapb.StoreState_Up {
				missing = append(missing, fmt.Sprint(s.Id))
				ids = append(ids, s.Id)
			}
		}
	}
	switch {
	case len(missing) > 0:
		return ids, fmt.Sprintf("stores with no checkpoint for this task (is their agent running?): %s", strings.Join(missing, ", "))
	case lowStore != 0:
		return []uint64{lowStore}, fmt.Sprintf("the lowest store checkpoint is store %d's, at %s", lowStore, oracle.GetTimeFromTS(low).UTC().Format(time.RFC3339))
	default:
		return nil, "no store has a checkpoint for this task"
	}
}

// kickNow asks the coordinator, if this agent is it, for a tick now; it
// never blocks.
func (c *coordState) kickNow() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// forgetExcept closes what belongs to tasks no longer live (nil: the
// coordinator lost its election), and stops their probers.
func (c *coordState) forgetExcept(live map[string]bool) {
	c.recovery.ForgetExcept(live)
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
	for k := range c.budgets {
		if !live[k] {
			delete(c.budgets, k)
		}
	}
	for k := range c.lastGlobal {
		if !live[k] {
			delete(c.lastGlobal, k)
			delete(c.moved, k)
			delete(c.orphans, k)
		}
	}
	if live == nil {
		// No longer the coordinator: its failures are no one's to report.
		c.failMu.Lock()
		c.failing = nil
		c.failMu.Unlock()
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
	a.metrics.AdvancerOwner.WithLabelValues(name).Set(b2f(len(nb.AdvancerKeys) > 0))
	a.metrics.ForeignWriters.WithLabelValues(name).Set(float64(len(nb.ForeignStores)))
	if said := strings.Join(nb.Describe(), "; "); said != a.coord.conflicts[t.IncarnationKey()] {
		a.coord.conflicts[t.IncarnationKey()] = said
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
	covered := checkpoint.Spans(ranges)
	known, err := checkpoint.Known(ctx, a.cfg.Meta, name, t.Incarnation, covered, t.Info.StartTs)
	if err != nil {
		return 0, err
	}
	g := checkpoint.Global(known, covered)
	if g > 0 {
		m := a.cfg.Meta.Incarnation(name, t.Incarnation)
		stored, err := m.AdvanceGlobalCheckpoint(ctx, name, g)
		if errors.Is(err, meta.ErrMalformed) {
			// Garbage in central_global froze the task silently (every
			// advance refused, the agents' copies stopped with it). The
			// coordinator is its writer and g is a true value: the
			// minimum of what the stores have flushed.
			bad, rerr := m.RepairCheckpoint(ctx, name, meta.GlobalCheckpointKey(name), g)
			if rerr != nil {
				return 0, fmt.Errorf("repair the global checkpoint: %w", rerr)
			}
			if bad != nil {
				a.cfg.Logger.Warn("the global checkpoint could not be read; rewrote it from the store checkpoints",
					"task", name, "key", bad.Key, "err", bad.Err, "checkpoint", g)
			}
			stored, err = m.AdvanceGlobalCheckpoint(ctx, name, g)
		}
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
	st := a.coord.storages[t.IncarnationKey()]
	if st == nil {
		octx, cancel := context.WithTimeout(ctx, 10*time.Second)
		s, err := a.cfg.OpenStorage(octx, t.Info.Storage)
		cancel()
		if err != nil {
			return nil
		}
		st = s
		a.coord.storages[t.IncarnationKey()] = st
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

// coordinate campaigns to be the coordinator and, while elected, publishes
// each task's global checkpoint on an interval.
func (a *Agent) coordinate(ctx context.Context) {
	bo := retry.NewBackoff(500*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		sess, err := concurrency.NewSession(a.cfg.Meta.Raw(), concurrency.WithTTL(10), concurrency.WithContext(ctx))
		if err != nil {
			retry.Sleep(ctx, bo.NextBackOff())
			continue
		}
		a.dropStaleCampaign(ctx, sess)
		el := concurrency.NewElection(sess, meta.CoordinatorPrefix())
		if err := el.Campaign(ctx, fmt.Sprint(a.cfg.StoreID)); err == nil {
			t := time.NewTicker(a.cfg.CoordinatorInterval)
		lead:
			for {
				if err := a.AdvanceOnce(ctx); err != nil {
					a.cfg.Logger.Warn("advance global checkpoint", "err", err)
				}
				select {
				case <-t.C:
				case <-a.coord.kick:
				case <-sess.Done():
					break lead
				case <-ctx.Done():
					break lead
				}
			}
			t.Stop()
			a.metrics.Checkpoints.ForgetGlobal() // only the coordinator exports them
			a.coord.forgetExcept(nil)
			rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			el.Resign(rctx)
			cancel()
		}
		sess.Close()
	}
}

// AdvanceOnce publishes every running task's global checkpoint: the
// minimum over the task's key space of what any store has flushed. Never
// backwards (meta.AdvanceGlobalCheckpoint keeps the maximum).
func (a *Agent) AdvanceOnce(ctx context.Context) error {
	var ignored []meta.CorruptRecord
	tasks, _, err := a.cfg.Meta.Tolerant(&ignored).ListTasks(ctx)
	if err != nil {
		return err
	}
	var errs []error
	// State that TiDB's `br log stop`, or a stop racing a flush, left
	// behind belongs to no live incarnation.
	if _, err := a.cfg.Meta.CleanStaleAgentState(ctx); err != nil {
		errs = append(errs, err)
	}
	if sp, ok := a.gcRead.get(ctx, a.gcSafePoint); ok {
		a.metrics.Checkpoints.SetGCSafePoint(sp)
	}
	published := map[string]uint64{}
	defer func() { a.metrics.Checkpoints.ReplaceGlobal(published) }()
	live := map[string]bool{}
	for _, t := range tasks {
		live[t.IncarnationKey()] = true
		if t.InfoErr != nil {
			continue // reported by the agents; nothing to advance
		}
		if t.Pause.Paused {
			// The pause alerts measure how long the checkpoint has stood.
			g, ok, err := a.cfg.Meta.GlobalCheckpoint(ctx, t.Info.Name)
			if err == nil {
				published[t.Info.Name] = t.Info.StartTs
				if ok {
					published[t.Info.Name] = max(g, t.Info.StartTs)
				}
			}
			a.coord.recovery.Observe(ctx, t, 0)
			a.forgetAdvance(t)
			continue
		}
		g, err := a.advanceTask(ctx, t)
		if err != nil {
			errs = append(errs, err)
			if last, ok := a.coord.lastGlobal[t.IncarnationKey()]; ok {
				published[t.Info.Name] = last // its lag grows while advances fail
			}
			a.advanceFailed(ctx, t, err)
			continue
		}
		a.advanceSucceeded(ctx, t, g)
		a.coord.lastGlobal[t.IncarnationKey()] = g
		published[t.Info.Name] = g
		a.coord.recovery.Observe(ctx, t, g)
	}
	a.coord.forgetExcept(live)
	return errors.Join(errs...)
}

// gcSafePoint reads PD's GC safepoint as BR does: UpdateGCSafePoint(0)
// never moves it and returns it.
func (a *Agent) gcSafePoint(ctx context.Context) (uint64, error) {
	rctx, cancel := meta.PDCallContext(ctx, 10*time.Second)
	defer cancel()
	return a.cfg.PD.UpdateGCSafePoint(rctx, 0)
}

// gcSafePointReadEvery: the coordinator reads PD's GC safe point at most
// this often. It only feeds a metric, and PD logs deprecation WARN lines on
// every read (the pinned client has no other way to ask).
const gcSafePointReadEvery = time.Minute

// gcSafePointRead is the last read of PD's GC safe point and when it was
// tried (a failed read waits its minute too).
type gcSafePointRead struct {
	mu sync.Mutex
	sp uint64
	ok bool
	at time.Time
}

func (g *gcSafePointRead) get(ctx context.Context, read func(context.Context) (uint64, error)) (uint64, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.at.IsZero() || time.Since(g.at) >= gcSafePointReadEvery {
		g.at = time.Now()
		if sp, err := read(ctx); err == nil {
			g.sp, g.ok = sp, true
		}
	}
	return g.sp, g.ok
}
