package streamagent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tikv/client-go/v2/oracle"
	"github.com/tikv/client-go/v2/util/codec"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/circuitbreaker"
	"github.com/tikv/pd/client/clients/router"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent/errs"
	"logbackup/streamagent/logfile"
	"logbackup/streamagent/matcher"
	"logbackup/streamagent/spans"
)

// subscription is one region registered on this store's EventFeed. A
// region holds at most one: TiKV's batched resolved ts names regions, not
// requests (request_id 0 on an EventFeed stream), so two subscriptions of
// one region could not tell their resolved ts apart. When the region
// overlaps several task ranges the request covers their hull and rows
// outside the pieces are skipped.
type subscription struct {
	reqID  uint64
	region *metapb.Region
	pieces []spans.Span // encoded, inside the region and the task, sorted
	m      *matcher.Matcher
	stream *feedStream
}

// ticdcVersion is the client version the agent announces in request
// headers. TiKV enables store-level batched resolved ts for clients at or
// above 4.0.8 and checks cluster ids from 5.3.0 (FeatureGate).
const ticdcVersion = "8.5.0"

// contains reports whether a row's raw key lies in one of the pieces.
func (s *subscription) contains(rawKey []byte) bool {
	if len(s.pieces) == 1 {
		return true // the request range is the piece: TiKV sends nothing else
	}
	ek := codec.EncodeBytes(nil, rawKey)
	for _, p := range s.pieces {
		if bytes.Compare(ek, p.Start) >= 0 && (len(p.End) == 0 || bytes.Compare(ek, p.End) < 0) {
			return true
		}
	}
	return false
}

// feedStream is the EventFeed stream to this agent's own store.
type feedStream struct {
	conn   *grpc.ClientConn
	stream cdcpb.ChangeData_EventFeedClient
	cancel context.CancelFunc
}

// streamEvent is what the receive goroutine hands the loop.
type streamEvent struct {
	stream *feedStream
	ev     *cdcpb.ChangeDataEvent
	err    error
}

// taskRunner backs up one task on this store. All its state is owned by
// the goroutine running loop; stream receivers only send it events.
type taskRunner struct {
	a       *Agent
	info    *brpb.StreamBackupTaskInfo
	covered []spans.Span
	st      storage.Storage
	log     *slog.Logger

	flushed *spans.Map               // what is durable in storage, by range (ours or inherited)
	subs    map[uint64]*subscription // by request id
	// byRegion indexes subs by region id: at most one each.
	byRegion map[uint64]*subscription
	pending  []spans.Span
	// scanReason is why the next placements rescan: "task-start" first,
	// then the reason of the latest drop or "leader-gained".
	scanReason string
	stream     *feedStream
	nextReq    uint64
	builder    *logfile.Builder
	// unsent is a finished flush whose upload failed; it is retried before
	// anything newer is flushed, so checkpoints stay in order.
	unsent      *pendingFlush
	lastFlushTS uint64
	lastFlushAt time.Time
	// prevFlushTS is the flush ts of this store's last meta file made
	// durable in this task: the lineage (tag b) of the next one.
	prevFlushTS uint64

	tempDir string

	// The retry budget and, once spent or on a fatal error, the reason the
	// loop stopped.
	failures     int
	failingSince time.Time
	fatal        *fatalError
	retry        *time.Timer

	events  chan streamEvent
	flushCh chan chan error
	stats   taskStats
}

// publishStats refreshes what /status and the gauges show.
func (t *taskRunner) publishStats() {
	regions := map[uint64]struct{}{} // a region may hold several task ranges
	for _, sub := range t.subs {
		regions[sub.region.Id] = struct{}{}
	}
	t.stats.observedRegions.Store(int64(len(regions)))
	t.stats.pendingRanges.Store(int64(len(t.pending)))
	t.stats.bufferedBytes.Store(int64(t.builder.Size()))
	t.stats.memoryBytes.Store(int64(t.builder.Memory()))
	t.a.metrics.observedRegions.WithLabelValues(t.info.Name).Set(float64(len(regions)))
	t.a.metrics.bufferedBytes.WithLabelValues(t.info.Name).Set(float64(t.builder.Size()))
}

type frozen struct {
	span   spans.Span
	region *metapb.Region
	ts     uint64
}

// putRegionCheckpoints records each flushed region's checkpoint at
// checkpoint/<task>/region/<id>/<epoch version>, as BR's tools read them.
// A region split into several task ranges gets the minimum of its ranges.
func (t *taskRunner) putRegionCheckpoints(ctx context.Context, fr []frozen) error {
	type key struct{ id, version uint64 }
	min := map[key]uint64{}
	for _, f := range fr {
		k := key{f.region.Id, f.region.RegionEpoch.GetVersion()}
		if cur, ok := min[k]; !ok || f.ts < cur {
			min[k] = f.ts
		}
	}
	cps := make([]meta.RegionTS, 0, len(min))
	for k, ts := range min {
		cps = append(cps, meta.RegionTS{RegionID: k.id, EpochVersion: k.version, TS: ts})
	}
	if err := t.a.cfg.Meta.AdvanceRegionCheckpoints(ctx, t.info.Name, cps); err != nil {
		return fmt.Errorf("advance region checkpoints: %w", err)
	}
	return nil
}

type pendingFlush struct {
	fl     *logfile.Flush
	frozen []frozen
	// durable is set once the meta file is written: a retry then only
	// publishes checkpoints, never rewriting a file a meta file lists.
	durable bool
}

func newTaskRunner(ctx context.Context, a *Agent, info *brpb.StreamBackupTaskInfo) (*taskRunner, error) {
	ranges, err := a.cfg.Meta.Ranges(ctx, info.Name)
	if err != nil {
		return nil, fmt.Errorf("read ranges of %q: %w", info.Name, err)
	}
	st, err := a.cfg.OpenStorage(ctx, info.Storage)
	if err != nil {
		return nil, fmt.Errorf("open storage of %q: %w", info.Name, err)
	}
	covered := taskSpans(ranges)
	known, err := knownCheckpoints(ctx, a.cfg.Meta, info.Name, covered, info.StartTs)
	if err != nil {
		st.Close()
		return nil, err
	}
	// Leftovers of a crashed run are stale: the range checkpoints decide
	// what is rescanned, so start with an empty temp dir.
	tempDir := filepath.Join(a.cfg.TempDir, info.Name)
	if err := os.RemoveAll(tempDir); err != nil {
		st.Close()
		return nil, fmt.Errorf("clean temp dir %s: %w", tempDir, err)
	}
	if err := os.MkdirAll(tempDir, 0o700); err != nil {
		st.Close()
		return nil, fmt.Errorf("create temp dir %s: %w", tempDir, err)
	}
	t := &taskRunner{
		a: a, info: info, covered: covered, st: st,
		log:     a.cfg.Logger.With("task", info.Name, "store", a.cfg.StoreID),
		flushed: known, subs: map[uint64]*subscription{}, byRegion: map[uint64]*subscription{},
		pending: append([]spans.Span(nil), covered...),
		tempDir: tempDir, scanReason: "task-start",
		events:  make(chan streamEvent, 256),
		flushCh: make(chan chan error),
	}
	t.builder = t.newBuilder()
	// The previous run's last recorded flush; a later one it wrote but did
	// not record is a harmless fork for verify (its checkpoints were never
	// published).
	if t.prevFlushTS, err = lastRecordedFlush(ctx, a.cfg.Meta, info.Name, a.cfg.StoreID); err != nil {
		st.Close()
		return nil, err
	}
	t.lastFlushTS = t.prevFlushTS
	return t, nil
}

func (t *taskRunner) newBuilder() *logfile.Builder {
	return logfile.NewBuilder(logfile.BuilderConfig{StoreID: t.a.cfg.StoreID, FileSizeLimit: t.a.cfg.FileSizeLimit, SpillDir: t.tempDir})
}

// run is the task's loop: events, flush and reconcile ticks, explicit
// flush requests. It returns when ctx ends, after a final flush if
// flushOnExit is set.
func (t *taskRunner) run(ctx context.Context, flushOnExit *atomic.Bool) {
	defer t.st.Close()
	defer t.closeStream()
	defer func() {
		t.builder.Close()
		os.RemoveAll(t.tempDir)
	}()
	defer func() {
		for _, g := range []*prometheus.GaugeVec{t.a.metrics.observedRegions, t.a.metrics.bufferedBytes, t.a.metrics.checkpointLagSecs} {
			g.DeleteLabelValues(t.info.Name)
		}
	}()
	flushTick := time.NewTicker(t.a.cfg.FlushInterval)
	defer flushTick.Stop()
	reconcile := time.NewTicker(t.a.cfg.ReconcileInterval)
	defer reconcile.Stop()
	place := time.NewTicker(50 * time.Millisecond)
	defer place.Stop()
	// retry fires a failed flush again sooner than the next tick, backing
	// off exponentially with jitter (stopped while idle).
	t.retry = time.NewTimer(time.Hour)
	t.retry.Stop()
	defer t.retry.Stop()
	t.placePending(ctx)
	for {
		select {
		case <-ctx.Done():
			if flushOnExit.Load() && t.fatal == nil {
				fctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				if err := t.flush(fctx); err != nil {
					t.log.Warn("final flush failed; the next owner rescans from the checkpoint", "err", err)
				}
				cancel()
			}
			return
		case e := <-t.events:
			t.handle(e)
			t.stats.bufferedBytes.Store(int64(t.builder.Size()))
			t.stats.memoryBytes.Store(int64(t.builder.Memory()))
			if t.builder.Memory() > t.a.cfg.MemoryQuota {
				// A temp file that cannot be written is fatal, as in TiKV:
				// the buffer has nowhere to go.
				if err := t.builder.Spill(); err != nil {
					t.fatal = &fatalError{info: errs.Lookup(errs.CodeIo), err: fmt.Errorf("spill to %s: %w", t.tempDir, err)}
					return
				}
				t.a.metrics.spilled.Inc()
				t.a.spills.Add(1)
			}
			if t.builder.Size() >= t.a.cfg.FileSizeLimit && !t.flushAndJudge(ctx) {
				return
			}
		case <-flushTick.C:
			if !t.flushAndJudge(ctx) {
				return
			}
		case <-t.retry.C:
			if !t.flushAndJudge(ctx) {
				return
			}
		case done := <-t.flushCh:
			err := t.flush(ctx)
			done <- err
			if !t.judge(err) {
				return
			}
		case <-reconcile.C:
			t.reconcile(ctx)
		case <-place.C:
			t.placePending(ctx)
			t.publishStats()
		}
	}
}

// flushAndJudge flushes and reports whether the task may go on.
func (t *taskRunner) flushAndJudge(ctx context.Context) bool { return t.judge(t.flush(ctx)) }

// judge applies the error policy to a flush result: success resets the
// retry budget; a retryable error is retried on the next tick; a fatal
// one (or a spent budget) stops the task, whose buffers are dropped.
func (t *taskRunner) judge(err error) bool {
	if err == nil {
		t.noteSuccess()
		t.retry.Stop()
		return true
	}
	if errors.Is(err, context.Canceled) {
		return true // shutting down; not the task's fault
	}
	if f := t.noteError(err); f != nil {
		t.fatal = f
		return false
	}
	t.a.metrics.retries.WithLabelValues(string(errs.Classify(err).Code)).Inc()
	t.a.retries.Add(1)
	// 100 ms · 2^failures with full jitter, capped by the flush interval.
	wait := min(100*time.Millisecond<<min(t.failures, 20), t.a.cfg.FlushInterval)
	wait = wait/2 + time.Duration(rand.Int64N(int64(wait/2)+1))
	t.retry.Reset(wait)
	t.log.Warn("flush failed; retrying", "err", storage.Redact(err.Error()), "failures", t.failures, "in", wait)
	return true
}

// Flush asks the loop to flush now and waits for the result.
func (t *taskRunner) Flush(ctx context.Context) error {
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

// scanPage is how many regions one PD request returns.
const scanPage = 1024

// scanRegions lists the regions overlapping sp from PD, a page at a time,
// each page under its own deadline.
func scanRegions(ctx context.Context, pdc pd.Client, sp spans.Span) ([]*router.Region, error) {
	var out []*router.Region
	start := sp.Start
	for {
		rctx, cancel := context.WithTimeout(withBreaker(ctx), 10*time.Second)
		page, err := pdc.ScanRegions(rctx, start, sp.End, scanPage)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("scan regions: %w", err)
		}
		out = append(out, page...)
		if len(page) < scanPage {
			return out, nil
		}
		start = page[len(page)-1].Meta.EndKey
		if len(start) == 0 || (len(sp.End) > 0 && string(start) >= string(sp.End)) {
			return out, nil
		}
	}
}

func withBreaker(ctx context.Context) context.Context {
	return circuitbreaker.WithCircuitBreaker(ctx, circuitbreaker.NewCircuitBreaker("streamagent", circuitbreaker.AlwaysClosedSettings))
}

// placePending resolves pending spans into regions through PD and
// subscribes those whose leader is this store. Ranges led elsewhere are
// left to that store's agent.
func (t *taskRunner) placePending(ctx context.Context) {
	if len(t.pending) == 0 {
		return
	}
	// Ranges that other stores flushed since we last looked start from
	// their checkpoints, not ours: fewer rows scanned twice.
	if known, err := knownCheckpoints(ctx, t.a.cfg.Meta, t.info.Name, t.covered, t.info.StartTs); err == nil {
		known.Each(func(s spans.Span, ts uint64) { t.flushed.Advance(s, ts) })
	}
	pending := spans.Coalesce(t.pending)
	t.pending = nil
	// Gather every leader region's pieces first, so a region overlapping
	// several pending ranges gets one subscription.
	type placement struct {
		region *metapb.Region
		pieces []spans.Span
	}
	var order []uint64
	byRegion := map[uint64]*placement{}
	for i, sp := range pending {
		regions, err := scanRegions(ctx, t.a.cfg.PD, sp)
		if err != nil {
			t.log.Debug("place range later", "err", err)
			t.pending = append(t.pending, pending[i:]...)
			break
		}
		for _, r := range regions {
			if r.Leader == nil || r.Leader.StoreId != t.a.cfg.StoreID {
				continue // led elsewhere: that store's agent takes it
			}
			piece := spans.Clip(spans.Span{Start: r.Meta.StartKey, End: r.Meta.EndKey}, sp)
			if !piece.Valid() {
				continue
			}
			pl := byRegion[r.Meta.Id]
			if pl == nil {
				pl = &placement{region: r.Meta}
				byRegion[r.Meta.Id] = pl
				order = append(order, r.Meta.Id)
			}
			pl.pieces = append(pl.pieces, piece)
		}
	}
	for i, id := range order {
		pl := byRegion[id]
		if old := t.byRegion[id]; old != nil {
			// Already observed for other pieces: one subscription for all.
			t.deregister(old)
			t.unsubscribe(old)
			pl.pieces = append(pl.pieces, old.pieces...)
		}
		if err := t.subscribe(ctx, pl.region, spans.Coalesce(pl.pieces)); err != nil {
			t.log.Debug("place range later", "err", err)
			for _, id := range order[i:] {
				t.pending = append(t.pending, byRegion[id].pieces...)
			}
			return
		}
	}
}

func (t *taskRunner) subscribe(ctx context.Context, region *metapb.Region, pieces []spans.Span) error {
	st, err := t.ensureStream(ctx)
	if err != nil {
		return err
	}
	cp := uint64(0)
	for i, p := range pieces {
		ts, ok := t.flushed.Min(p)
		if !ok {
			ts = t.info.StartTs
		}
		if i == 0 || ts < cp {
			cp = ts
		}
	}
	t.nextReq++
	sub := &subscription{reqID: t.nextReq, region: region, pieces: pieces, m: matcher.New(cp), stream: st}
	t.subs[sub.reqID] = sub
	t.byRegion[region.Id] = sub
	t.a.metrics.initialScans.WithLabelValues(t.scanReason).Inc()
	hull := spans.Span{Start: pieces[0].Start, End: pieces[len(pieces)-1].End}
	err = st.stream.Send(&cdcpb.ChangeDataRequest{
		Header:   &cdcpb.Header{ClusterId: t.a.cfg.ClusterID, TicdcVersion: ticdcVersion},
		RegionId: region.Id, RegionEpoch: region.RegionEpoch,
		CheckpointTs: cp, StartKey: hull.Start, EndKey: hull.End, RequestId: sub.reqID,
		Request: &cdcpb.ChangeDataRequest_Register_{Register: &cdcpb.ChangeDataRequest_Register{}},
	})
	if err != nil {
		t.drop(sub, "send")
		t.streamLost(st)
		return fmt.Errorf("register region %d: %w", region.Id, err)
	}
	return nil
}

func (t *taskRunner) ensureStream(ctx context.Context) (*feedStream, error) {
	if t.stream != nil {
		return t.stream, nil
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	store, err := t.a.cfg.PD.GetStore(rctx, t.a.cfg.StoreID)
	if err != nil {
		return nil, fmt.Errorf("look up store %d: %w", t.a.cfg.StoreID, err)
	}
	conn, err := grpc.NewClient(store.Address, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		return nil, fmt.Errorf("dial store %d at %s: %w", t.a.cfg.StoreID, store.Address, err)
	}
	sctx, scancel := context.WithCancel(ctx)
	stream, err := cdcpb.NewChangeDataClient(conn).EventFeed(sctx)
	if err != nil {
		scancel()
		conn.Close()
		return nil, fmt.Errorf("open event feed on store %d: %w", t.a.cfg.StoreID, err)
	}
	fs := &feedStream{conn: conn, stream: stream, cancel: scancel}
	t.stream = fs
	go func() {
		for {
			ev, err := stream.Recv()
			select {
			case t.events <- streamEvent{stream: fs, ev: ev, err: err}:
			case <-sctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return fs, nil
}

func (t *taskRunner) closeStream() {
	if t.stream != nil {
		t.stream.cancel()
		t.stream.conn.Close()
		t.stream = nil
	}
}

// streamLost fails every subscription of a broken stream.
func (t *taskRunner) streamLost(st *feedStream) {
	if t.stream == st {
		t.closeStream()
	}
	for _, sub := range t.subs {
		if sub.stream == st {
			t.drop(sub, "stream-lost")
		}
	}
}

// drop ends a subscription; its ranges are placed again from PD, from
// their flushed checkpoints (the data it buffered stays in the builder).
func (t *taskRunner) drop(sub *subscription, reason string) {
	t.unsubscribe(sub)
	t.pending = append(t.pending, sub.pieces...)
	t.scanReason = reason
	t.a.metrics.regionErrors.WithLabelValues(reason).Inc()
}

// unsubscribe forgets a subscription.
func (t *taskRunner) unsubscribe(sub *subscription) {
	delete(t.subs, sub.reqID)
	if t.byRegion[sub.region.Id] == sub {
		delete(t.byRegion, sub.region.Id)
	}
}

func (t *taskRunner) handle(e streamEvent) {
	if e.err != nil {
		t.streamLost(e.stream)
		return
	}
	for _, ev := range e.ev.Events {
		sub := t.subs[ev.RequestId]
		if sub == nil || sub.region.Id != ev.RegionId {
			continue // a subscription we already dropped
		}
		switch x := ev.Event.(type) {
		case *cdcpb.Event_Entries_:
			err := sub.m.Rows(x.Entries.Entries, func(row *cdcpb.Event_Row) {
				if !sub.contains(row.Key) {
					return // between two task ranges in one region
				}
				t.builder.Add(logfile.RegionInfo{ID: sub.region.Id, StartKey: sub.region.StartKey, EndKey: sub.region.EndKey, Epoch: sub.region.RegionEpoch},
					logfile.Change{Key: row.Key, Value: row.Value, StartTS: row.StartTs, CommitTS: row.CommitTs, Op: opOf(row)})
				t.a.metrics.eventsIn.Inc()
				t.a.metrics.bytesIn.Add(float64(len(row.Key) + len(row.Value)))
			})
			if err != nil {
				t.log.Warn("region stream broke its promises; rescanning", "region", sub.region.Id, "err", err)
				t.deregister(sub)
				t.drop(sub, "matcher")
			}
		case *cdcpb.Event_Error:
			t.drop(sub, errs.RegionErrorKind(x.Error))
		case *cdcpb.Event_ResolvedTs:
			// The per-region form TiKV sends clients older than 4.0.8.
			sub.m.Resolve(x.ResolvedTs)
		}
	}
	if rt := e.ev.ResolvedTs; rt != nil {
		for _, id := range rt.Regions {
			// request_id 0 (EventFeed without multiplexing) names the
			// region's subscription on this stream, whatever its request.
			sub := t.byRegion[id]
			if sub != nil && sub.stream == e.stream && (rt.RequestId == 0 || rt.RequestId == sub.reqID) {
				sub.m.Resolve(rt.Ts)
			}
		}
	}
}

func (t *taskRunner) deregister(sub *subscription) {
	_ = sub.stream.stream.Send(&cdcpb.ChangeDataRequest{RegionId: sub.region.Id, RequestId: sub.reqID,
		Request: &cdcpb.ChangeDataRequest_Deregister_{Deregister: &cdcpb.ChangeDataRequest_Deregister{}}})
}

func opOf(row *cdcpb.Event_Row) logfile.Op {
	if row.OpType == cdcpb.Event_Row_DELETE {
		return logfile.OpDelete
	}
	return logfile.OpPut
}

// reconcile finds regions of the task that this store leads but does not
// observe (leaders that moved here) and queues them.
func (t *taskRunner) reconcile(ctx context.Context) {
	owned := spans.New(nil, 0)
	for _, sub := range t.subs {
		for _, p := range sub.pieces {
			owned.Cover(p, 1)
		}
	}
	for _, sp := range t.pending {
		owned.Cover(sp, 1)
	}
	for _, sp := range t.covered {
		regions, err := scanRegions(ctx, t.a.cfg.PD, sp)
		if err != nil {
			t.log.Debug("reconcile: scan regions", "err", err)
			return
		}
		for _, r := range regions {
			if r.Leader == nil || r.Leader.StoreId != t.a.cfg.StoreID {
				continue
			}
			piece := spans.Clip(spans.Span{Start: r.Meta.StartKey, End: r.Meta.EndKey}, sp)
			if _, ok := owned.Min(piece); !ok && piece.Valid() {
				t.pending = append(t.pending, piece)
				t.scanReason = "leader-gained"
				t.a.metrics.regionErrors.WithLabelValues("leader-gained").Inc()
			}
		}
	}
}

// flush makes everything buffered durable, then advances checkpoints.
func (t *taskRunner) flush(ctx context.Context) error {
	if t.unsent != nil {
		if err := t.upload(ctx, t.unsent); err != nil {
			return err
		}
		t.unsent = nil
	}
	// Freeze: each initialized subscription's resolved ts. Every row at or
	// below it has been handled by this goroutine, so it is in the builder
	// being swapped out now.
	var fr []frozen
	minResolved := uint64(0)
	for _, sub := range t.subs {
		if !sub.m.Initialized() {
			continue
		}
		r := sub.m.ResolvedTS()
		for _, p := range sub.pieces {
			fr = append(fr, frozen{span: p, region: sub.region, ts: r})
		}
		if minResolved == 0 || r < minResolved {
			minResolved = r
		}
	}
	b := t.builder
	t.builder = t.newBuilder()
	flushTS, err := t.nextFlushTS(ctx)
	if err != nil {
		t.builder = b // nothing lost: try again later
		return err
	}
	if minResolved == 0 {
		minResolved = t.info.StartTs
	}
	began := time.Now()
	fl, err := b.FinishLinked(flushTS, minResolved, logfile.Lineage{PrevFlushTS: t.prevFlushTS, ClusterID: t.a.cfg.ClusterID, TaskStartTS: t.info.StartTs})
	b.Close() // its temp files are compressed into fl now
	t.a.metrics.flushDuration.WithLabelValues("generate_metadata").Observe(time.Since(began).Seconds())
	if err != nil {
		// The buffered changes are gone (e.g. a spilled file could not be
		// read back). Later flushes must not publish checkpoints that cover
		// them, so every subscription starts again from what is durable.
		for _, sub := range t.subs {
			t.deregister(sub)
			t.drop(sub, "flush-failed")
		}
		return fmt.Errorf("build flush: %w", err)
	}
	p := &pendingFlush{fl: fl, frozen: fr}
	if err := t.upload(ctx, p); err != nil {
		t.unsent = p
		return err
	}
	return nil
}

func (t *taskRunner) nextFlushTS(ctx context.Context) (uint64, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	phys, logical, err := t.a.cfg.PD.GetTS(rctx)
	if err != nil {
		return 0, fmt.Errorf("get flush ts: %w", err)
	}
	ts := max(oracle.ComposeTS(phys, logical), t.lastFlushTS+1)
	t.lastFlushTS = ts
	return ts, nil
}

// upload writes the data objects, then the meta file that lists them, and
// only then advances the checkpoints the flush covers.
func (t *taskRunner) upload(ctx context.Context, p *pendingFlush) error {
	if !p.durable {
		began := time.Now()
		for _, o := range p.fl.Data {
			if err := t.st.WriteFile(ctx, o.Name, o.Data); err != nil {
				return fmt.Errorf("upload %s: %w", o.Name, err)
			}
			t.a.metrics.bytesOut.Add(float64(len(o.Data)))
			t.a.metrics.fileSize.Observe(float64(len(o.Data)))
		}
		if err := t.st.WriteFile(ctx, p.fl.Meta.Name, p.fl.Meta.Data); err != nil {
			return fmt.Errorf("upload %s: %w", p.fl.Meta.Name, err)
		}
		p.durable = true
		t.prevFlushTS = p.fl.Name.FlushTS
		p.fl.Data = nil // uploaded: release the compressed bytes
		if hook := t.a.cfg.BeforeCheckpoints; hook != nil {
			if err := hook(t.info.Name); err != nil {
				return err
			}
		}
		t.a.metrics.flushDuration.WithLabelValues("save_files").Observe(time.Since(began).Seconds())
	}
	for _, f := range p.frozen {
		t.flushed.Advance(f.span, f.ts)
	}
	if err := t.putRegionCheckpoints(ctx, p.frozen); err != nil {
		return err
	}
	t.lastFlushAt = time.Now()
	t.stats.lastFlushUnixMs.Store(t.lastFlushAt.UnixMilli())
	if err := t.a.cfg.Meta.PutSpanCheckpoints(ctx, t.info.Name, toRecord(t.a.cfg.StoreID, p.fl.Name.FlushTS, t.flushed)); err != nil {
		return fmt.Errorf("publish span checkpoints: %w", err)
	}
	if cp, ok := t.storeCheckpoint(); ok {
		stored, err := t.a.cfg.Meta.AdvanceStoreCheckpoint(ctx, t.info.Name, t.a.cfg.StoreID, cp)
		if err != nil {
			return fmt.Errorf("advance store checkpoint: %w", err)
		}
		t.stats.storeCheckpoint.Store(stored)
		lag := time.Since(oracle.GetTimeFromTS(stored)).Seconds()
		t.a.metrics.checkpointLagSecs.WithLabelValues(t.info.Name).Set(lag)
	}
	return t.syncGlobalCheckpoint(ctx)
}

// storeCheckpoint is the minimum flushed ts over what this store observes.
func (t *taskRunner) storeCheckpoint() (uint64, bool) {
	var cp uint64
	found := false
	for _, sub := range t.subs {
		for _, p := range sub.pieces {
			ts, ok := t.flushed.Min(p)
			if !ok {
				continue
			}
			if !found || ts < cp {
				cp, found = ts, true
			}
		}
	}
	return cp, found
}

// syncGlobalCheckpoint copies the coordinator's global checkpoint to
// storage (v1/global_checkpoint/<store>.ts) and then to etcd's storage
// checkpoint, as TiKV does, so BR's status and restore agree.
func (t *taskRunner) syncGlobalCheckpoint(ctx context.Context) error {
	g, ok, err := t.a.cfg.Meta.GlobalCheckpoint(ctx, t.info.Name)
	if err != nil || !ok {
		return err
	}
	scs, err := t.a.cfg.Meta.StorageCheckpoints(ctx, t.info.Name)
	if err != nil {
		return err
	}
	if scs[t.a.cfg.StoreID] >= g {
		return nil
	}
	name := logfile.GlobalCheckpointName(t.a.cfg.StoreID)
	if err := t.st.WriteFile(ctx, name, logfile.EncodeGlobalCheckpoint(g)); err != nil {
		return fmt.Errorf("upload %s: %w", name, err)
	}
	_, err = t.a.cfg.Meta.AdvanceStorageCheckpoint(ctx, t.info.Name, t.a.cfg.StoreID, g)
	return err
}
