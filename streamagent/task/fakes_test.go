package task

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tikv/client-go/v2/oracle"
	"github.com/tikv/pd/client/clients/router"

	"logbackup/meta"
	"logbackup/proto/lbpb"
	"logbackup/storage"
	"logbackup/streamagent/checkpoint"
	"logbackup/streamagent/logfile"
	"logbackup/streamagent/matcher"
	"logbackup/streamagent/metrics"
	"logbackup/streamagent/retry"
	"logbackup/streamagent/spans"
)

// Fakes for a task's parts (Env): a manual Clock, an in-memory meta,
// a PD that leads nothing, and mem:// storage with a gate and injected
// failures. Tests built on them never sleep: they wait on what the code
// under test signals.

// fakeClock moves only when a test advances it.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	timers  []*fakeTimer
	tickers []*fakeTicker
	// armed receives the duration of every Timer Reset, so a test can
	// advance past a retry the loop just scheduled.
	armed chan time.Duration
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), armed: make(chan time.Duration, 1000)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

type fakeTimer struct {
	c      *fakeClock
	ch     chan time.Time
	at     time.Time
	active bool
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, ch: make(chan time.Time, 1), at: c.now.Add(d), active: true}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) Chan() <-chan time.Time { return t.ch }
func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.active
	t.active = false
	return was
}
func (t *fakeTimer) Reset(d time.Duration) bool {
	t.c.mu.Lock()
	was := t.active
	t.active, t.at = true, t.c.now.Add(d)
	t.c.mu.Unlock()
	t.c.armed <- d
	return was
}

type fakeTicker struct {
	c      *fakeClock
	ch     chan time.Time
	period time.Duration
	next   time.Time
	active bool
}

func (c *fakeClock) NewTicker(d time.Duration) Ticker {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTicker{c: c, ch: make(chan time.Time, 1), period: d, next: c.now.Add(d), active: true}
	c.tickers = append(c.tickers, t)
	return t
}

func (t *fakeTicker) Chan() <-chan time.Time { return t.ch }
func (t *fakeTicker) Stop() {
	t.c.mu.Lock()
	t.active = false
	t.c.mu.Unlock()
}

// advance moves the Clock by d and fires what fell due; like the time
// package's, a Ticker that could not deliver drops the tick.
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for _, t := range c.timers {
		if t.active && !t.at.After(c.now) {
			t.active = false
			select {
			case t.ch <- c.now:
			default:
			}
		}
	}
	for _, t := range c.tickers {
		if !t.active || t.next.After(c.now) {
			continue
		}
		for !t.next.After(c.now) {
			t.next = t.next.Add(t.period)
		}
		select {
		case t.ch <- c.now:
		default:
		}
	}
}

// ticksPending reports whether a tick waits to be taken.
func (c *fakeClock) ticksPending() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range c.tickers {
		if len(t.ch) > 0 {
			return true
		}
	}
	return false
}

// tickerCount is how many tickers were ever made.
func (c *fakeClock) tickerCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.tickers)
}

// fakeMeta is an in-memory Meta. Every write is recorded; spanPuts and
// progress signal the flusher's and the publisher's writes.
type fakeMeta struct {
	mu         sync.Mutex
	global     uint64
	hasGlobal  bool
	storageCPs map[uint64]uint64
	spans      map[uint64]*lbpb.SpanCheckpoints
	storeCPs   map[uint64]uint64
	regionPuts [][]meta.RegionTS
	reports    []*meta.Progress

	spanPuts chan *lbpb.SpanCheckpoints
	progress chan *meta.Progress
}

func newFakeMeta() *fakeMeta {
	return &fakeMeta{storageCPs: map[uint64]uint64{}, spans: map[uint64]*lbpb.SpanCheckpoints{}, storeCPs: map[uint64]uint64{},
		spanPuts: make(chan *lbpb.SpanCheckpoints, 1000), progress: make(chan *meta.Progress, 1000)}
}

func (m *fakeMeta) GlobalCheckpoint(context.Context, string) (uint64, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.global, m.hasGlobal, nil
}
func (m *fakeMeta) StorageCheckpoints(context.Context, string) (map[uint64]uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[uint64]uint64{}
	for k, v := range m.storageCPs {
		out[k] = v
	}
	return out, nil
}
func (m *fakeMeta) SpanCheckpoints(context.Context, string, int64) (map[uint64]*lbpb.SpanCheckpoints, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[uint64]*lbpb.SpanCheckpoints{}
	for k, v := range m.spans {
		out[k] = v
	}
	return out, nil
}
func (m *fakeMeta) PutSpanCheckpoints(_ context.Context, _ string, _ int64, sc *lbpb.SpanCheckpoints) error {
	m.mu.Lock()
	m.spans[sc.StoreId] = sc
	m.mu.Unlock()
	m.spanPuts <- sc
	return nil
}
func (m *fakeMeta) AdvanceStoreCheckpoint(_ context.Context, _ string, store, ts uint64) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.storeCPs[store] = max(m.storeCPs[store], ts)
	return m.storeCPs[store], nil
}
func (m *fakeMeta) AdvanceStorageCheckpoint(_ context.Context, _ string, store, ts uint64) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.storageCPs[store] = max(m.storageCPs[store], ts)
	return m.storageCPs[store], nil
}
func (m *fakeMeta) AdvanceRegionCheckpoints(_ context.Context, _ string, cps []meta.RegionTS) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.regionPuts = append(m.regionPuts, append([]meta.RegionTS(nil), cps...))
	return nil
}
func (m *fakeMeta) PutProgress(_ context.Context, _ string, _ int64, p *meta.Progress) error {
	m.mu.Lock()
	m.reports = append(m.reports, p)
	m.mu.Unlock()
	m.progress <- p
	return nil
}
func (m *fakeMeta) Progresses(context.Context, string, int64) (map[uint64]*meta.Progress, error) {
	return map[uint64]*meta.Progress{}, nil
}
func (m *fakeMeta) RepairCheckpoint(context.Context, string, string, uint64) (*meta.MalformedError, error) {
	return nil, nil
}

func (m *fakeMeta) regionWrites() [][]meta.RegionTS {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([][]meta.RegionTS(nil), m.regionPuts...)
}

// fakePD hands out timestamps from the Clock (an hour on, so they are
// above every commit ts a test makes) and knows the regions a test sets
// (none unless set).
type fakePD struct {
	clk        *fakeClock
	logical    atomic.Int64
	safePoints sync.Map // id → ts
	mu         sync.Mutex
	regions    []*router.Region
}

// setRegions is what PD says about the regions from now on.
func (p *fakePD) setRegions(rs ...*router.Region) {
	p.mu.Lock()
	p.regions = rs
	p.mu.Unlock()
}

func (p *fakePD) GetTS(context.Context) (int64, int64, error) {
	return oracle.GetPhysical(p.clk.Now().Add(time.Hour)), p.logical.Add(1), nil
}
func (p *fakePD) ScanRegions(_ context.Context, start, end []byte) ([]*router.Region, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*router.Region
	for _, r := range p.regions {
		if (len(end) == 0 || bytes.Compare(r.Meta.StartKey, end) < 0) && (len(r.Meta.EndKey) == 0 || bytes.Compare(r.Meta.EndKey, start) > 0) {
			out = append(out, r)
		}
	}
	return out, nil
}

// fakeFeed is an EventFeed stream that records what the agent sends;
// nothing is received (tests hand the loop events themselves).
type fakeFeed struct {
	cdcpb.ChangeData_EventFeedClient
	sent []*cdcpb.ChangeDataRequest
}

func (f *fakeFeed) Send(r *cdcpb.ChangeDataRequest) error {
	f.sent = append(f.sent, r)
	return nil
}
func (p *fakePD) UpdateServiceGCSafePoint(_ context.Context, id string, _ int64, ts uint64) (uint64, error) {
	p.safePoints.Store(id, ts)
	return 0, nil
}
func (p *fakePD) TxnSafePoint(context.Context) (uint64, error) { return 0, nil }
func (p *fakePD) OwnStore(context.Context) (*metapb.Store, error) {
	return nil, errors.New("the fake PD has no stores")
}

// testStorage is mem:// storage whose data uploads can be held (gate) or
// failed (fail), each attempt announced on uploads.
type testStorage struct {
	storage.Storage
	mu      sync.Mutex
	gate    chan struct{} // non-nil: uploads wait for it to close
	fail    error         // non-nil: uploads fail with it
	uploads chan string
}

func (s *testStorage) WriteFrom(ctx context.Context, name string, size int64, open func() (io.ReadCloser, error)) error {
	s.mu.Lock()
	gate, fail := s.gate, s.fail
	s.mu.Unlock()
	s.uploads <- name
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if fail != nil {
		return fail
	}
	return s.Storage.WriteFrom(ctx, name, size, open)
}

// Close leaves the store open for the test to read back.
func (s *testStorage) Close() error { return nil }

func (s *testStorage) set(gate chan struct{}, fail error) {
	s.mu.Lock()
	s.gate, s.fail = gate, fail
	s.mu.Unlock()
}

// harness runs one task's loop on fakes, with one subscription (region
// 10, the whole task range) registered as if placement had made it.
type harness struct {
	t           testing.TB
	clk         *fakeClock
	meta        *fakeMeta
	pd          *fakePD
	st          *testStorage
	reg         *prometheus.Registry // the task's metrics (Env.Metrics)
	r           *Runner
	fs          *feedStream
	startTS     uint64
	cancel      context.CancelFunc
	done        chan struct{}
	flushOnExit atomic.Bool
}

const testStore = 7

func newHarness(t testing.TB, settings func(*Settings)) *harness {
	t.Helper()
	ctx := context.Background()
	mem, err := storage.OpenURL(ctx, "mem://")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	h := &harness{t: t, clk: newFakeClock(), meta: newFakeMeta(),
		st: &testStorage{Storage: mem, uploads: make(chan string, 1000)}, reg: prometheus.NewRegistry()}
	h.pd = &fakePD{clk: h.clk}
	h.startTS = oracle.GoTimeToTS(h.clk.Now())
	s := Settings{StoreID: testStore, ClusterID: 1, FlushInterval: time.Hour, FileSizeLimit: 64 << 20, MemoryQuota: 256 << 20,
		ReconcileInterval: time.Hour, RegionCheckpointInterval: time.Minute, FinalFlushTimeout: 20 * time.Second,
		RetryBudget: retry.Budget{Attempts: 30, Duration: 10 * time.Minute}}
	if settings != nil {
		settings(&s)
	}
	mx := metrics.New(h.reg)
	env := &Env{Settings: s, PD: h.pd, Meta: h.meta, Lenient: func() Meta { return h.meta }, Storage: h.st,
		Metrics: NewMetrics(mx, "t"), Log: slog.New(slog.DiscardHandler), Clock: h.clk, Counters: &Counters{},
		Chunks: logfile.NewChunkPool(), CoordFailure: func() (CoordFailure, bool) { return CoordFailure{}, false }}
	covered := checkpoint.Spans([]meta.Range{{StartKey: []byte("a"), EndKey: []byte("z")}})
	info := &brpb.StreamBackupTaskInfo{Name: "t", StartTs: h.startTS}
	h.r = newRunner(env, taskIdent{info: info, name: "t", inc: 1}, covered, spans.New(covered, h.startTS), t.TempDir(), 0)
	// Placement's work, done by hand: one region led here, subscribed.
	h.fs = &feedStream{}
	region := &metapb.Region{Id: 10, StartKey: covered[0].Start, EndKey: covered[0].End, RegionEpoch: &metapb.RegionEpoch{Version: 3, ConfVer: 1}}
	sub := &subscription{reqID: 1, region: region, pieces: covered, m: matcher.New(h.startTS), stream: h.fs}
	h.r.regions.subs[1], h.r.regions.byRegion[10] = sub, sub
	h.r.regions.scanning = 1 // its initial scan has not begun
	h.r.regions.pending = nil
	return h
}

// start runs the loop; it returns once the loop made its tickers.
func (h *harness) start() {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan struct{})
	h.flushOnExit.Store(true)
	go func() { defer close(h.done); h.r.Run(ctx, &h.flushOnExit) }()
	// A test that failed half-way must not wait for a final flush the
	// fake Clock would never time out.
	h.t.Cleanup(func() { h.flushOnExit.Store(false); h.stop() })
	h.waitFor("the loop's tickers", func() bool { return h.clk.tickerCount() >= 4 })
}

// stop ends the loop (with its final flush if flushOnExit) and waits.
func (h *harness) stop() {
	h.cancel()
	<-h.done
}

// waitFor yields until cond holds; the test's deadline bounds it.
func (h *harness) waitFor(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s", what)
		}
		runtime.Gosched()
	}
}

// ts is a commit ts i milliseconds after the task's start.
func (h *harness) ts(i int) uint64 {
	return oracle.ComposeTS(oracle.ExtractPhysical(h.startTS)+int64(i), 0)
}

// put feeds committed rows (key, value) at ts i, i+1, ….
func (h *harness) put(i int, kvs ...string) []logfile.Change {
	var rows []*cdcpb.Event_Row
	var want []logfile.Change
	for j := 0; j+1 < len(kvs); j += 2 {
		c := logfile.Change{Key: []byte(kvs[j]), Value: []byte(kvs[j+1]), StartTS: h.ts(i + j/2), CommitTS: h.ts(i+j/2) + 1, Op: logfile.OpPut}
		rows = append(rows, &cdcpb.Event_Row{Type: cdcpb.Event_COMMITTED, Key: c.Key, Value: c.Value, StartTs: c.StartTS, CommitTs: c.CommitTS, OpType: cdcpb.Event_Row_PUT})
		want = append(want, c)
	}
	h.send(&cdcpb.ChangeDataEvent{Events: []*cdcpb.Event{{RegionId: 10, RequestId: 1,
		Event: &cdcpb.Event_Entries_{Entries: &cdcpb.Event_Entries{Entries: rows}}}}})
	return want
}

// initialized ends the region's initial scan and resolves it to ts i.
func (h *harness) initialized(i int) {
	h.send(&cdcpb.ChangeDataEvent{Events: []*cdcpb.Event{{RegionId: 10, RequestId: 1,
		Event: &cdcpb.Event_Entries_{Entries: &cdcpb.Event_Entries{Entries: []*cdcpb.Event_Row{{Type: cdcpb.Event_INITIALIZED}}}}}}})
	h.resolve(i)
}

func (h *harness) resolve(i int) {
	h.send(&cdcpb.ChangeDataEvent{ResolvedTs: &cdcpb.ResolvedTs{Regions: []uint64{10}, Ts: h.ts(i)}})
}

func (h *harness) send(ev *cdcpb.ChangeDataEvent) {
	h.r.feed.events <- streamEvent{stream: h.fs, ev: ev}
}

// settle returns once the loop has handled every event sent so far: the
// events channel is drained, and a report asked for after that (a second
// of the fake Clock) has reached etcd, so the loop went round once more.
func (h *harness) settle() {
	h.t.Helper()
	h.waitFor("the events to be taken", func() bool { return len(h.r.feed.events) == 0 })
	// A tick still waiting would swallow the report's.
	h.waitFor("the ticks to be taken", func() bool { return !h.clk.ticksPending() })
	h.clk.advance(progressInterval)
	want := h.clk.Now().UnixMilli()
	for {
		select {
		case p := <-h.meta.progress:
			if p.UpdatedUnixMs >= want {
				return
			}
		case <-time.After(10 * time.Second):
			h.t.Fatal("no progress report")
		}
	}
}

// flushed waits for the next published flush (its span checkpoints).
func (h *harness) flushed() *lbpb.SpanCheckpoints {
	h.t.Helper()
	select {
	case sc := <-h.meta.spanPuts:
		return sc
	case <-time.After(10 * time.Second):
		h.t.Fatal("no flush was published")
		return nil
	}
}

// upload waits for the next data upload attempt.
func (h *harness) upload() {
	h.t.Helper()
	select {
	case <-h.st.uploads:
	case <-time.After(10 * time.Second):
		h.t.Fatal("no upload was attempted")
	}
}

// retryArmed waits for the loop to schedule a flush retry and says when.
func (h *harness) retryArmed() time.Duration {
	h.t.Helper()
	select {
	case d := <-h.clk.armed:
		return d
	case <-time.After(10 * time.Second):
		h.t.Fatal("no retry was scheduled")
		return 0
	}
}

// noFlush checks that nothing was published yet.
func (h *harness) noFlush() {
	h.t.Helper()
	if n := len(h.meta.spanPuts); n > 0 {
		h.t.Fatalf("%d flushes published, want none yet", n)
	}
}

// stored decodes every change the flusher wrote to storage, and counts
// its meta files.
func (h *harness) stored() (changes []logfile.Change, metaFiles int) {
	h.t.Helper()
	ctx := context.Background()
	sum, err := logfile.Walk(ctx, h.st.Storage, func(d logfile.Decoded) error {
		changes = append(changes, d.Change)
		return nil
	})
	if err != nil {
		h.t.Fatalf("read back what was flushed: %v", err)
	}
	sort.Slice(changes, func(i, j int) bool { return changes[i].CommitTS < changes[j].CommitTS })
	return changes, sum.MetaFiles
}

// sameChanges compares what was read back with what was fed.
func sameChanges(t *testing.T, got, want []logfile.Change) {
	t.Helper()
	sort.Slice(want, func(i, j int) bool { return want[i].CommitTS < want[j].CommitTS })
	if len(got) != len(want) {
		t.Fatalf("read back %d changes, fed %d: %v", len(got), len(want), got)
	}
	for i := range got {
		g, w := got[i], want[i]
		if string(g.Key) != string(w.Key) || string(g.Value) != string(w.Value) || g.StartTS != w.StartTS || g.CommitTS != w.CommitTS || g.Op != w.Op {
			t.Fatalf("change %d: read back %+v, fed %+v", i, g, w)
		}
	}
}

// metric reads one series of the task's metrics: the value of the counter
// or gauge name whose labels include labels, and whether there is one.
func (h *harness) metric(name string, labels ...string) (float64, bool) {
	h.t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if got[k] != v {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue(), true
			case m.Gauge != nil:
				return m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}
