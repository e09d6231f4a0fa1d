package streamagent

import "github.com/prometheus/client_golang/prometheus"

// metrics are registered on the registry the caller injects; nothing is
// global, so tests and several agents in one process do not collide.
type metrics struct {
	eventsIn          prometheus.Counter
	bytesIn           prometheus.Counter
	fileSize          prometheus.Histogram
	spilled           prometheus.Counter
	bytesOut          prometheus.Counter
	regionErrors      *prometheus.CounterVec
	initialScans      *prometheus.CounterVec
	flushDuration     *prometheus.HistogramVec
	observedRegions   *prometheus.GaugeVec
	bufferedBytes     *prometheus.GaugeVec
	checkpointLagSecs *prometheus.GaugeVec
	errors            *prometheus.CounterVec
	fatalErrors       *prometheus.CounterVec
	taskStatus        *prometheus.GaugeVec
	retries           *prometheus.CounterVec
	autoResumes       *prometheus.CounterVec
	storageRetries    *prometheus.CounterVec
	timeToRecover     prometheus.Histogram
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
		checkpointLagSecs: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "logbackup_agent_checkpoint_lag_seconds", Help: "Now minus the store checkpoint, by task."}, []string{"task"}),
	}
	m.errors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "logbackup_agent_errors_total", Help: "Errors met, by code (KV:LogBackup:*), retried or not."}, []string{"code"})
	m.fatalErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "logbackup_agent_fatal_errors_total", Help: "Errors that paused a task, by code."}, []string{"code"})
	m.taskStatus = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "logbackup_agent_task_status", Help: "0 running, 1 paused, 2 error."}, []string{"task"})
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "logbackup_agent_retries_total", Help: "Failed flushes that will be retried, by code."}, []string{"code"})
	m.autoResumes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "logbackup_agent_auto_resumes_total", Help: "Automatic resume attempts by the coordinator, by outcome (resumed, failed)."}, []string{"outcome"})
	m.storageRetries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "logbackup_agent_storage_retries_total", Help: "Storage requests retried inside the storage layer, by operation."}, []string{"op"})
	m.timeToRecover = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "logbackup_agent_time_to_recover_seconds", Help: "From an error pause to the automatic resume that ended it.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 16)})
	if reg != nil {
		reg.MustRegister(m.errors, m.fatalErrors, m.taskStatus, m.retries, m.autoResumes, m.storageRetries, m.timeToRecover)
		reg.MustRegister(m.eventsIn, m.bytesIn, m.fileSize, m.spilled, m.bytesOut, m.regionErrors, m.initialScans, m.flushDuration, m.observedRegions, m.bufferedBytes, m.checkpointLagSecs)
	}
	return m
}
