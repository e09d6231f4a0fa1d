package streamagent

import (
	"context"
	"errors"
	"fmt"
	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent/metrics"
	"logbackup/streamagent/retry"
	"logbackup/streamagent/task"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/clients/router"
)

// The agent's side of its tasks' runners (streamagent/task): building one
// from the agent's config and clients, starting it outside the agent's
// lock, retrying a start that failed, and stopping it.

type runnerHandle struct {
	r      *task.Runner
	cancel context.CancelFunc
	done   chan struct{}
	// flushOnExit is read by the runner when its context ends, which may be
	// the agent's own shutdown racing a stopTask: hence atomic.
	flushOnExit atomic.Bool
}

// startTask starts a runner of st's incarnation unless one runs. The
// runner is built (etcd, storage, PD and disk I/O) outside the agent's
// lock, so Status and the other tasks never wait for it; a stop of the
// task meanwhile wins (install).
func (a *Agent) startTask(ctx context.Context, st *meta.TaskStatus) {
	a.startTaskOf(ctx, st, a.stopGen(st.Info.Name))
}

// stopGen is the task's stop count: a start decided at one count is
// superseded by any stop of the task after it.
func (a *Agent) stopGen(name string) uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stops[name]
}

// startTaskOf is startTask for a start decided when the task's stop
// count was gen: a stop of the task since then (a pause the watch saw
// while a read was retried) wins, and nothing starts.
func (a *Agent) startTaskOf(ctx context.Context, st *meta.TaskStatus, gen uint64) {
	name := st.Info.Name
	a.mu.Lock()
	if a.stops[name] != gen {
		a.mu.Unlock()
		return
	}
	h, ok := a.runners[name]
	if ok && h.r.Incarnation() == st.Incarnation {
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
	gen = a.stops[name]
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
func (a *Agent) install(ctx context.Context, st *meta.TaskStatus, r *task.Runner, gen uint64) bool {
	name := st.Info.Name
	a.mu.Lock()
	if _, running := a.runners[name]; running || a.stops[name] != gen || a.stopping {
		a.mu.Unlock()
		r.Close()
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
		r.Run(rctx, &h.flushOnExit)
		if r.Fatal() == nil {
			return
		}
		a.mu.Lock()
		if a.runners[name] == h {
			delete(a.runners, name)
		}
		a.mu.Unlock()
		a.reportFatal(ctx, st, r.Fatal())
	})
	return true
}

// startRetryMax caps the wait between two tries of a task's start, as
// storage's own retries are capped: the task starts within seconds of what
// failed it coming back, however long that took. A try costs a few etcd
// reads and storage requests; the retry budget still bounds how many.
const startRetryMax = 5 * time.Second

// retryStart keeps trying to start a task whose start failed; the first
// runner it builds is the one that runs.
func (a *Agent) retryStart(ctx context.Context, first *meta.TaskStatus, gen uint64, err0 error) {
	info := first.Info
	b := &retry.Counter{Limit: a.cfg.RetryBudget}
	err := err0
	bo := retry.NewBackoff(time.Second, startRetryMax)
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
		if gerr != nil && !errors.Is(gerr, meta.ErrTaskNotFound) {
			// etcd failing, not the task gone: returning would leave the
			// task unstarted with nothing said. Tried again unless stopped
			// meanwhile, and counted as a failed start.
			if a.stopGen(info.Name) != gen {
				return
			}
			err = fmt.Errorf("read the task to start it: %w", gerr)
			continue
		}
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

// newTaskRunner reads what a task starts from (its ranges, storage and
// checkpoints), checks it may start, and builds its runner. It does I/O:
// call it without the agent's lock.
func newTaskRunner(ctx context.Context, a *Agent, ts *meta.TaskStatus) (*task.Runner, error) {
	info := ts.Info
	// A security setting we cannot honour is refused, never downgraded:
	// writing plaintext where encryption was asked for would be a leak.
	if err := task.CheckEncryption(info); err != nil {
		return nil, err
	}
	ranges, err := a.cfg.Meta.Ranges(ctx, info.Name)
	if err != nil {
		return nil, fmt.Errorf("read ranges of %q: %w", info.Name, err)
	}
	st, err := a.cfg.OpenStorage(ctx, info.Storage)
	if err != nil {
		return nil, fmt.Errorf("open storage of %q: %w", info.Name, err)
	}
	t, err := task.Prepare(ctx, a.newTaskEnv(info.Name, ts.Incarnation, st), ts, ranges, a.workDir)
	if err != nil {
		st.Close()
		return nil, err
	}
	return t, nil
}

// newTaskEnv builds what a task of this agent runs with.
func (a *Agent) newTaskEnv(name string, inc int64, st storage.Storage) *task.Env {
	m := a.cfg.Meta.Incarnation(name, inc)
	return &task.Env{
		Settings: settingsOf(&a.cfg), PD: agentPD{pdc: a.cfg.PD, ownStore: a.ownStore},
		Meta: m, Lenient: lenientOf(m), Storage: st,
		Metrics: task.NewMetrics(a.metrics, name), Log: a.cfg.Logger.With("task", name, "store", a.cfg.StoreID),
		Clock: task.RealClock{}, Counters: &a.counters, Chunks: a.chunks,
		CoordFailure: func() (task.CoordFailure, bool) { return a.coord.failure(name) },
	}
}

func settingsOf(cfg *Config) task.Settings {
	return task.Settings{
		StoreID: cfg.StoreID, ClusterID: cfg.ClusterID, TLS: cfg.TLS,
		FlushInterval: cfg.FlushInterval, FileSizeLimit: cfg.FileSizeLimit, MemoryQuota: cfg.MemoryQuota,
		ReconcileInterval: cfg.ReconcileInterval, RegionCheckpointInterval: cfg.RegionCheckpointInterval,
		FinalFlushTimeout: cfg.FinalFlushTimeout, RetryBudget: cfg.RetryBudget,
	}
}

// agentPD is task.PD over the agent's pd client.
type agentPD struct {
	pdc      pd.Client
	ownStore func(context.Context) (*metapb.Store, error)
}

func (p agentPD) GetTS(ctx context.Context) (int64, int64, error) { return p.pdc.GetTS(ctx) }

func (p agentPD) ScanRegions(ctx context.Context, start, end []byte) ([]*router.Region, error) {
	return meta.ScanRegions(ctx, p.pdc, start, end)
}

func (p agentPD) UpdateServiceGCSafePoint(ctx context.Context, id string, ttl int64, ts uint64) (uint64, error) {
	return p.pdc.UpdateServiceGCSafePoint(ctx, id, ttl, ts)
}

func (p agentPD) TxnSafePoint(ctx context.Context) (uint64, error) {
	return meta.TxnSafePoint(ctx, p.pdc)
}

func (p agentPD) OwnStore(ctx context.Context) (*metapb.Store, error) { return p.ownStore(ctx) }

// lenientOf makes fresh tolerant views of m.
func lenientOf(m *meta.Client) func() task.Meta {
	return func() task.Meta {
		var ignored []meta.CorruptRecord
		return m.Tolerant(&ignored)
	}
}
