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

	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent/errs"
	"logbackup/streamagent/logfile"
	"logbackup/streamagent/metrics"
	"logbackup/streamagent/recovery"
	"logbackup/streamagent/retry"
	"logbackup/streamagent/task"
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
	counters task.Counters
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

// New checks the config and builds an agent; reg may be nil.
func New(cfg Config, reg prometheus.Registerer) (*Agent, error) {
	if err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, metrics: metrics.New(reg), runners: map[string]*runnerHandle{}, stops: map[string]uint64{}, chunks: logfile.NewChunkPool(),
		coord: coordState{storages: map[string]storage.Storage{}, conflicts: map[string]string{}, kick: make(chan struct{}, 1),
			budgets: map[string]*retry.Counter{}, lastGlobal: map[string]uint64{}, moved: map[string]moved{}, orphans: map[string]time.Time{}}}
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
	a.coord.recovery = recovery.New(recovery.Deps{StoreID: a.cfg.StoreID, Config: a.cfg.AutoResume, Meta: a.cfg.Meta,
		GetTS: func(ctx context.Context) (int64, int64, error) { return a.cfg.PD.GetTS(ctx) },
		// Through a.openProbe when called: tests replace it after New.
		OpenProbe: func(ctx context.Context, b *brpb.StorageBackend) (storage.Storage, error) { return a.openProbe(ctx, b) },
		Metrics:   a.metrics, Log: a.cfg.Logger, Spawn: a.spawn})
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

// startIfRunnable reads a task and starts it unless it is paused; a task
// whose info is corrupt is reported instead. A read that fails is retried
// in the background until it lands or a later event of the task (a stop
// of it) supersedes it: the watch has moved past this event, so a read
// given up would leave a resumed or new task NORMAL in etcd with no
// runner here and nothing said (etcd just back from an outage; a nemesis
// run's checkpoint stood still for ten minutes that way).
func (a *Agent) startIfRunnable(ctx context.Context, name string) {
	gen := a.stopGen(name)
	if a.tryStartIfRunnable(ctx, name, gen) {
		return
	}
	a.spawn(func() {
		bo := retry.NewBackoff(100*time.Millisecond, startRetryMax)
		for retry.Sleep(ctx, bo.NextBackOff()) {
			if a.stopGen(name) != gen || a.tryStartIfRunnable(ctx, name, gen) {
				return
			}
		}
	})
}

// tryStartIfRunnable is one try of startIfRunnable; false when the task
// could not be read.
func (a *Agent) tryStartIfRunnable(ctx context.Context, name string, gen uint64) bool {
	var ignored []meta.CorruptRecord
	st, err := a.cfg.Meta.Tolerant(&ignored).GetTask(ctx, name)
	switch {
	case errors.Is(err, meta.ErrTaskNotFound):
	case err != nil:
		a.cfg.Logger.Warn("cannot read task; retrying", "task", name, "err", err)
		return false
	case st.Pause.Paused:
	case st.InfoErr != nil:
		a.reportCorrupt(ctx, st)
	default:
		a.startTaskOf(ctx, st, gen)
	}
	return true
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
