package task

import (
	"context"
	"crypto/tls"
	"log/slog"
	"sync/atomic"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tikv/pd/client/clients/router"

	"logbackup/meta"
	"logbackup/proto/lbpb"
	"logbackup/storage"
	"logbackup/streamagent/errs"
	"logbackup/streamagent/logfile"
	"logbackup/streamagent/metrics"
	"logbackup/streamagent/retry"
)

// Env is everything a task's parts (intake, placement, the flusher,
// progress publishing) may use, built once when the task starts. None of
// them holds the runner or the agent: what they reach is what is here, so
// each can be built in a test from fakes (fakes_test.go, flush_test.go).
// The agent builds it (streamagent/runners.go).
type Env struct {
	Settings Settings
	PD       PD
	// Meta is the etcd client fenced to the task's incarnation: nothing
	// written through it can land in another incarnation.
	Meta Meta
	// Lenient gives a view of Meta that skips corrupt values instead of
	// failing; each view is for one goroutine (meta.Client.Tolerant).
	Lenient func() Meta
	Storage storage.Storage
	Metrics *Metrics
	Log     *slog.Logger
	Clock   Clock
	// Counters are the store-wide totals /status shows, shared by every
	// task of the agent.
	Counters *Counters
	// Chunks recycles the builders' buffers (one pool per agent).
	Chunks *logfile.ChunkPool
	// CoordFailure is the coordinator's advance failure for the task, if
	// any: reported by the store too (progress.go).
	CoordFailure func() (CoordFailure, bool)
}

// taskIdent names the task a part works for.
type taskIdent struct {
	info *brpb.StreamBackupTaskInfo
	name string
	inc  int64 // the incarnation; env.Meta is fenced to it
}

// Settings are the parts of the agent's Config a task reads.
type Settings struct {
	StoreID                  uint64
	ClusterID                uint64
	TLS                      *tls.Config
	FlushInterval            time.Duration
	FileSizeLimit            int
	MemoryQuota              int
	ReconcileInterval        time.Duration
	RegionCheckpointInterval time.Duration
	FinalFlushTimeout        time.Duration
	RetryBudget              retry.Budget
}

// Counters are the agent's store-wide totals a task adds to.
type Counters struct {
	Spills  atomic.Int64 // times a builder spilled over the memory quota
	Retries atomic.Int64 // retried failures (flushes, stream opens, storage requests)
}

// PD is the part of PD a task uses.
type PD interface {
	// GetTS hands out a timestamp (the flush ts).
	GetTS(ctx context.Context) (physical, logical int64, err error)
	// ScanRegions lists the regions overlapping the encoded range [start, end).
	ScanRegions(ctx context.Context, start, end []byte) ([]*router.Region, error)
	// UpdateServiceGCSafePoint sets (ttl > 0) or removes a service safepoint.
	UpdateServiceGCSafePoint(ctx context.Context, id string, ttl int64, ts uint64) (uint64, error)
	// TxnSafePoint is PD's txn safe point (meta.TxnSafePoint).
	TxnSafePoint(ctx context.Context) (uint64, error)
	// OwnStore is this agent's store; an error saying so once it left the
	// cluster (the agent then stops every task).
	OwnStore(ctx context.Context) (*metapb.Store, error)
}

// Meta is the part of the etcd client (*meta.Client) a running task
// uses.
type Meta interface {
	GlobalCheckpoint(ctx context.Context, task string) (uint64, bool, error)
	StorageCheckpoints(ctx context.Context, task string) (map[uint64]uint64, error)
	SpanCheckpoints(ctx context.Context, task string, inc int64) (map[uint64]*lbpb.SpanCheckpoints, error)
	PutSpanCheckpoints(ctx context.Context, task string, inc int64, sc *lbpb.SpanCheckpoints) error
	AdvanceStoreCheckpoint(ctx context.Context, task string, store, ts uint64) (uint64, error)
	AdvanceStorageCheckpoint(ctx context.Context, task string, store, ts uint64) (uint64, error)
	AdvanceRegionCheckpoints(ctx context.Context, task string, cps []meta.RegionTS) error
	PutProgress(ctx context.Context, task string, inc int64, p *meta.Progress) error
	Progresses(ctx context.Context, task string, inc int64) (map[uint64]*meta.Progress, error)
	RepairCheckpoint(ctx context.Context, task, key string, ts uint64) (*meta.MalformedError, error)
}

var _ Meta = (*meta.Client)(nil)

// Metrics are the agent's metrics as one task records them; its
// per-task children are bound once.
type Metrics struct {
	m               *metrics.Metrics
	task            string
	ObservedRegions prometheus.Gauge
	BufferedBytes   prometheus.Gauge
	PendingScans    prometheus.Gauge
}

func NewMetrics(m *metrics.Metrics, task string) *Metrics {
	return &Metrics{m: m, task: task,
		ObservedRegions: m.ObservedRegions.WithLabelValues(task),
		BufferedBytes:   m.BufferedBytes.WithLabelValues(task),
		PendingScans:    m.TiKV.PendingScans.WithLabelValues("executing"),
	}
}

// forget removes the task's own series (its runner stopped).
func (tm *Metrics) forget() {
	tm.m.ObservedRegions.DeleteLabelValues(tm.task)
	tm.m.BufferedBytes.DeleteLabelValues(tm.task)
	tm.m.Checkpoints.ForgetStore(tm.task)
}

func (tm *Metrics) CountError(code string) { tm.m.CountError(code) }
func (tm *Metrics) retried(code string)    { tm.m.Retries.WithLabelValues(code).Inc() }
func (tm *Metrics) regionEvent(reason string) {
	tm.m.RegionErrors.WithLabelValues(reason).Inc()
}
func (tm *Metrics) storeCheckpoint(ts uint64) { tm.m.Checkpoints.SetStore(tm.task, ts) }

// noteError counts an error by code and decides, with the budget, whether
// it is fatal (the budget's clock is the task's).
func (e *Env) noteError(b *retry.Counter, err error) *retry.Fatal {
	info := errs.Classify(err)
	e.Metrics.CountError(string(info.Code))
	return b.Fail(e.Clock.Now(), info, err)
}

// retried counts a retryable failure that will be retried.
func (e *Env) retried(err error) {
	e.Metrics.retried(string(errs.Classify(err).Code))
	e.Counters.Retries.Add(1)
}

// Clock is the time a task runs on: the real one, or a test's.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
	NewTicker(d time.Duration) Ticker
}

type Timer interface {
	Chan() <-chan time.Time
	Stop() bool
	Reset(d time.Duration) bool
}

type Ticker interface {
	Chan() <-chan time.Time
	Stop()
}

// RealClock is the time package.
type RealClock struct{}

func (RealClock) Now() time.Time                   { return time.Now() }
func (RealClock) NewTimer(d time.Duration) Timer   { return realTimer{time.NewTimer(d)} }
func (RealClock) NewTicker(d time.Duration) Ticker { return realTicker{time.NewTicker(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) Chan() <-chan time.Time     { return t.t.C }
func (t realTimer) Stop() bool                 { return t.t.Stop() }
func (t realTimer) Reset(d time.Duration) bool { return t.t.Reset(d) }

type realTicker struct{ t *time.Ticker }

func (t realTicker) Chan() <-chan time.Time { return t.t.C }
func (t realTicker) Stop()                  { t.t.Stop() }

// CoordFailure is a task whose global checkpoint the coordinator (this
// agent, when elected) cannot advance: the store's report shows it as
// RETRYING with this reason, although the store itself flushes fine.
type CoordFailure struct {
	Failures int
	Since    time.Time
	Msg      string
}
