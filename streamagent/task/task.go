// Package task backs up one log-backup task on this agent's store. The
// Runner (task.go) composes its parts, each its own type: placement
// (placement.go: which regions this store observes, through PD), the feed
// (feed.go: the EventFeed stream to the store) and intake (intake.go: each
// event through its region's matcher into the builder), the flusher (flush.go: builds,
// uploads and publishes the checkpoints on its own goroutine) and progress
// (progress.go: the store's report). None of them holds the Runner; every
// part takes the one narrow value Env (taskenv.go), built by the agent
// when the task starts: nothing here reaches back into the agent.
package task

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/pingcap/kvproto/pkg/encryptionpb"
	"github.com/tikv/client-go/v2/oracle"
	"golang.org/x/sync/errgroup"

	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent/checkpoint"
	"logbackup/streamagent/errs"
	"logbackup/streamagent/logfile"
	"logbackup/streamagent/retry"
	"logbackup/streamagent/spans"
)

// Runner backs up one task on this store. Its loop goroutine (Run) owns
// the parts that live on it — placement (which regions are observed),
// the feed and intake (the store's EventFeed stream, its events into the
// builder), the builder and the retry budget — and hands the flusher
// goroutine (flush.go) one frozen builder at a time; the two share only
// what flushShared names. The progress publisher shares only its out
// channel. Everything outside the task the parts reach through env.
type Runner struct {
	env *Env
	taskIdent
	log     *slog.Logger
	tempDir string

	regions *placement
	feed    *feed
	in      *intake
	builder *logfile.Builder

	// The flush pipeline (flush.go): at most one flush in flight; a
	// trigger meanwhile is remembered, and the callers of
	// TestHooks.FlushWithAllRegionCheckpoints wait for the next flush's
	// outcome. flusher is only started by Run: the loop talks to it
	// through jobs, retryFlush and results.
	flusher     *flusher
	durable     *durableMap // shared with the flusher
	jobs        chan<- *flushJob
	retryFlush  chan<- struct{}
	results     <-chan flushResult
	inflight    *flushJob
	inflightMem atomic.Int64 // the in-flight builder's memory, for the quota
	mem         *memGauge    // the process's memory against its limit (the loop's)
	wantFlush   bool
	waiters     []chan error
	flushCh     chan chan error

	// The retry budget and, once spent or on a fatal error, why the loop
	// stopped.
	budget  retry.Counter
	backoff *backoff.ExponentialBackOff
	fatal   *retry.Fatal
	retry   Timer

	stats     Stats
	published published
	progress  *progress
}

// Prepare checks that the task may start on env's storage and
// checkpoints, and builds its runner (its temp dir under workDir).
func Prepare(ctx context.Context, env *Env, ts *meta.TaskStatus, ranges []meta.Range, workDir string) (*Runner, error) {
	info := ts.Info
	// Before the first flush: a storage taken over is not written at all.
	if err := checkOwner(ctx, env.Storage, env.Settings.ClusterID, info); err != nil {
		return nil, err
	}
	covered := checkpoint.Spans(ranges)
	known, err := checkpoint.ReadKnown(ctx, env.Meta, env.Lenient(), info.Name, ts.Incarnation, covered, info.StartTs)
	if err != nil {
		return nil, err
	}
	if err := checkNotCollected(ctx, env.PD, checkpoint.Global(known, covered)); err != nil {
		return nil, err
	}
	if err := repairOwnCheckpoints(ctx, env, info.Name, max(checkpoint.Global(known, covered), info.StartTs)); err != nil {
		return nil, err
	}
	tempDir, err := runnerTempDir(workDir, info.Name, ts.Incarnation)
	if err != nil {
		return nil, err
	}
	// The previous run's last recorded flush; a later one it wrote but did
	// not record is a harmless fork for verify (its checkpoints were never
	// published).
	prev, err := checkpoint.LastRecordedFlush(ctx, env.Meta, info.Name, ts.Incarnation, env.Settings.StoreID)
	if err != nil {
		os.RemoveAll(tempDir)
		return nil, err
	}
	t := newRunner(env, taskIdent{info: info, name: info.Name, inc: ts.Incarnation}, covered, known, tempDir, prev)
	t.carryBudget(ctx, env.Clock.Now())
	return t, nil
}

// newRunner builds a runner from what its task starts with: the ranges it
// covers, what is durable of them, its temp dir and the last flush ts this
// store recorded. No I/O.
// runnerTempDir makes a runner's own temp dir in the agent's work dir.
// Its own, not one per task and incarnation: a paused runner still
// finishing its final flush removes its dir when it ends, and with a
// shared name that removed the dir of the runner a quick resume had
// started meanwhile, whose next flush then failed as a fatal Io error
// (found by the two-minute nemesis). Leftovers of a crashed process are
// swept with its work dir (workdir.go).
func runnerTempDir(workDir, task string, inc int64) (string, error) {
	dir, err := os.MkdirTemp(workDir, fmt.Sprintf("%s-%d-", task, inc))
	if err != nil {
		return "", fmt.Errorf("create a temp dir for task %q: %w", task, err)
	}
	return dir, nil
}

func newRunner(env *Env, task taskIdent, covered []spans.Span, known *spans.Map, tempDir string, prevFlushTS uint64) *Runner {
	jobs, again, results := make(chan *flushJob, 1), make(chan struct{}, 1), make(chan flushResult, 1)
	t := &Runner{
		env: env, taskIdent: task, log: env.Log, tempDir: tempDir,
		feed:    newFeed(env),
		mem:     newMemGauge(),
		flushCh: make(chan chan error),
		durable: &durableMap{m: known},
		jobs:    jobs, retryFlush: again, results: results,
	}
	t.regions = newPlacement(env, task, covered, t.durable, t.feed)
	t.in = &intake{env: env, regions: t.regions}
	t.progress = newProgress(env, task, &t.stats)
	t.flusher = newFlusher(env, task, flushShared{durable: t.durable, inflightMem: &t.inflightMem, stats: &t.stats,
		jobs: jobs, retry: again, results: results}, prevFlushTS)
	t.budget.Limit = env.Settings.RetryBudget
	t.backoff = retry.NewBackoff(100*time.Millisecond, env.Settings.FlushInterval)
	t.builder = t.newBuilder()
	return t
}

func (t *Runner) newBuilder() *logfile.Builder {
	return logfile.NewBuilder(logfile.BuilderConfig{StoreID: t.env.Settings.StoreID, FileSizeLimit: t.env.Settings.FileSizeLimit, SpillDir: t.tempDir, Chunks: t.env.Chunks})
}

// Close releases what a runner that never ran holds.
func (t *Runner) Close() {
	t.builder.Close()
	os.RemoveAll(t.tempDir)
	t.env.Storage.Close()
}

// Run is the task's loop: events, flush and reconcile ticks, flush
// outcomes, explicit flush requests. It returns when ctx ends, after a
// final flush if flushOnExit is set, or when the task meets a fatal error;
// in every case only once the goroutines it started (the flusher, the
// progress publisher, the stream receivers) have ended.
func (t *Runner) Run(ctx context.Context, flushOnExit *atomic.Bool) {
	// The flusher outlives ctx: the final flush needs it.
	fctx, stopFlusher := context.WithCancel(context.Background())
	pctx, stopProgress := context.WithCancel(ctx)
	var g errgroup.Group
	t.feed.receivers = &g
	g.Go(func() error { t.flusher.run(fctx); return nil })
	g.Go(func() error { t.progress.publish(pctx); return nil })
	defer func() {
		stopFlusher()
		t.feed.close()
		stopProgress()
		g.Wait()
		t.builder.Close()
		os.RemoveAll(t.tempDir)
		t.env.Storage.Close()
	}()
	defer func() {
		t.env.Metrics.forget()
		t.regions.forget()
		t.publishStats() // takes this task's share out of the store-wide TiKV gauges
		for _, w := range t.waiters {
			w <- errors.New("the task stopped")
		}
	}()
	clk, limit := t.env.Clock, t.env.Settings.FileSizeLimit
	flushTick := clk.NewTicker(t.env.Settings.FlushInterval)
	defer flushTick.Stop()
	reconcile := clk.NewTicker(t.env.Settings.ReconcileInterval)
	defer reconcile.Stop()
	place := clk.NewTicker(50 * time.Millisecond)
	defer place.Stop()
	reports := clk.NewTicker(progressInterval)
	defer reports.Stop()
	// retry gives a failed flush its go-ahead sooner than the next tick,
	// backing off exponentially with jitter (stopped while idle).
	t.retry = clk.NewTimer(time.Hour)
	t.retry.Stop()
	defer t.retry.Stop()
	t.placePending(ctx)
	if t.fatal != nil {
		return
	}
	for {
		// Backpressure: with a flush in flight and the builder full, stop
		// reading the streams (gRPC flow control slows TiKV) rather than
		// grow memory.
		events := t.feed.events
		if t.inflight != nil && t.builder.Size() >= limit {
			events = nil
		}
		select {
		case <-ctx.Done():
			if flushOnExit.Load() && t.fatal == nil {
				t.finalFlush()
			}
			return
		case e := <-events:
			t.fatal = t.in.handle(e, t.builder)
			t.feed.window.Release(e.held)
			if t.fatal != nil || !t.keepQuota() {
				return
			}
			if t.builder.Size() >= limit {
				t.requestFlush(nil)
			}
		case <-flushTick.Chan():
			t.requestFlush(nil)
		case <-t.retry.Chan():
			select {
			case t.retryFlush <- struct{}{}:
			default:
			}
		case done := <-t.flushCh:
			t.requestFlush(done)
		case res := <-t.results:
			if !t.takeResult(res) {
				return
			}
		case <-reconcile.Chan():
			t.regions.reconcile(ctx)
		case <-place.Chan():
			t.placePending(ctx)
			t.publishStats()
			if t.fatal != nil {
				return // the store's TiKV stayed unreachable past the retry budget
			}
		case now := <-reports.Chan():
			t.report(now)
		}
	}
}

// keepQuota spills the builder once it and the flush in flight hold more
// than the memory quota, or once it holds pressureSpill and the process is
// within spillMargin of its memory limit (memory.go). A temp file that
// cannot be written is fatal, as in TiKV: the buffer has nowhere to go.
func (t *Runner) keepQuota() bool {
	t.stats.BufferedBytes.Store(int64(t.builder.Size()))
	t.stats.MemoryBytes.Store(int64(t.builder.Memory()))
	held := t.builder.Memory()
	if held == 0 || held+int(t.inflightMem.Load()) <= t.env.Settings.MemoryQuota && (held < pressureSpill || !t.mem.read().near(spillMargin)) {
		return true
	}
	if err := t.builder.Spill(); err != nil {
		t.fatal = &retry.Fatal{Info: errs.Lookup(errs.CodeIo), Err: fmt.Errorf("spill to %s: %w", t.tempDir, err)}
		return false
	}
	t.env.Metrics.m.Spilled.Inc()
	t.env.Counters.Spills.Add(1)
	return true
}

// requestFlush starts a flush now, or right after the one in flight.
func (t *Runner) requestFlush(waiter chan error) {
	if waiter != nil {
		t.waiters = append(t.waiters, waiter)
	}
	if t.inflight != nil {
		t.wantFlush = true
		return
	}
	t.startFlush(false)
}

// startFlush freezes a flush and hands it to the flusher: the builder
// swapped out now, with what placement says is resolved and observed
// (placement.freeze).
func (t *Runner) startFlush(final bool) {
	job := &flushJob{builder: t.builder, waiters: t.waiters, resolved: t.info.StartTs, final: final}
	// Nothing observed and nothing buffered: no meta file to write (an
	// empty one every flush said nothing, and hid a store that observed
	// nothing because its TiKV could not be reached).
	job.empty = len(t.regions.subs) == 0 && t.builder.Size() == 0
	t.regions.freeze(job)
	t.builder = t.newBuilder()
	t.inflight, t.waiters, t.wantFlush = job, nil, false
	t.inflightMem.Store(int64(job.builder.Memory()))
	t.jobs <- job // never blocks: nothing is in flight
}

// takeResult takes one flush outcome: success resets the retry budget and
// starts the flush that waited for it; a retryable error gets a backoff
// before the flusher tries again; a lost buffer restarts every
// subscription from what is durable; a fatal error (or a spent budget)
// stops the task. It reports whether the task goes on.
func (t *Runner) takeResult(res flushResult) bool {
	for _, w := range res.job.waiters {
		w <- res.err
	}
	res.job.waiters = nil
	if res.err == nil || res.lost {
		t.inflight = nil
		t.inflightMem.Store(0)
	}
	if res.lost {
		// The buffered changes are gone. Later flushes must not publish
		// checkpoints that cover them, so every subscription starts again
		// from what is durable.
		t.regions.restartAll("flush-failed")
	}
	if res.err == nil {
		// An empty flush is no sign of health while the store cannot
		// be reached: that failure's budget runs on.
		if !res.job.empty || t.feed.open.err == nil {
			t.budget.Succeed()
		}
		t.backoff.Reset()
		t.retry.Stop()
		if t.wantFlush {
			t.startFlush(false)
		}
		return true
	}
	err := res.err
	if errors.Is(err, context.Canceled) {
		return true // shutting down; not the task's fault
	}
	if errors.Is(err, meta.ErrStaleIncarnation) {
		// Stopped (perhaps by TiDB's BR) or started anew: this runner's
		// state belongs to no live task. The watch stops it for good; until
		// then it must not write anything, so it ends here.
		t.log.Info("task incarnation ended; stopping its runner", "incarnation", t.inc)
		return false
	}
	if f := t.env.noteError(&t.budget, err); f != nil {
		t.fatal = f
		return false
	}
	t.env.retried(err)
	if res.lost {
		return true // nothing to retry: the next trigger flushes what is new
	}
	// 100 ms doubling, capped by the flush interval (the next flush).
	wait := min(t.backoff.NextBackOff(), t.env.Settings.FlushInterval)
	t.retry.Reset(wait)
	t.progress.lastErr = storage.Redact(err.Error())
	t.log.Warn("flush failed; retrying", "err", storage.Redact(err.Error()), "failures", t.budget.Failures, "in", wait)
	return true
}

// finalFlush, on a pause or a shutdown, waits for the flush in flight and
// flushes what is left, within Config.FinalFlushTimeout. A failure is left to the next
// owner of the ranges, which rescans from what is durable.
func (t *Runner) finalFlush() {
	deadline := t.env.Clock.NewTimer(t.env.Settings.FinalFlushTimeout)
	defer deadline.Stop()
	final := false
	for {
		if t.inflight == nil {
			if final {
				return
			}
			t.startFlush(true)
			final = true
		}
		select {
		case res := <-t.results:
			for _, w := range res.job.waiters {
				w <- res.err
			}
			res.job.waiters = nil
			if res.err != nil {
				t.log.Warn("final flush failed; the next owner rescans from the checkpoint", "err", storage.Redact(res.err.Error()))
				return
			}
			t.inflight = nil
		case <-deadline.Chan():
			t.log.Warn("final flush did not finish in time; the next owner rescans from the checkpoint", "timeout", t.env.Settings.FinalFlushTimeout)
			return
		}
	}
}

// FlushWithAllRegionCheckpoints asks the loop to flush now and waits for
// the result; that flush writes every region checkpoint
// (TestHooks.FlushWithAllRegionCheckpoints).
func (t *Runner) FlushWithAllRegionCheckpoints(ctx context.Context) error {
	done := make(chan error, 1)
	select {
	case t.flushCh <- done:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// placePending places the pending ranges (placement.place), unless a
// failure to open the stream asks to wait; such a failure is the retry
// budget's (openFailed).
func (t *Runner) placePending(ctx context.Context) {
	defer func() {
		// Nothing left to place without a stream: the regions the store
		// could not be reached for are led elsewhere now, and its open
		// failure stops holding the retry budget (takeResult).
		if len(t.regions.pending) == 0 && t.feed.stream == nil {
			t.feed.open.err = nil
		}
	}()
	if t.feed.waiting(t.env.Clock.Now()) {
		return
	}
	if err := t.regions.place(ctx); err != nil {
		t.openFailed(ctx, err)
	}
}

// openFailed takes a failed placement. A stream that could not be opened
// (the TiKV beside the agent is unreachable) is a retryable failure like a
// failed flush: counted, reported as RETRYING with the address and the
// error, logged at most every openWarnEvery, retried with backoff, and
// fatal once the retry budget is spent. Anything else is retried on the
// next placement tick.
func (t *Runner) openFailed(ctx context.Context, err error) {
	var oe *openError
	if !errors.As(err, &oe) || ctx.Err() != nil {
		t.log.Debug("place range later", "err", err)
		return
	}
	if f := t.env.noteError(&t.budget, err); f != nil {
		t.fatal = f
		return
	}
	t.env.retried(err)
	t.progress.lastErr = storage.Redact(err.Error())
	wait, warn := t.feed.failed(t.env.Clock.Now(), err)
	if warn {
		t.log.Warn("cannot reach this agent's TiKV; retrying", "address", oe.addr, "err", storage.Redact(err.Error()),
			"failures", t.budget.Failures, "in", wait.Round(time.Millisecond))
	}
}

// report hands the progress publisher the loop's state.
func (t *Runner) report(now time.Time) {
	rows, byts := t.in.counted()
	t.progress.report(now, loopState{observed: len(t.regions.subs), scanning: t.regions.scanning, pending: len(t.regions.pending),
		failures: t.budget.Failures, rows: rows, byts: byts})
}

// publishStats refreshes what /status and the gauges show.
func (t *Runner) publishStats() {
	observed, scanning := len(t.regions.subs), t.regions.scanning // one subscription per region
	t.stats.ObservedRegions.Store(int64(observed))
	t.stats.PendingRanges.Store(int64(len(t.regions.pending)))
	t.stats.Scanning.Store(int64(scanning))
	t.stats.BufferedBytes.Store(int64(t.builder.Size()))
	t.stats.MemoryBytes.Store(int64(t.builder.Memory()))
	tm := t.env.Metrics
	if t.regions.subs != nil {
		tm.ObservedRegions.Set(float64(observed))
		tm.BufferedBytes.Set(float64(t.builder.Size()))
	}
	// TiKV's gauges are per store, summed over tasks: add this task's change.
	now := published{observed: float64(observed), memory: float64(t.builder.Memory()), scanning: float64(scanning)}
	tm.m.TiKV.ObservedRegion.Add(now.observed - t.published.observed)
	tm.m.TiKV.HeapMemory.Add(now.memory - t.published.memory)
	tm.PendingScans.Add(now.scanning - t.published.scanning)
	t.published = now
}

// published is a task's share of the store-wide TiKV gauges.
type published struct{ observed, memory, scanning float64 }

// CheckEncryption refuses a task that asks for log encryption, which this
// agent does not write: a security setting it cannot honour is refused,
// never downgraded (plaintext where encryption was asked for would leak).
func CheckEncryption(info *brpb.StreamBackupTaskInfo) error {
	if method, ok := encryptionOf(info); ok {
		return errs.Wrap(errs.CodeEncryption, fmt.Errorf("task %q asks for log encryption (%s), which this agent does not write", info.Name, method))
	}
	return nil
}

// encryptionOf reports whether the task asks for log encryption, and how.
func encryptionOf(info *brpb.StreamBackupTaskInfo) (string, bool) {
	sc := info.GetSecurityConfig()
	if sc == nil {
		return "", false
	}
	plain := func(m encryptionpb.EncryptionMethod) bool {
		return m == encryptionpb.EncryptionMethod_UNKNOWN || m == encryptionpb.EncryptionMethod_PLAINTEXT
	}
	switch e := sc.Encryption.(type) {
	case *brpb.StreamBackupTaskSecurityConfig_PlaintextDataKey:
		if m := e.PlaintextDataKey.GetCipherType(); !plain(m) {
			return "data key, " + m.String(), true
		}
	case *brpb.StreamBackupTaskSecurityConfig_MasterKeyConfig:
		if m := e.MasterKeyConfig.GetEncryptionType(); !plain(m) || len(e.MasterKeyConfig.GetMasterKeys()) > 0 {
			return "master key, " + m.String(), true
		}
	}
	return "", false
}

// checkNotCollected refuses to observe from a checkpoint PD's GC has
// passed: the changes since it are gone, and a rescan would silently miss
// them. It compares with PD's txn safe point, what PD enforces, which runs
// ahead of the GC safe point during a GC round; a rescan reads the changes
// after the checkpoint, which a txn safe point at the checkpoint keeps.
func checkNotCollected(ctx context.Context, pdc PD, checkpoint uint64) error {
	if checkpoint == 0 {
		return nil
	}
	sp, err := pdc.TxnSafePoint(ctx)
	if err != nil {
		return errs.Wrap(errs.CodePD, err)
	}
	if checkpoint < sp {
		return errs.Wrap(errs.CodeGCSafepointExceeded, fmt.Errorf("the checkpoint %d (%s) is below PD's txn safe point %d (%s): the changes since it may be gone",
			checkpoint, oracle.GetTimeFromTS(checkpoint).UTC().Format(time.RFC3339), sp, oracle.GetTimeFromTS(sp).UTC().Format(time.RFC3339)))
	}
	return nil
}

// budgetCarryWindow: a RETRYING report at most this old is the same
// incident as the one this runner starts into (an agent restarted, a quick
// pause and resume), so its retry budget carries on instead of restarting.
// An older one is left behind: a failure after a long pause starts afresh.
const budgetCarryWindow = time.Minute

// carryBudget continues the retry budget of this store's previous runner
// of the incarnation, read from the report it published. Without it an
// outage under churn (agents restarted by a supervisor, pauses) never
// spent its budget and never became a LastError (found by the playground's
// nemesis). A success resets it as always.
func (t *Runner) carryBudget(ctx context.Context, now time.Time) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	reports, err := t.env.Meta.Progresses(rctx, t.name, t.inc)
	if err != nil {
		t.log.Warn("cannot read the previous report; the retry budget starts afresh", "err", err)
		return
	}
	r := reports[t.env.Settings.StoreID]
	if r == nil || r.State != meta.StateRetrying || r.Attempts <= 0 || now.Sub(time.UnixMilli(r.UpdatedUnixMs)) > budgetCarryWindow {
		return
	}
	since := time.UnixMilli(r.SinceUnixMs)
	t.budget.Failures, t.budget.Since = r.Attempts, since
	t.progress.state, t.progress.since, t.progress.lastErr = meta.StateRetrying, since, r.LastError
	t.log.Info("continuing the retry budget of the previous run", "failures", r.Attempts, "since", since)
}

// repairOwnCheckpoints rewrites this store's own checkpoint keys (store/<id>
// and storage-checkpoint/<id>, which no one else writes) when they cannot
// be read, from g, the global checkpoint this runner starts from: every
// change at or below it is in storage, so it is a true value for both. A
// flush that meets such garbage stops the task with MalformedMetadata;
// without this, `br stream resume --clear-error` met it again at once.
func repairOwnCheckpoints(ctx context.Context, env *Env, name string, g uint64) error {
	for _, key := range []string{meta.StoreCheckpointKey(name, env.Settings.StoreID), meta.StorageCheckpointKey(name, env.Settings.StoreID)} {
		bad, err := env.Meta.RepairCheckpoint(ctx, name, key, g)
		if err != nil {
			return etcdErr(fmt.Errorf("repair this store's checkpoint: %w", err))
		}
		if bad != nil {
			env.Log.Warn("this store's checkpoint could not be read; rewrote it from the global checkpoint",
				"key", bad.Key, "err", bad.Err, "checkpoint", g)
		}
	}
	return nil
}

// Name is the task's name.
func (t *Runner) Name() string { return t.name }

// Incarnation is the task incarnation the runner works for.
func (t *Runner) Incarnation() int64 { return t.inc }

// Fatal is why the runner stopped by itself, once Run returned: nil when
// it was stopped (or its incarnation ended).
func (t *Runner) Fatal() *retry.Fatal { return t.fatal }

// Stats is what /status shows of the task, written by the runner.
func (t *Runner) Stats() *Stats { return &t.stats }
