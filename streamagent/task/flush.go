package task

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/client-go/v2/oracle"

	"logbackup/meta"
	"logbackup/proto/lbpb"
	"logbackup/streamagent/checkpoint"
	"logbackup/streamagent/errs"
	"logbackup/streamagent/logfile"
	"logbackup/streamagent/spans"
)

// The flush pipeline. The loop freezes a flush — each initialized
// subscription's resolved ts, and the builder holding every row at or
// below it — hands it to the flusher goroutine and goes on taking events
// into a fresh builder. The flusher builds the files (compress, hash)
// into temp files, streams the data objects from them to storage, then
// uploads the meta file that lists them, and only then publishes the
// checkpoints the flush covers. At most one flush is in
// flight: the next is frozen only once the previous one is done, so
// checkpoints are published in flush order, and a flush whose buffer is
// lost never has a successor already claiming to cover it.

// frozen is one observed piece's resolved ts when its flush was frozen.
type frozen struct {
	span   spans.Span
	region *metapb.Region
	ts     uint64
}

// flushJob is one frozen flush.
type flushJob struct {
	builder  *logfile.Builder // closed (nil) once built
	frozen   []frozen
	observed []spans.Span // every observed piece when frozen: the store checkpoint is their minimum
	resolved uint64       // the flush's resolved ts (the start ts if nothing is observed)
	// fl is the built flush; its temp files are closed once it is
	// uploaded or abandoned.
	fl *logfile.Flush
	// durable is set once the meta file is written: a retry then only
	// publishes checkpoints, never rewriting a file a meta file lists.
	durable bool
	// waiters are callers of TestHooks.FlushWithAllRegionCheckpoints:
	// a flush with any writes every region checkpoint, as a final one
	// does (putRegionCheckpoints).
	waiters []chan error
	// final: the flush a pause or a stop makes, which writes every region
	// checkpoint whatever Config.RegionCheckpointInterval says.
	final bool
	// empty: nothing was observed or buffered; no files are written.
	empty bool
}

// flushResult is one attempt's outcome, reported to the loop.
type flushResult struct {
	job *flushJob
	err error
	// lost: the buffer could not be built (a spilled file unreadable);
	// its changes are gone and must be rescanned.
	lost bool
}

// durableMap is what is durable in storage, by key range (ours or
// inherited from other stores): the flusher advances it after uploads, the
// loop reads it to start subscriptions.
type durableMap struct {
	mu sync.Mutex
	m  *spans.Map
}

// advance raises each frozen piece's span to its ts, in one pass.
func (d *durableMap) advance(fr []frozen) {
	items := make([]spans.Advanced, len(fr))
	for i, f := range fr {
		items[i] = spans.Advanced{Span: f.span, TS: f.ts}
	}
	d.mu.Lock()
	d.m.AdvanceAll(items)
	d.mu.Unlock()
}

func (d *durableMap) min(s spans.Span) (uint64, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.m.Min(s)
}

func (d *durableMap) merge(from *spans.Map) {
	var items []spans.Advanced
	from.Each(func(s spans.Span, ts uint64) { items = append(items, spans.Advanced{Span: s, TS: ts}) })
	d.mu.Lock()
	defer d.mu.Unlock()
	d.m.AdvanceAll(items)
}

func (d *durableMap) record(store, flushTS uint64) *lbpb.SpanCheckpoints {
	d.mu.Lock()
	defer d.mu.Unlock()
	return checkpoint.Record(store, flushTS, d.m)
}

// flusher builds, uploads and publishes flushes on its own goroutine, one
// at a time. It owns its fields; what it shares with the task's loop is in
// flushShared, passed at construction.
type flusher struct {
	env  *Env
	task taskIdent
	flushShared
	lastFlushTS uint64
	// prevFlushTS is the flush ts of this store's last meta file made
	// durable in this task: the lineage (tag b) of the next one.
	prevFlushTS uint64
	// regionCPs are the region checkpoint keys written since the last
	// full write, at regionCPsAt: between full writes only regions
	// without one are written.
	regionCPs   map[regionCPKey]struct{}
	regionCPsAt time.Time
}

// flushShared is what the flusher and the task's loop share.
type flushShared struct {
	durable *durableMap
	// inflightMem is the in-flight builder's memory, for the quota: the
	// flusher zeroes it once the builder is compressed into temp files.
	inflightMem *atomic.Int64
	stats       *Stats             // the flusher writes the checkpoint and last flush time
	jobs        <-chan *flushJob   // capacity 1; the loop sends only when none is in flight
	retry       <-chan struct{}    // capacity 1; the loop's go-ahead to try a failed flush again
	results     chan<- flushResult // capacity 1
}

func newFlusher(env *Env, task taskIdent, shared flushShared, prevFlushTS uint64) *flusher {
	return &flusher{env: env, task: task, flushShared: shared, prevFlushTS: prevFlushTS, lastFlushTS: prevFlushTS}
}

// run processes jobs until ctx ends; a job still unbuilt then has its
// builder closed (its changes were never published as durable).
func (f *flusher) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case job := <-f.jobs:
			f.process(ctx, job)
		}
	}
}

func (f *flusher) process(ctx context.Context, job *flushJob) {
	defer func() {
		if job.builder != nil {
			job.builder.Close()
			job.builder = nil
		}
		if job.fl != nil {
			job.fl.Close() // nothing to report: the files are unlinked already
		}
	}()
	for {
		res := f.attempt(ctx, job)
		select {
		case f.results <- res:
		case <-ctx.Done():
			return
		}
		if res.err == nil || res.lost {
			return
		}
		select {
		case <-f.retry:
		case <-ctx.Done():
			return
		}
	}
}

func (f *flusher) attempt(ctx context.Context, job *flushJob) flushResult {
	env := f.env
	if job.empty {
		// Nothing to write: not even the global checkpoint's copy, which
		// verify expects only beside this store's meta files.
		return flushResult{job: job}
	}
	if job.fl == nil {
		flushTS, err := f.nextFlushTS(ctx)
		if err != nil {
			return flushResult{job: job, err: err}
		}
		began := env.Clock.Now()
		fl, err := job.builder.FinishLinked(flushTS, job.resolved,
			logfile.Lineage{PrevFlushTS: f.prevFlushTS, ClusterID: env.Settings.ClusterID, TaskStartTS: f.task.info.StartTs})
		env.Metrics.m.FlushStage("generate_metadata", env.Clock.Now().Sub(began))
		if errors.Is(err, logfile.ErrTempWrite) {
			// The flush's temp file could not be written; the builder
			// is whole, so nothing is lost.
			return flushResult{job: job, err: errs.Wrap(errs.CodeIo, fmt.Errorf("build flush: %w", err))}
		}
		job.builder.Close() // fl has its own temp files; the builder's are compressed into them
		job.builder = nil
		// The flush in flight holds no buffer any more (its objects stream
		// from disk): the next builder may use the whole quota.
		f.inflightMem.Store(0)
		if err != nil {
			if errors.Is(err, logfile.ErrSpillCorrupt) {
				err = errs.Wrap(errs.CodeChecksumMismatch, err)
			}
			return flushResult{job: job, err: fmt.Errorf("build flush: %w", err), lost: true}
		}
		job.fl = fl
	}
	err := f.upload(ctx, job)
	if !job.durable && errors.Is(err, logfile.ErrSpillCorrupt) {
		// A data object's temp file was damaged on disk: the upload
		// was refused, and the flush cannot be built again.
		return flushResult{job: job, err: errs.Wrap(errs.CodeChecksumMismatch, err), lost: true}
	}
	return flushResult{job: job, err: err}
}

func (f *flusher) nextFlushTS(ctx context.Context) (uint64, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	phys, logical, err := f.env.PD.GetTS(rctx)
	if err != nil {
		return 0, errs.Wrap(errs.CodePD, fmt.Errorf("get flush ts: %w", err))
	}
	// Strictly growing per store, even if PD's Clock went back: meta file
	// names must never repeat.
	ts := max(oracle.ComposeTS(phys, logical), f.lastFlushTS+1)
	f.lastFlushTS = ts
	return ts, nil
}

// upload streams the data objects from the flush's temp files (storage
// holds one bounded upload window of each in memory, never a whole
// object), then writes the meta file that lists them, and only then
// advances the checkpoints the flush covers.
func (f *flusher) upload(ctx context.Context, job *flushJob) error {
	env, task := f.env, f.task
	if !job.durable {
		began := env.Clock.Now()
		for _, o := range job.fl.Data {
			if err := env.Storage.WriteFrom(ctx, o.Name, o.Size, o.Open); err != nil {
				return fmt.Errorf("upload %s: %w", o.Name, err)
			}
			env.Metrics.m.Uploaded("log", int(o.Size))
		}
		// The meta file is what makes the flush part of the backup: a
		// storage taken over meanwhile gets none (its data objects stay
		// unlisted, which restore ignores).
		if err := checkOwner(ctx, env.Storage, env.Settings.ClusterID, task.info); err != nil {
			return err
		}
		if err := env.Storage.WriteFile(ctx, job.fl.Meta.Name, job.fl.Meta.Data); err != nil {
			return fmt.Errorf("upload %s: %w", job.fl.Meta.Name, err)
		}
		env.Metrics.m.Uploaded("metadata", len(job.fl.Meta.Data))
		job.durable = true
		f.prevFlushTS = job.fl.Name.FlushTS
		job.fl.Close() // uploaded: free the temp files
		env.Metrics.m.FlushStage("save_files", env.Clock.Now().Sub(began))
	}
	f.durable.advance(job.frozen)
	if err := f.putRegionCheckpoints(ctx, job); err != nil {
		return err
	}
	f.stats.LastFlushUnixMs.Store(env.Clock.Now().UnixMilli())
	if err := env.Meta.PutSpanCheckpoints(ctx, task.name, task.inc, f.durable.record(env.Settings.StoreID, job.fl.Name.FlushTS)); err != nil {
		return etcdErr(fmt.Errorf("publish span checkpoints: %w", err))
	}
	if cp, ok := f.storeCheckpoint(job.observed); ok {
		stored, err := env.Meta.AdvanceStoreCheckpoint(ctx, task.name, env.Settings.StoreID, cp)
		if err != nil {
			return etcdErr(fmt.Errorf("advance store checkpoint%s: %w", ownKeyHint(err), err))
		}
		f.stats.StoreCheckpoint.Store(stored)
		env.Metrics.storeCheckpoint(stored)
		keepFlushSafePoint(ctx, env, task.name, stored)
	}
	return f.syncGlobalCheckpoint(ctx)
}

// storeCheckpoint is the minimum durable ts over what this store observed
// when the flush was frozen.
func (f *flusher) storeCheckpoint(observed []spans.Span) (uint64, bool) {
	var cp uint64
	found := false
	for _, p := range observed {
		ts, ok := f.durable.min(p)
		if !ok {
			continue
		}
		if !found || ts < cp {
			cp, found = ts, true
		}
	}
	return cp, found
}

type regionCPKey struct{ id, version uint64 }

// putRegionCheckpoints records each flushed region's checkpoint at
// checkpoint/<task>/region/<id>/<epoch version>, where TiKV's log backup
// starts a region from if it takes the task back (else from the global
// checkpoint: an older one only rescans more). A region split into
// several task ranges gets the minimum of its ranges. Each write reads
// the task's region keys and rewrites one per region, so all of them are
// written at most once per Config.RegionCheckpointInterval and by the
// final flush of a pause or a stop (and by a flush a test asked for:
// TestHooks.FlushWithAllRegionCheckpoints); in between only regions that
// have none yet (new, split or moved here).
func (f *flusher) putRegionCheckpoints(ctx context.Context, job *flushJob) error {
	full := job.final || len(job.waiters) > 0 || f.regionCPs == nil ||
		f.env.Clock.Now().Sub(f.regionCPsAt) >= f.env.Settings.RegionCheckpointInterval
	min := map[regionCPKey]uint64{}
	for _, x := range job.frozen {
		k := regionCPKey{x.region.Id, x.region.RegionEpoch.GetVersion()}
		if _, done := f.regionCPs[k]; done && !full {
			continue
		}
		if cur, ok := min[k]; !ok || x.ts < cur {
			min[k] = x.ts
		}
	}
	if len(min) == 0 {
		return nil
	}
	cps := make([]meta.RegionTS, 0, len(min))
	for k, ts := range min {
		cps = append(cps, meta.RegionTS{RegionID: k.id, EpochVersion: k.version, TS: ts})
	}
	if err := f.env.Meta.AdvanceRegionCheckpoints(ctx, f.task.name, cps); err != nil {
		return etcdErr(fmt.Errorf("advance region checkpoints: %w", err))
	}
	if full {
		f.regionCPs, f.regionCPsAt = map[regionCPKey]struct{}{}, f.env.Clock.Now()
	}
	for k := range min {
		f.regionCPs[k] = struct{}{}
	}
	return nil
}

// syncGlobalCheckpoint copies the coordinator's global checkpoint to
// storage (v1/global_checkpoint/<store>.ts) and then to etcd's storage
// checkpoint, as TiKV does, so BR's status and restore agree.
func (f *flusher) syncGlobalCheckpoint(ctx context.Context) error {
	env, task, store := f.env, f.task, f.env.Settings.StoreID
	// An implausible global checkpoint is not copied anywhere; the
	// coordinator replaces it on its next advance.
	lenient := env.Lenient()
	g, ok, err := lenient.GlobalCheckpoint(ctx, task.name)
	if err != nil || !ok {
		return etcdErr(err)
	}
	scs, err := lenient.StorageCheckpoints(ctx, task.name)
	if err != nil {
		return etcdErr(err)
	}
	if scs[store] >= g {
		return nil
	}
	name := logfile.GlobalCheckpointName(store)
	if err := env.Storage.WriteFile(ctx, name, logfile.EncodeGlobalCheckpoint(g)); err != nil {
		return fmt.Errorf("upload %s: %w", name, err)
	}
	_, err = env.Meta.AdvanceStorageCheckpoint(ctx, task.name, store, g)
	if err != nil {
		err = fmt.Errorf("advance storage checkpoint%s: %w", ownKeyHint(err), err)
	}
	return etcdErr(err)
}

// ownKeyHint tells, for garbage in one of this store's own checkpoint keys,
// how it is repaired.
func ownKeyHint(err error) string {
	if errors.Is(err, meta.ErrMalformed) {
		return " (this store's own key: `br stream resume --clear-error` rewrites it from the global checkpoint)"
	}
	return ""
}

// etcdErr codes a failed etcd request as EtcdUnavailable, unless it says
// something more specific (a corrupt value, a task gone, a shutdown).
func etcdErr(err error) error {
	if err == nil || errors.Is(err, meta.ErrMalformed) || errors.Is(err, meta.ErrStaleIncarnation) ||
		errors.Is(err, context.Canceled) {
		return err
	}
	return errs.Wrap(errs.CodeEtcdUnavailable, err)
}
