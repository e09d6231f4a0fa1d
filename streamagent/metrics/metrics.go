// Package metrics is the agent's Prometheus metrics: its own
// logbackup_agent_* series and the names TiKV's log backup and TiDB's
// advancer export, registered on the registry the caller injects.
package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tikv/client-go/v2/oracle"
)

// Metrics are registered on the registry the caller injects; nothing is
// global, so tests and several agents in one process do not collide.
//
// Two families: our own logbackup_agent_* series, and the series TiKV's
// built-in log backup (tikv_log_backup_*) and TiDB's advancer
// (tidb_log_backup_last_checkpoint) export, with the same names, labels and
// meaning, so PingCAP's documented alerts and TiKV's "Backup Log" dashboard
// work on the agents unchanged (docs/METRICS.md lists both).
type Metrics struct {
	EventsIn        prometheus.Counter
	BytesIn         prometheus.Counter
	FileSize        prometheus.Histogram
	Spilled         prometheus.Counter
	MemoryWait      prometheus.Counter
	BytesOut        prometheus.Counter
	RegionErrors    *prometheus.CounterVec
	InitialScans    *prometheus.CounterVec
	FlushDuration   *prometheus.HistogramVec
	ObservedRegions *prometheus.GaugeVec
	BufferedBytes   *prometheus.GaugeVec
	Errors          *prometheus.CounterVec
	FatalErrors     *prometheus.CounterVec
	TaskStatus      *prometheus.GaugeVec
	Retries         *prometheus.CounterVec
	AutoResumes     *prometheus.CounterVec
	RecoveryProbes  *prometheus.CounterVec // by dependency and result
	StorageRetries  *prometheus.CounterVec
	TimeToRecover   prometheus.Histogram
	AdvancerOwner   *prometheus.GaugeVec // by task: 1 when a foreign advancer owns it
	ForeignWriters  *prometheus.GaugeVec // by task: stores writing checkpoints without our agent

	// checkpoints are each task's store checkpoint on this agent and, on
	// the coordinator, its global checkpoint; lags are derived from them at
	// scrape time, so they keep growing while flushes fail.
	Checkpoints *CheckpointCollector

	TiKV TiKVMetrics
}

// TiKVMetrics are TiKV's and TiDB's names for what the agent does.
type TiKVMetrics struct {
	TaskStatus        *prometheus.GaugeVec
	Errors            *prometheus.CounterVec
	FatalErrors       *prometheus.CounterVec
	ObservedRegion    prometheus.Gauge
	FlushDuration     *prometheus.HistogramVec
	FlushFileSize     prometheus.Histogram
	UploadFileSize    *prometheus.HistogramVec
	HeapMemory        prometheus.Gauge
	InitialScanReason *prometheus.CounterVec
	HandleKVBatch     prometheus.Histogram
	PendingScans      *prometheus.GaugeVec
	Enabled           prometheus.Counter
}

func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		EventsIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "logbackup_agent_events_total", Help: "Committed changes received from TiKV."}),
		BytesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "logbackup_agent_received_bytes_total", Help: "Key and value bytes of committed changes received."}),
		FileSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "logbackup_agent_flush_file_size_bytes", Help: "Size of each uploaded data object (compressed).",
			Buckets: prometheus.ExponentialBuckets(1024, 4, 12)}),
		Spilled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "logbackup_agent_spills_total", Help: "Times buffered changes spilled to temp files: past the memory quota, or past the process's memory limit."}),
		MemoryWait: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "logbackup_agent_memory_wait_seconds_total", Help: "Time receivers waited for the garbage collector before taking the next message, the process being over its memory limit."}),
		BytesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "logbackup_agent_flushed_bytes_total", Help: "Compressed bytes uploaded to storage."}),
		RegionErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "logbackup_agent_region_errors_total", Help: "Subscriptions ended or started, by reason."}, []string{"reason"}),
		InitialScans: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "logbackup_agent_initial_scans_total", Help: "Region subscriptions (each runs an initial scan), by why they started."}, []string{"reason"}),
		FlushDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "logbackup_agent_flush_duration_seconds", Help: "Flush duration by stage.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}, []string{"stage"}),
		ObservedRegions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "logbackup_agent_observed_regions", Help: "Regions observed, by task."}, []string{"task"}),
		BufferedBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "logbackup_agent_buffered_bytes", Help: "Uncompressed bytes waiting for the next flush, by task."}, []string{"task"}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "logbackup_agent_errors_total", Help: "Errors met, by code (KV:LogBackup:*), retried or not."}, []string{"code"}),
		FatalErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "logbackup_agent_fatal_errors_total", Help: "Errors that paused a task, by code."}, []string{"code"}),
		TaskStatus: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "logbackup_agent_task_status", Help: "0 running, 1 paused, 2 error."}, []string{"task"}),
		Retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "logbackup_agent_retries_total", Help: "Failed flushes that will be retried, by code."}, []string{"code"}),
		AutoResumes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "logbackup_agent_auto_resumes_total", Help: "The coordinator's automatic resumes and their outcomes: resumed, held (the checkpoint passed the resume), failed (paused again first), gave_up."}, []string{"outcome"}),
		RecoveryProbes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "logbackup_agent_recovery_probes_total", Help: "Probes of the dependency a recoverable error names, while its task is paused, by dependency (storage, pd, etcd) and result (ok, failed)."}, []string{"dependency", "result"}),
		StorageRetries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "logbackup_agent_storage_retries_total", Help: "Storage requests retried inside the storage layer, by operation."}, []string{"op"}),
		TimeToRecover: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "logbackup_agent_time_to_recover_seconds", Help: "From an error pause to the automatic resume that ended it.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 16)}),
		AdvancerOwner: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "logbackup_coordinator_foreign_advancer", Help: "1 while another log-backup advancer (TiDB's) owns the cluster's checkpoints; our coordinator then does not write central_global."}, []string{"task"}),
		ForeignWriters: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "logbackup_coordinator_foreign_checkpoint_writers", Help: "Stores that write the task's checkpoints or files without a live agent of ours (TiKV's built-in log backup)."}, []string{"task"}),
		Checkpoints: newCheckpointCollector(),
	}
	m.TiKV = TiKVMetrics{
		TaskStatus: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tikv_log_backup_task_status", Help: "TiKV's name: 0 running, 1 paused, 2 error."}, []string{"task"}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tikv_log_backup_errors", Help: "TiKV's name: errors met, retried or not, by code."}, []string{"type"}),
		FatalErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tikv_log_backup_fatal_errors", Help: "TiKV's name: errors that paused a task, by code."}, []string{"type"}),
		ObservedRegion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tikv_log_backup_observed_region", Help: "TiKV's name: regions being observed."}),
		FlushDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tikv_log_backup_flush_duration_sec", Help: "TiKV's name: flush duration by stage.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 16)}, []string{"stage"}),
		FlushFileSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tikv_log_backup_flush_file_size", Help: "TiKV's name: size of each uploaded data object.",
			Buckets: prometheus.ExponentialBuckets(1024, 2, 20)}),
		UploadFileSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tikv_log_backup_upload_file_size_bytes", Help: "TiKV's name: uploaded bytes per object, by type (log, metadata).",
			Buckets: prometheus.ExponentialBuckets(1024, 2, 20)}, []string{"type"}),
		HeapMemory: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tikv_log_backup_heap_memory", Help: "TiKV's name: bytes buffered in memory."}),
		InitialScanReason: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tikv_log_backup_initial_scan_reason", Help: "TiKV's name: initial scans by reason (leader-changed, region-changed, retry)."}, []string{"reason"}),
		HandleKVBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tikv_log_backup_handle_kv_batch", Help: "TiKV's name: changes per batch received from a region.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 16)}),
		PendingScans: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tikv_log_backup_pending_initial_scan", Help: "TiKV's name: initial scans not yet done, by stage."}, []string{"stage"}),
		Enabled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tikv_log_backup_enabled", Help: "TiKV's name: above 0 once the log backup endpoint (the agent) runs."}),
	}
	m.TiKV.Enabled.Inc()
	if reg != nil {
		reg.MustRegister(m.Errors, m.FatalErrors, m.TaskStatus, m.Retries, m.AutoResumes, m.RecoveryProbes, m.StorageRetries, m.TimeToRecover)
		reg.MustRegister(m.EventsIn, m.BytesIn, m.FileSize, m.Spilled, m.MemoryWait, m.BytesOut, m.RegionErrors, m.InitialScans, m.FlushDuration,
			m.ObservedRegions, m.BufferedBytes, m.AdvancerOwner, m.ForeignWriters, m.Checkpoints)
		t := m.TiKV
		reg.MustRegister(t.TaskStatus, t.Errors, t.FatalErrors, t.ObservedRegion, t.FlushDuration, t.FlushFileSize, t.UploadFileSize,
			t.HeapMemory, t.InitialScanReason, t.HandleKVBatch, t.PendingScans, t.Enabled)
	}
	return m
}

func (m *Metrics) SetTaskStatus(task string, v float64) {
	m.TaskStatus.WithLabelValues(task).Set(v)
	m.TiKV.TaskStatus.WithLabelValues(task).Set(v)
}

func (m *Metrics) DeleteTask(task string) {
	for _, g := range []*prometheus.GaugeVec{m.TaskStatus, m.TiKV.TaskStatus, m.AdvancerOwner, m.ForeignWriters} {
		g.DeleteLabelValues(task)
	}
	m.Checkpoints.Forget(task)
}

func (m *Metrics) CountError(code string) {
	m.Errors.WithLabelValues(code).Inc()
	m.TiKV.Errors.WithLabelValues(code).Inc()
}

func (m *Metrics) CountFatal(code string) {
	m.FatalErrors.WithLabelValues(code).Inc()
	m.TiKV.FatalErrors.WithLabelValues(code).Inc()
}

// FlushStage records a flush stage under our name and TiKV's.
func (m *Metrics) FlushStage(stage string, d time.Duration) {
	m.FlushDuration.WithLabelValues(stage).Observe(d.Seconds())
	m.TiKV.FlushDuration.WithLabelValues(stage).Observe(d.Seconds())
}

// Uploaded records one object written to storage; kind is TiKV's "log" or
// "metadata".
func (m *Metrics) Uploaded(kind string, n int) {
	m.TiKV.UploadFileSize.WithLabelValues(kind).Observe(float64(n))
	if kind == "log" {
		m.BytesOut.Add(float64(n))
		m.FileSize.Observe(float64(n))
		m.TiKV.FlushFileSize.Observe(float64(n))
	}
}

// InitialScan counts a subscription's initial scan by our reason and by
// TiKV's coarser one.
func (m *Metrics) InitialScan(reason string) {
	m.InitialScans.WithLabelValues(reason).Inc()
	tikv := "retry"
	switch reason {
	case "task-start", "leader-gained", "not-leader":
		tikv = "leader-changed"
	case "epoch-not-match", "region-not-found":
		tikv = "region-changed"
	}
	m.TiKV.InitialScanReason.WithLabelValues(tikv).Inc()
}

// CheckpointCollector exports checkpoints as TSOs and the lags derived
// from them at scrape time: a lag computed when a flush succeeds would
// freeze at its last good value exactly when flushes keep failing.
type CheckpointCollector struct {
	storeTS, globalTS, storeLag, globalLag, gcSafePoint *prometheus.Desc

	mu     sync.Mutex
	store  map[string]uint64 // task → this store's checkpoint
	global map[string]uint64 // task → global checkpoint, on the coordinator
	gc     uint64            // PD's GC safepoint, on the coordinator (0: unknown)
	now    func() time.Time
}

func newCheckpointCollector() *CheckpointCollector {
	return &CheckpointCollector{
		storeTS: prometheus.NewDesc("tikv_log_backup_store_checkpoint_ts",
			"TiKV's name: the store's checkpoint TSO, by task.", []string{"task"}, nil),
		globalTS: prometheus.NewDesc("tidb_log_backup_last_checkpoint",
			"TiDB's advancer name: the task's global checkpoint TSO (exported by the elected coordinator only).", []string{"task"}, nil),
		storeLag: prometheus.NewDesc("logbackup_agent_checkpoint_lag_seconds",
			"Now minus the store checkpoint, by task, computed at scrape time.", []string{"task"}, nil),
		globalLag: prometheus.NewDesc("logbackup_agent_global_checkpoint_lag_seconds",
			"Now minus the task's global checkpoint, computed at scrape time (exported by the elected coordinator only); it keeps growing while the checkpoint cannot advance.", []string{"task"}, nil),
		// TiKV's GC worker exports PD's safepoint under this name; the
		// coordinator exports what PD told it, so PingCAP's "GC safepoint
		// exceeds checkpoint" alert evaluates on one instance's series.
		gcSafePoint: prometheus.NewDesc("tikv_gcworker_autogc_safe_point",
			"PD's GC safepoint as the coordinator last read it (TiKV's GC worker's name).", nil, nil),
		store: map[string]uint64{}, global: map[string]uint64{}, now: time.Now,
	}
}

func (c *CheckpointCollector) SetStore(task string, ts uint64) {
	c.mu.Lock()
	c.store[task] = max(c.store[task], ts)
	c.mu.Unlock()
}

// ReplaceGlobal sets every task's global checkpoint at once: tasks gone
// since the last call disappear.
func (c *CheckpointCollector) ReplaceGlobal(global map[string]uint64) {
	c.mu.Lock()
	c.global = global
	c.mu.Unlock()
}

func (c *CheckpointCollector) SetGCSafePoint(ts uint64) {
	c.mu.Lock()
	c.gc = ts
	c.mu.Unlock()
}

// ForgetGlobal drops what only the coordinator exports (it lost its
// election).
func (c *CheckpointCollector) ForgetGlobal() {
	c.mu.Lock()
	c.global, c.gc = map[string]uint64{}, 0
	c.mu.Unlock()
}

func (c *CheckpointCollector) ForgetStore(task string) {
	c.mu.Lock()
	delete(c.store, task)
	c.mu.Unlock()
}

func (c *CheckpointCollector) Forget(task string) {
	c.mu.Lock()
	delete(c.store, task)
	delete(c.global, task)
	c.mu.Unlock()
}

func (c *CheckpointCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.storeTS
	ch <- c.globalTS
	ch <- c.storeLag
	ch <- c.globalLag
	ch <- c.gcSafePoint
}

func (c *CheckpointCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	for task, ts := range c.store {
		ch <- prometheus.MustNewConstMetric(c.storeTS, prometheus.GaugeValue, float64(ts), task)
		ch <- prometheus.MustNewConstMetric(c.storeLag, prometheus.GaugeValue, now.Sub(oracle.GetTimeFromTS(ts)).Seconds(), task)
	}
	for task, ts := range c.global {
		ch <- prometheus.MustNewConstMetric(c.globalTS, prometheus.GaugeValue, float64(ts), task)
		ch <- prometheus.MustNewConstMetric(c.globalLag, prometheus.GaugeValue, now.Sub(oracle.GetTimeFromTS(ts)).Seconds(), task)
	}
	if c.gc > 0 {
		ch <- prometheus.MustNewConstMetric(c.gcSafePoint, prometheus.GaugeValue, float64(c.gc))
	}
}

// Task status gauge values, as TiKV's tikv_log_backup_task_status.
const (
	StatusRunning = 0
	StatusPaused  = 1
	StatusError   = 2
)
