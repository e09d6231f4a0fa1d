package streamagent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/client/v3/concurrency"

	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent/errs"
	"logbackup/streamagent/logfile"
	"logbackup/streamagent/metrics"
	"logbackup/streamagent/retry"
)

// Agent runs every task on one store.
type Agent struct {
	cfg     Config
	metrics *metrics.Metrics

	mu      sync.Mutex
	runners map[string]*runnerHandle
	// stops counts each task's stops: a runner built across a stop is not
	// installed (startTask builds outside mu).
	stops map[string]uint64
	// stopping: Run is stopping every task; no runner is installed any more.
	stopping bool
	// counters are the store-wide totals every task adds to.
	counters storeCounters
	coord    coordState
	// openProbe opens a task's storage for a recovery probe: one attempt
	// per request, since the probe's own schedule is the retry.
	openProbe func(ctx context.Context, b *brpb.StorageBackend) (storage.Storage, error)
	// chunks recycles the builders' buffers from one flush to the next
	// (a sync.Pool per size class: the GC empties it, so it holds no
	// memory an idle agent needs back).
	chunks *logfile.ChunkPool
	// workDir is this process's own temp directory, set by Run.
	workDir string
	// reported: the incarnation whose corrupt info was reported, by task.
	reported map[string]int64
	// gcRead is the coordinator's last read of PD's GC safe point.
	gcRead gcSafePointRead
	// gone is set once PD says the store left the cluster (store.go);
	// stopRun ends Run then.
	gone    atomic.Pointer[StoreGoneError]
	stopRun atomic.Pointer[context.CancelCauseFunc]
	// life is the current Run's goroutines (lifetime.go); New sets one so
	// that an agent never run still has somewhere to start them.
	life atomic.Pointer[lifetime]
}

type runnerHandle struct {
	r      *taskRunner
	cancel context.CancelFunc
	done   chan struct{}
	// flushOnExit is read by the runner when its context ends, which may be
	// the agent's own shutdown racing a stopTask: hence atomic.
	flushOnExit atomic.Bool
}

// New checks the config and builds an agent; reg may be nil.
func New(cfg Config, reg prometheus.Registerer) (*Agent, error) {
	if err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, metrics: metrics.New(reg), runners: map[string]*runnerHandle{}, stops: map[string]uint64{}, chunks: logfile.NewChunkPool(),
		coord: coordState{storages: map[string]storage.Storage{}, conflicts: map[string]string{}, kick: make(chan struct{}, 1),
			budgets: map[string]*retry.Counter{}, lastGlobal: map[string]uint64{}, moved: map[string]moved{}, orphans: map[string]time.Time{}}}
	a.coord.recovery = &recovery{a: a, tasks: map[string]*taskRecovery{}}
	a.life.Store(newLifetime())
	a.openProbe = a.cfg.OpenStorage
	if a.cfg.OpenStorage == nil {
		a.openProbe = func(ctx context.Context, b *brpb.StorageBackend) (storage.Storage, error) {
			return storage.OpenBackend(ctx, b, storage.WithRetryPolicy(storage.RetryPolicy{MaxAttempts: 1}))
		}
		// Every retry inside the storage layer is counted by operation.
		observe := storage.WithRetryObserver(func(op string, _ int, _ error) {
			a.metrics.StorageRetries.WithLabelValues(op).Inc()
			a.counters.Retries.Add(1)
		})
		a.cfg.OpenStorage = func(ctx context.Context, b *brpb.StorageBackend) (storage.Storage, error) {
			return storage.OpenBackend(ctx, b, observe)
		}
	}
	return a, nil
}

// Run registers the agent, loads the tasks, follows their changes and
// coordinates global checkpoints when elected, until ctx ends. On return
// every task has made a final flush, and every goroutine Run started,
// directly or through what it started, has ended (lifetime.go).
func (a *Agent) Run(ctx context.Context) error {
	life := newLifetime()
	a.life.Store(life)
	wd, err := claimWorkDir(a.cfg.TempDir, a.cfg.StoreID)
	if err != nil {
		return err
	}
	a.workDir = wd.path
	defer wd.release()
	// A store removed from the cluster ends the run with a
	// *StoreGoneError (store.go); losing the store's claim to another
	// agent ends it with the claim's error (claim.go). The claim lives in
	// this context, so either end revokes it.
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	a.stopRun.Store(&stop)
	// One agent per store, claimed before any task starts: a second one
	// would flush the same regions twice.
	reg, claim, err := a.claimStore(ctx)
	if err != nil {
		if g := a.gone.Load(); g != nil {
			return g
		}
		if ctx.Err() != nil {
			return nil // stopped while claiming
		}
		return err
	}
	a.mu.Lock()
	a.stopping = false // a Run after an earlier one returned
	a.mu.Unlock()
	loops := []<-chan struct{}{
		life.spawn(func() { a.keepRegistered(ctx, stop, reg, claim) }),
		life.spawn(func() { a.coordinate(ctx) }),
		life.spawn(func() { a.watchStore(ctx) }),
	}
	defer func() {
		// In this order: the loops end with ctx (the claim's revoke
		// among them), then every task makes its final flush, then
		// whatever is still running (a fatal report, a start being
		// retried, a prober) ends, each bounded by ctx.
		for _, done := range loops {
			<-done
		}
		a.stopAll()
		life.wait()
	}()

	bo := retry.NewBackoff(time.Second, 30*time.Second)
	for ctx.Err() == nil {
		err := a.followTasks(ctx)
		if ctx.Err() != nil {
			break
		}
		a.cfg.Logger.Warn("task watch ended; reloading", "err", err)
		retry.Sleep(ctx, bo.NextBackOff())
	}
	if g := a.gone.Load(); g != nil {
		return g
	}
	return lostStore(ctx)
}

func (a *Agent) followTasks(ctx context.Context) error {
	// A corrupt value must not stop the agent from reading the rest: it is
	// reported on its task, and the others run.
	var ignored []meta.CorruptRecord
	tasks, rev, err := a.cfg.Meta.Tolerant(&ignored).ListTasks(ctx)
	if err != nil {
		return fmt.Errorf("load tasks: %w", err)
	}
	for _, t := range tasks {
		switch {
		case t.Pause.Paused:
		case t.InfoErr != nil:
			a.reportCorrupt(ctx, t)
		default:
			a.startTask(ctx, t)
		}
	}
	for ev := range a.cfg.Meta.WatchTasks(ctx, tasks, rev+1) {
		switch ev.Type {
		case meta.EventAdd:
			a.stopTask(ev.Name, false)
			a.startIfRunnable(ctx, ev.Name)
		case meta.EventDelete:
			a.stopTask(ev.Name, false)
			a.dropSafePoints(ctx, ev.Name, true)
			a.metrics.DeleteTask(ev.Name)
		case meta.EventPause:
			a.coord.kickNow() // an error pause is the coordinator's to probe, now rather than next tick
			a.stopTask(ev.Name, true)
			if ev.Pause == nil || !ev.Pause.IsError() {
				a.metrics.SetTaskStatus(ev.Name, metrics.StatusPaused)
			} else {
				a.metrics.SetTaskStatus(ev.Name, metrics.StatusError)
			}
		case meta.EventResume:
			a.dropSafePoints(ctx, ev.Name, false)
			a.startIfRunnable(ctx, ev.Name)
		case meta.EventError:
			// An info value that cannot be decoded: the task cannot run, and
			// stalling silently would let the lag grow unseen.
			a.stopTask(ev.Name, false)
			a.startIfRunnable(ctx, ev.Name)
		}
	}
	return errors.New("watch closed")
}

// startTask starts a runner of st's incarnation unless one runs. The
// runner is built (etcd, storage, PD and disk I/O) outside the agent's
// lock, so Status and the other tasks never wait for it; a stop of the
// task meanwhile wins (install).
func (a *Agent) startTask(ctx context.Context, st *meta.TaskStatus) {
	name := st.Info.Name
	a.mu.Lock()
	h, ok := a.runners[name]
	if ok && h.r.inc == st.Incarnation {
		a.mu.Unlock()
		return
	}
	if ok {
		// A runner of an earlier incarnation (its stop went unseen, e.g.
		// across a compaction): its writes are fenced off already; drop it.
		delete(a.runners, name)
		a.stops[name]++
		h.flushOnExit.Store(false)
		h.cancel()
	}
	gen := a.stops[name]
	a.mu.Unlock()
	if ok {
		<-h.done
	}
	r, err := newTaskRunner(ctx, a, st)
	if err != nil {
		// Never a silent stall (TiKV #16056): a task that cannot start is
		// retried with backoff, and reported and paused when the error is
		// fatal or persists past the retry budget.
		a.spawn(func() { a.retryStart(ctx, st, gen, err) })
		return
	}
	a.install(ctx, st, r, gen)
}

// install runs r as its task's runner, unless the task was stopped (or
// another runner installed) since gen was read, or the agent is stopping:
// then r is closed unused. It reports whether r runs.
func (a *Agent) install(ctx context.Context, st *meta.TaskStatus, r *taskRunner, gen uint64) bool {
	name := st.Info.Name
	a.mu.Lock()
	if _, running := a.runners[name]; running || a.stops[name] != gen || a.stopping {
		a.mu.Unlock()
		r.close()
		return false
	}
	rctx, cancel := context.WithCancel(ctx)
	h := &runnerHandle{r: r, cancel: cancel, done: make(chan struct{})}
	h.flushOnExit.Store(true)
	a.runners[name] = h
	a.mu.Unlock()
	a.metrics.SetTaskStatus(name, metrics.StatusRunning)
	a.spawn(func() {
		defer close(h.done)
		r.run(rctx, &h.flushOnExit)
		if r.fatal == nil {
			return
		}
		a.mu.Lock()
		if a.runners[name] == h {
			delete(a.runners, name)
		}
		a.mu.Unlock()
		a.reportFatal(ctx, st, r.fatal)
	})
	return true
}

// retryStart keeps trying to start a task whose start failed; the first
// runner it builds is the one that runs.
func (a *Agent) retryStart(ctx context.Context, first *meta.TaskStatus, gen uint64, err0 error) {
	info := first.Info
	b := &retry.Counter{Limit: a.cfg.RetryBudget}
	err := err0
	bo := retry.NewBackoff(time.Second, 30*time.Second)
	for {
		if f := a.noteError(b, err); f != nil {
			a.reportFatal(ctx, first, f)
			return
		}
		a.cfg.Logger.Warn("cannot start task; retrying", "task", info.Name, "err", storage.Redact(err.Error()))
		if !retry.Sleep(ctx, bo.NextBackOff()) {
			return
		}
		st, gerr := a.cfg.Meta.GetTask(ctx, info.Name)
		if gerr != nil || st.Pause.Paused || st.Incarnation != first.Incarnation {
			return // stopped, restarted or paused meanwhile: the watch decides what next
		}
		a.mu.Lock()
		_, running := a.runners[info.Name]
		stopped := a.stops[info.Name] != gen
		a.mu.Unlock()
		if running || stopped {
			return
		}
		r, nerr := newTaskRunner(ctx, a, st)
		if nerr == nil {
			a.install(ctx, st, r, gen)
			return
		}
		err = nerr
	}
}

// stopTask stops a task's runner; flush says whether buffered data is
// flushed first (pause, shutdown) or dropped (delete).
func (a *Agent) stopTask(name string, flush bool) {
	a.mu.Lock()
	h := a.runners[name]
	delete(a.runners, name)
	a.stops[name]++ // a start building its runner meanwhile does not install it
	a.mu.Unlock()
	if h == nil {
		return
	}
	h.flushOnExit.Store(flush)
	h.cancel()
	<-h.done
}

func (a *Agent) stopAll() {
	a.mu.Lock()
	a.stopping = true
	names := make([]string, 0, len(a.runners))
	for n := range a.runners {
		names = append(names, n)
	}
	a.mu.Unlock()
	// At once, so a shutdown takes one final flush's time, not one per task.
	var wg sync.WaitGroup
	for _, n := range names {
		wg.Go(func() { a.stopTask(n, true) })
	}
	wg.Wait()
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
		live[taskKey(t)] = true
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
			a.coord.recovery.observe(ctx, t, 0)
			a.forgetAdvance(t)
			continue
		}
		g, err := a.advanceTask(ctx, t)
		if err != nil {
			errs = append(errs, err)
			if last, ok := a.coord.lastGlobal[taskKey(t)]; ok {
				published[t.Info.Name] = last // its lag grows while advances fail
			}
			a.advanceFailed(ctx, t, err)
			continue
		}
		a.advanceSucceeded(ctx, t, g)
		a.coord.lastGlobal[taskKey(t)] = g
		published[t.Info.Name] = g
		a.coord.recovery.observe(ctx, t, g)
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

// startIfRunnable reads a task and starts it unless it is paused; a task
// whose info is corrupt is reported instead.
func (a *Agent) startIfRunnable(ctx context.Context, name string) {
	var ignored []meta.CorruptRecord
	st, err := a.cfg.Meta.Tolerant(&ignored).GetTask(ctx, name)
	switch {
	case errors.Is(err, meta.ErrTaskNotFound):
	case err != nil:
		a.cfg.Logger.Warn("cannot read task", "task", name, "err", err)
	case st.Pause.Paused:
	case st.InfoErr != nil:
		a.reportCorrupt(ctx, st)
	default:
		a.startTask(ctx, st)
	}
}

// reportCorrupt runs the fatal path for a task whose info cannot be
// decoded: a MalformedMetadata LastError and an ERROR pause, once per
// incarnation and agent, in the background (the report waits out etcd).
func (a *Agent) reportCorrupt(ctx context.Context, st *meta.TaskStatus) {
	a.mu.Lock()
	if a.reported == nil {
		a.reported = map[string]int64{}
	}
	if a.reported[st.Info.Name] == st.Incarnation {
		a.mu.Unlock()
		return
	}
	a.reported[st.Info.Name] = st.Incarnation
	a.mu.Unlock()
	f := &retry.Fatal{Info: errs.Lookup(errs.CodeMalformedMetadata), Err: fmt.Errorf("task info: %w", st.InfoErr)}
	a.spawn(func() { a.reportFatal(ctx, st, f) })
}

// spawn starts f on a goroutine of the current Run's lifetime, which Run
// waits for before it returns (lifetime.go).
func (a *Agent) spawn(f func()) <-chan struct{} { return a.life.Load().spawn(f) }
