package streamagent

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tikv/client-go/v2/oracle"
)

// metrics are registered on the registry the caller injects; nothing is
// global, so tests and several agents in one process do not collide.
//
// Two families: our own logbackup_agent_* series, and the series TiKV's
// built-in log backup (tikv_log_backup_*) and TiDB's advancer
// (tidb_log_backup_last_checkpoint) export, with the same names, labels and
// meaning, so PingCAP's documented alerts and TiKV's "Backup Log" dashboard
// work on the agents unchanged (docs/METRICS.md lists both).
type metrics struct {
	eventsIn        prometheus.Counter
	bytesIn         prometheus.Counter
	fileSize        prometheus.Histogram
	spilled         prometheus.Counter
	bytesOut        prometheus.Counter
	regionErrors    *prometheus.CounterVec
	initialScans    *prometheus.CounterVec
	flushDuration   *prometheus.HistogramVec
	observedRegions *prometheus.GaugeVec
	bufferedBytes   *prometheus.GaugeVec
	errors          *prometheus.CounterVec
	fatalErrors     *prometheus.CounterVec
	taskStatus      *prometheus.GaugeVec
	retries         *prometheus.CounterVec
	autoResumes     *prometheus.CounterVec
	recoveryProbes  *prometheus.CounterVec // by dependency and result
	storageRetries  *prometheus.CounterVec
	timeToRecover   prometheus.Histogram
	advancerOwner   *prometheus.GaugeVec // by task: 1 when a foreign advancer owns it
	foreignWriters  *prometheus.GaugeVec // by task: stores writing checkpoints without our agent

	// checkpoints are each task's store checkpoint on this agent and, on
	// the coordinator, its global checkpoint; lags are derived from them at
	// scrape time, so they keep growing while flushes fail.
	checkpoints *checkpointCollector

	tikv tikvMetrics
}

// tikvMetrics are TiKV's and TiDB's names for what the agent does.
type tikvMetrics struct {
	taskStatus        *prometheus.GaugeVec
	errors            *prometheus.CounterVec
	fatalErrors       *prometheus.CounterVec
	observedRegion    prometheus.Gauge
	flushDuration     *prometheus.HistogramVec
	flushFileSize     prometheus.Histogram
	uploadFileSize    *prometheus.HistogramVec
	heapMemory        prometheus.Gauge
	initialScanReason *prometheus.CounterVec
	handleKVBatch     prometheus.Histogram
	pendingScans      *prometheus.GaugeVec
	enabled           prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		eventsIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "logbackup_agent_events_total", Help: "Committed changes received from TiKV."}),
		bytesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "logbackup_agent_received_bytes_total", Help: "Key and value bytes of committed changes received."}),
		fileSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "logbackup_agent_flush_file_size_bytes", Help: "Size of each uploaded data object (compressed).",
			Buckets: prometheus.ExponentialBuckets(1024, 4, 12)}),
		spilled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "logbackup_agent_spills_total", Help: "Times buffered changes went over the memory quota and spilled to temp files."}),
		bytesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "logbackup_agent_flushed_bytes_total", Help: "Compressed bytes uploaded to storage."}),
		regionErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "logbackup_agent_region_errors_total", Help: "Subscriptions ended or started, by reason."}, []string{"reason"}),
		initialScans: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "logbackup_agent_initial_scans_total", Help: "Region subscriptions (each runs an initial scan), by why they started."}, []string{"reason"}),
		flushDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "logbackup_agent_flush_duration_seconds", Help: "Flush duration by stage.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}, []string{"stage"}),
		observedRegions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "logbackup_agent_observed_regions", Help: "Regions observed, by task."}, []string{"task"}),
		bufferedBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "logbackup_agent_buffered_bytes", Help: "Uncompressed bytes waiting for the next flush, by task."}, []string{"task"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "logbackup_agent_errors_total", Help: "Errors met, by code (KV:LogBackup:*), retried or not."}, []string{"code"}),
		fatalErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "logbackup_agent_fatal_errors_total", Help: "Errors that paused a task, by code."}, []string{"code"}),
		taskStatus: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "logbackup_agent_task_status", Help: "0 running, 1 paused, 2 error."}, []string{"task"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "logbackup_agent_retries_total", Help: "Failed flushes that will be retried, by code."}, []string{"code"}),
		autoResumes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "logbackup_agent_auto_resumes_total", Help: "The coordinator's automatic resumes and their outcomes: resumed, held (the checkpoint passed the resume), failed (paused again first), gave_up."}, []string{"outcome"}),
		recoveryProbes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "logbackup_agent_recovery_probes_total", Help: "Probes of the dependency a recoverable error names, while its task is paused, by dependency (storage, pd, etcd) and result (ok, failed)."}, []string{"dependency", "result"}),
		storageRetries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "logbackup_agent_storage_retries_total", Help: "Storage requests retried inside the storage layer, by operation."}, []string{"op"}),
		timeToRecover: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "logbackup_agent_time_to_recover_seconds", Help: "From an error pause to the automatic resume that ended it.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 16)}),
		advancerOwner: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "logbackup_coordinator_foreign_advancer", Help: "1 while another log-backup advancer (TiDB's) owns the cluster's checkpoints; our coordinator then does not write central_global."}, []string{"task"}),
		foreignWriters: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "logbackup_coordinator_foreign_checkpoint_writers", Help: "Stores that write the task's checkpoints or files without a live agent of ours (TiKV's built-in log backup)."}, []string{"task"}),
		checkpoints: newCheckpointCollector(),
	}
	m.tikv = tikvMetrics{
		taskStatus: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tikv_log_backup_task_status", Help: "TiKV's name: 0 running, 1 paused, 2 error."}, []string{"task"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tikv_log_backup_errors", Help: "TiKV's name: errors met, retried or not, by code."}, []string{"type"}),
		fatalErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tikv_log_backup_fatal_errors", Help: "TiKV's name: errors that paused a task, by code."}, []string{"type"}),
		observedRegion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tikv_log_backup_observed_region", Help: "TiKV's name: regions being observed."}),
		flushDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tikv_log_backup_flush_duration_sec", Help: "TiKV's name: flush duration by stage.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 16)}, []string{"stage"}),
		flushFileSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tikv_log_backup_flush_file_size", Help: "TiKV's name: size of each uploaded data object.",
			Buckets: prometheus.ExponentialBuckets(1024, 2, 20)}),
		uploadFileSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tikv_log_backup_upload_file_size_bytes", Help: "TiKV's name: uploaded bytes per object, by type (log, metadata).",
			Buckets: prometheus.ExponentialBuckets(1024, 2, 20)}, []string{"type"}),
		heapMemory: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tikv_log_backup_heap_memory", Help: "TiKV's name: bytes buffered in memory."}),
		initialScanReason: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tikv_log_backup_initial_scan_reason", Help: "TiKV's name: initial scans by reason (leader-changed, region-changed, retry)."}, []string{"reason"}),
		handleKVBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tikv_log_backup_handle_kv_batch", Help: "TiKV's name: changes per batch received from a region.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 16)}),
		pendingScans: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tikv_log_backup_pending_initial_scan", Help: "TiKV's name: initial scans not yet done, by stage."}, []string{"stage"}),
		enabled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tikv_log_backup_enabled", Help: "TiKV's name: above 0 once the log backup endpoint (the agent) runs."}),
	}
	m.tikv.enabled.Inc()
	if reg != nil {
		reg.MustRegister(m.errors, m.fatalErrors, m.taskStatus, m.retries, m.autoResumes, m.recoveryProbes, m.storageRetries, m.timeToRecover)
		reg.MustRegister(m.eventsIn, m.bytesIn, m.fileSize, m.spilled, m.bytesOut, m.regionErrors, m.initialScans, m.flushDuration,
			m.observedRegions, m.bufferedBytes, m.advancerOwner, m.foreignWriters, m.checkpoints)
		t := m.tikv
		reg.MustRegister(t.taskStatus, t.errors, t.fatalErrors, t.observedRegion, t.flushDuration, t.flushFileSize, t.uploadFileSize,
			t.heapMemory, t.initialScanReason, t.handleKVBatch, t.pendingScans, t.enabled)
	}
	return m
}

func (m *metrics) setTaskStatus(task string, v float64) {
	m.taskStatus.WithLabelValues(task).Set(v)
	m.tikv.taskStatus.WithLabelValues(task).Set(v)
}

func (m *metrics) deleteTask(task string) {
	for _, g := range []*prometheus.GaugeVec{m.taskStatus, m.tikv.taskStatus, m.advancerOwner, m.foreignWriters} {
		g.DeleteLabelValues(task)
	}
	m.checkpoints.forget(task)
}

func (m *metrics) countError(code string) {
	m.errors.WithLabelValues(code).Inc()
	m.tikv.errors.WithLabelValues(code).Inc()
}

func (m *metrics) countFatal(code string) {
	m.fatalErrors.WithLabelValues(code).Inc()
	m.tikv.fatalErrors.WithLabelValues(code).Inc()
}

// flushStage records a flush stage under our name and TiKV's.
func (m *metrics) flushStage(stage string, d time.Duration) {
	m.flushDuration.WithLabelValues(stage).Observe(d.Seconds())
	m.tikv.flushDuration.WithLabelValues(stage).Observe(d.Seconds())
}

// uploaded records one object written to storage; kind is TiKV's "log" or
// "metadata".
func (m *metrics) uploaded(kind string, n int) {
	m.tikv.uploadFileSize.WithLabelValues(kind).Observe(float64(n))
	if kind == "log" {
		m.bytesOut.Add(float64(n))
		m.fileSize.Observe(float64(n))
		m.tikv.flushFileSize.Observe(float64(n))
	}
}

// initialScan counts a subscription's initial scan by our reason and by
// TiKV's coarser one.
func (m *metrics) initialScan(reason string) {
	m.initialScans.WithLabelValues(reason).Inc()
	tikv := "retry"
	switch reason {
	case "task-start", "leader-gained", "not-leader":
		tikv = "leader-changed"
	case "epoch-not-match", "region-not-found":
		tikv = "region-changed"
	}
	m.tikv.initialScanReason.WithLabelValues(tikv).Inc()
}

// checkpointCollector exports checkpoints as TSOs and the lags derived
// from them at scrape time: a lag computed when a flush succeeds would
// freeze at its last good value exactly when flushes keep failing.
type checkpointCollector struct {
	storeTS, globalTS, storeLag, globalLag, gcSafePoint *prometheus.Desc

	mu     sync.Mutex
	store  map[string]uint64 // task → this store's checkpoint
	global map[string]uint64 // task → global checkpoint, on the coordinator
	gc     uint64            // PD's GC safepoint, on the coordinator (0: unknown)
	now    func() time.Time
}

func newCheckpointCollector() *checkpointCollector {
	return &checkpointCollector{
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

func (c *checkpointCollector) setStore(task string, ts uint64) {
	c.mu.Lock()
	c.store[task] = max(c.store[task], ts)
	c.mu.Unlock()
}

// replaceGlobal sets every task's global checkpoint at once: tasks gone
// since the last call disappear.
func (c *checkpointCollector) replaceGlobal(global map[string]uint64) {
	c.mu.Lock()
	c.global = global
	c.mu.Unlock()
}

func (c *checkpointCollector) setGCSafePoint(ts uint64) {
	c.mu.Lock()
	c.gc = ts
	c.mu.Unlock()
}

// forgetGlobal drops what only the coordinator exports (it lost its
// election).
func (c *checkpointCollector) forgetGlobal() {
	c.mu.Lock()
	c.global, c.gc = map[string]uint64{}, 0
	c.mu.Unlock()
}

func (c *checkpointCollector) forgetStore(task string) {
	c.mu.Lock()
	delete(c.store, task)
	c.mu.Unlock()
}

func (c *checkpointCollector) forget(task string) {
	c.mu.Lock()
	delete(c.store, task)
	delete(c.global, task)
	c.mu.Unlock()
}

func (c *checkpointCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.storeTS
	ch <- c.globalTS
	ch <- c.storeLag
	ch <- c.globalLag
	ch <- c.gcSafePoint
}

func (c *checkpointCollector) Collect(ch chan<- prometheus.Metric) {
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
