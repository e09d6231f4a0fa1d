package streamagent

import (
	"context"
	"crypto/tls"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/prometheus/client_golang/prometheus"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/clients/router"

	"logbackup/meta"
	"logbackup/proto/lbpb"
	"logbackup/storage"
	"logbackup/streamagent/errs"
	"logbackup/streamagent/logfile"
	"logbackup/streamagent/metrics"
	"logbackup/streamagent/retry"
)

// taskEnv is everything a task's parts (intake, placement, the flusher,
// progress publishing) may use, built once when the task starts. None of
// them holds the runner or the Agent: what they reach is what is here, so
// each can be built in a test from fakes (fakes_test.go, flush_test.go).
type taskEnv struct {
	settings taskSettings
	pd       taskPD
	// meta is the etcd client fenced to the task's incarnation: nothing
	// written through it can land in another incarnation.
	meta taskMeta
	// lenient gives a view of meta that skips corrupt values instead of
	// failing; each view is for one goroutine (meta.Client.Tolerant).
	lenient func() taskMeta
	storage storage.Storage
	metrics *taskMetrics
	log     *slog.Logger
	clock   clock
	// counters are the store-wide totals /status shows, shared by every
	// task of the agent.
	counters *storeCounters
	// chunks recycles the builders' buffers (one pool per agent).
	chunks *logfile.ChunkPool
	// coordFailure is the coordinator's advance failure for the task, if
	// any: reported by the store too (progress.go).
	coordFailure func() (coordFailure, bool)
}

// taskSettings are the parts of Config a task reads.
type taskSettings struct {
	storeID                  uint64
	clusterID                uint64
	tls                      *tls.Config
	flushInterval            time.Duration
	fileSizeLimit            int
	memoryQuota              int
	reconcileInterval        time.Duration
	regionCheckpointInterval time.Duration
	finalFlushTimeout        time.Duration
	retryBudget              RetryBudget
}

func settingsOf(cfg *Config) taskSettings {
	return taskSettings{
		storeID: cfg.StoreID, clusterID: cfg.ClusterID, tls: cfg.TLS,
		flushInterval: cfg.FlushInterval, fileSizeLimit: cfg.FileSizeLimit, memoryQuota: cfg.MemoryQuota,
		reconcileInterval: cfg.ReconcileInterval, regionCheckpointInterval: cfg.RegionCheckpointInterval,
		finalFlushTimeout: cfg.FinalFlushTimeout, retryBudget: cfg.RetryBudget,
	}
}

// storeCounters are the agent's store-wide totals a task adds to.
type storeCounters struct {
	Spills  atomic.Int64 // times a builder spilled over the memory quota
	Retries atomic.Int64 // retried failures (flushes, stream opens, storage requests)
}

// taskPD is the part of PD a task uses.
type taskPD interface {
	// GetTS hands out a timestamp (the flush ts).
	GetTS(ctx context.Context) (physical, logical int64, err error)
	// ScanRegions lists the regions overlapping the encoded range [start, end).
	ScanRegions(ctx context.Context, start, end []byte) ([]*router.Region, error)
	// UpdateServiceGCSafePoint sets (ttl > 0) or removes a service safepoint.
	UpdateServiceGCSafePoint(ctx context.Context, id string, ttl int64, ts uint64) (uint64, error)
	// TxnSafePoint is PD's txn safe point (meta.TxnSafePoint).
	TxnSafePoint(ctx context.Context) (uint64, error)
	// OwnStore is this agent's store; a *StoreGoneError once it left the
	// cluster (the agent then stops every task).
	OwnStore(ctx context.Context) (*metapb.Store, error)
}

// agentPD is taskPD over the agent's pd client.
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

// taskMeta is the part of the etcd client (*meta.Client) a running task
// uses.
type taskMeta interface {
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

var _ taskMeta = (*meta.Client)(nil)

// lenientOf makes fresh tolerant views of m.
func lenientOf(m *meta.Client) func() taskMeta {
	return func() taskMeta {
		var ignored []meta.CorruptRecord
		return m.Tolerant(&ignored)
	}
}

// taskMetrics are the agent's metrics as one task records them; its
// per-task children are bound once.
type taskMetrics struct {
	m               *metrics.Metrics
	task            string
	ObservedRegions prometheus.Gauge
	BufferedBytes   prometheus.Gauge
	PendingScans    prometheus.Gauge
}

func newTaskMetrics(m *metrics.Metrics, task string) *taskMetrics {
	return &taskMetrics{m: m, task: task,
		ObservedRegions: m.ObservedRegions.WithLabelValues(task),
		BufferedBytes:   m.BufferedBytes.WithLabelValues(task),
		PendingScans:    m.TiKV.PendingScans.WithLabelValues("executing"),
	}
}

// forget removes the task's own series (its runner stopped).
func (tm *taskMetrics) forget() {
	tm.m.ObservedRegions.DeleteLabelValues(tm.task)
	tm.m.BufferedBytes.DeleteLabelValues(tm.task)
	tm.m.Checkpoints.ForgetStore(tm.task)
}

func (tm *taskMetrics) CountError(code string) { tm.m.CountError(code) }
func (tm *taskMetrics) retried(code string)    { tm.m.Retries.WithLabelValues(code).Inc() }
func (tm *taskMetrics) regionEvent(reason string) {
	tm.m.RegionErrors.WithLabelValues(reason).Inc()
}
func (tm *taskMetrics) storeCheckpoint(ts uint64) { tm.m.Checkpoints.SetStore(tm.task, ts) }

// noteError counts an error by code and decides, with the budget, whether
// it is fatal (the budget's clock is the task's).
func (e *taskEnv) noteError(b *retry.Counter, err error) *retry.Fatal {
	info := errs.Classify(err)
	e.metrics.CountError(string(info.Code))
	return b.Fail(e.clock.Now(), info, err)
}

// retried counts a retryable failure that will be retried.
func (e *taskEnv) retried(err error) {
	e.metrics.retried(string(errs.Classify(err).Code))
	e.counters.Retries.Add(1)
}

// clock is the time a task runs on: the real one, or a test's.
type clock interface {
	Now() time.Time
	NewTimer(d time.Duration) timer
	NewTicker(d time.Duration) ticker
}

type timer interface {
	Chan() <-chan time.Time
	Stop() bool
	Reset(d time.Duration) bool
}

type ticker interface {
	Chan() <-chan time.Time
	Stop()
}

// realClock is the time package.
type realClock struct{}

func (realClock) Now() time.Time                   { return time.Now() }
func (realClock) NewTimer(d time.Duration) timer   { return realTimer{time.NewTimer(d)} }
func (realClock) NewTicker(d time.Duration) ticker { return realTicker{time.NewTicker(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) Chan() <-chan time.Time     { return t.t.C }
func (t realTimer) Stop() bool                 { return t.t.Stop() }
func (t realTimer) Reset(d time.Duration) bool { return t.t.Reset(d) }

type realTicker struct{ t *time.Ticker }

func (t realTicker) Chan() <-chan time.Time { return t.t.C }
func (t realTicker) Stop()                  { t.t.Stop() }
