package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pingcap/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tikv/client-go/v2/txnkv/transaction"
	pd "github.com/tikv/pd/client"
	"go.uber.org/zap/zapcore"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/streamagent"
	"logbackup/tests/etcdtest"
	"logbackup/tests/eventually"
	"logbackup/tests/s3test"
	"logbackup/tests/simcluster"
)

type benchEnv struct {
	c     *simcluster.Cluster
	pd    pd.Client // the real pd client, over gRPC to the simulated PD
	m     *meta.Client
	start uint64
}

// setupBench starts one store holding `regions` regions, in the deployed
// shape: PD and its etcd served on one address, reached with the real pd
// and etcd clients (mocktikv's in-process PD client sorts and clones every
// region per scan), and a task "bench" to file storage.
func setupBench(b testing.TB, regions int) *benchEnv {
	log.SetLevel(zapcore.ErrorLevel)
	ctx := context.Background()
	var splits [][]byte
	for i := 1; i < regions; i++ {
		splits = append(splits, []byte(fmt.Sprintf("t%06d", i)))
	}
	c := startPDCluster(b, ctx, simcluster.Config{Stores: 1, SplitKeys: splits})
	m := meta.NewClient(pdEtcd{c}.Client(b))
	pdc, err := meta.DialPD(ctx, meta.DialConfig{Endpoints: []string{c.PDAddr()}, DialTimeout: 30 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pdc.Close)
	start, _ := c.TSO(ctx)
	if err := br.Start(ctx, br.NewEnv(m).WithPD(pdc), br.StartOptions{TaskName: "bench", StartTS: fmt.Sprint(start), Storage: "local://" + b.TempDir()}, io.Discard); err != nil {
		b.Fatal(err)
	}
	return &benchEnv{c: c, pd: pdc, m: m, start: start}
}

func (e *benchEnv) agent(b testing.TB, flush time.Duration) (*streamagent.Agent, func()) {
	a, err := streamagent.New(streamagent.Config{StoreID: e.c.StoreIDs()[0], PD: e.pd, Meta: e.m, ClusterID: e.c.ClusterID(),
		FlushInterval: flush, ReconcileInterval: time.Hour, CoordinatorInterval: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	return a, func() { cancel(); <-done }
}

// BenchmarkObserveRegions: from an agent's start (or a resume) until it
// has found every region of its store through PD (paged), registered each
// on its EventFeed and seen every initial scan finish; and the heap that
// costs per observed region (the agent's subscription, matcher and span
// state, plus the simulated store's side of each subscription).
//
//	go test -run '^$' -bench ObserveRegions -benchtime 1x ./tests/e2e/
func BenchmarkObserveRegions(b *testing.B) {
	for _, n := range []int{10000, 100000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			e := setupBench(b, n)
			for i := 0; i < b.N; i++ {
				runtime.GC()
				var before runtime.MemStats
				runtime.ReadMemStats(&before)
				began := time.Now()
				a, stop := e.agent(b, time.Hour)
				var observed time.Duration
				eventually.TrueEvery(b, 10*time.Minute, 5*time.Millisecond, func() bool {
					st := a.Status()
					if len(st.Tasks) != 1 || st.Tasks[0].ObservedRegions < int64(n) {
						return false
					}
					if observed == 0 {
						observed = time.Since(began)
					}
					return st.Tasks[0].PendingRanges == 0 && st.Tasks[0].Scanning == 0
				}, "every one of %d regions observed and scanned", n)
				ready := time.Since(began)
				runtime.GC()
				var after runtime.MemStats
				runtime.ReadMemStats(&after)
				stop()
				b.ReportMetric(observed.Seconds(), "s-to-register")
				b.ReportMetric(ready.Seconds(), "s-to-scanned")
				b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(n), "heap-B/region")
			}
		})
	}
}

// BenchmarkEndToEnd: one agent, 10 regions, transactions of 64 rows; rows
// per second until the global checkpoint covers the last commit, and the
// lag between the last commit and that checkpoint.
func BenchmarkEndToEnd(b *testing.B) {
	e := setupBench(b, 10)
	_, stop := e.agent(b, time.Second)
	defer stop()
	ctx := context.Background()
	value := make([]byte, 100)
	const rowsPerTxn = 64
	b.ResetTimer()
	began := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := e.c.Txn(ctx, func(txn *transaction.KVTxn) error {
			for k := 0; k < rowsPerTxn; k++ {
				if err := txn.Set([]byte(fmt.Sprintf("t%06d", (i*rowsPerTxn+k)%10000)), value); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	last, _ := e.c.TSO(ctx)
	committedAt := time.Now()
	eventually.TrueEvery(b, 10*time.Minute, 5*time.Millisecond, func() bool {
		g, ok, _ := e.m.GlobalCheckpoint(ctx, "bench")
		return ok && g >= last
	}, "the global checkpoint to cover the last commit")
	b.ReportMetric(float64(b.N*rowsPerTxn)/time.Since(began).Seconds(), "rows/s")
	b.ReportMetric(time.Since(committedAt).Seconds(), "s-checkpoint-lag")
}

// BenchmarkBurstMemory: a burst of writes much larger than the memory
// quota (1 MiB) into one agent that does not flush during it: the bytes
// held in memory stay bounded by the quota while the rest spills to disk.
func BenchmarkBurstMemory(b *testing.B) {
	e := setupBench(b, 4)
	reg := prometheus.NewRegistry()
	a, err := streamagent.New(streamagent.Config{StoreID: e.c.StoreIDs()[0], PD: e.pd, Meta: e.m, ClusterID: e.c.ClusterID(),
		FlushInterval: time.Hour, MemoryQuota: 1 << 20, TempDir: b.TempDir(), ReconcileInterval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, reg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	value := make([]byte, 1000)
	var peakMem, peakBuf int64
	sample := func() {
		for _, t := range a.Status().Tasks {
			peakMem, peakBuf = max(peakMem, t.MemoryBytes), max(peakBuf, t.BufferedBytes)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := e.c.Txn(context.Background(), func(txn *transaction.KVTxn) error {
			for k := 0; k < 256; k++ {
				if err := txn.Set([]byte(fmt.Sprintf("t%06d", (i*256+k)%100000)), value); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		sample()
	}
	// Every row taken in, then sample once more.
	eventually.True(b, time.Minute, func() bool {
		return metricSum(b, reg, "logbackup_agent_events_total") >= float64(b.N*256)
	}, "all %d rows to reach the agent", b.N*256)
	sample()
	b.ReportMetric(float64(peakMem)/(1<<20), "MiB-peak-in-memory")
	b.ReportMetric(float64(peakBuf)/(1<<20), "MiB-buffered")
}

// BenchmarkFatalToPause: from a flush that meets a fatal storage error
// (access denied) to the LastError and the ERROR pause being visible in
// etcd.
func BenchmarkFatalToPause(b *testing.B) {
	log.SetLevel(zapcore.ErrorLevel)
	ctx := context.Background()
	etcd := etcdtest.Start(b)
	m := meta.NewClient(etcd.Client(b))
	c, err := simcluster.Start(ctx, simcluster.Config{Stores: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	s3 := s3test.Start(b, "bk")
	start, _ := c.TSO(ctx)
	if err := br.Start(ctx, br.NewEnv(m).WithPD(c.PD()), br.StartOptions{TaskName: "bench", StartTS: fmt.Sprint(start), Storage: s3.URL("bk", "log")}, io.Discard); err != nil {
		b.Fatal(err)
	}
	a, err := streamagent.New(streamagent.Config{StoreID: c.StoreIDs()[0], PD: c.PD(), Meta: m, ClusterID: c.ClusterID(),
		FlushInterval: time.Hour, AutoResume: streamagent.AutoResume{Disabled: true}, TempDir: b.TempDir(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, nil)
	if err != nil {
		b.Fatal(err)
	}
	actx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); a.Run(actx) }()
	defer func() { stop(); <-done }()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		eventually.True(b, time.Minute, func() bool { return len(a.Testing().Tasks()) > 0 }, "the task running again after the previous round's resume")
		c.Put(ctx, []byte(fmt.Sprintf("t%d", i)), []byte("v"))
		s3.SetFault(s3test.Fault{Status: 403, Remaining: -1, Match: func(r *http.Request) bool { return r.Method == http.MethodPut }})
		began := time.Now()
		a.Testing().FlushWithAllRegionCheckpoints(ctx)
		eventually.TrueEvery(b, time.Minute, 100*time.Microsecond, func() bool {
			st, _ := m.GetTask(ctx, "bench")
			le, _ := m.LastErrors(ctx, "bench")
			return st != nil && st.Pause.V2.IsError() && len(le) > 0
		}, "the LastError and the ERROR pause")
		total += time.Since(began)
		s3.ClearFault()
		m.ClearLastErrors(ctx, "bench")
		m.ResumeTask(ctx, "bench")
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms-to-pause")
}

// BenchmarkResumeObserve10K: from `resume` until the agent observes all
// 10,000 regions of its store again.
func BenchmarkResumeObserve10K(b *testing.B) {
	e := setupBench(b, 10000)
	a, stop := e.agent(b, time.Hour)
	defer stop()
	ctx := context.Background()
	observed := func() int64 {
		for _, t := range a.Status().Tasks {
			return t.ObservedRegions
		}
		return 0
	}
	eventually.True(b, 10*time.Minute, func() bool { return observed() >= 10000 }, "all 10,000 regions observed")
	var total time.Duration
	for i := 0; i < b.N; i++ {
		if err := e.m.PauseTask(ctx, "bench", nil); err != nil {
			b.Fatal(err)
		}
		eventually.True(b, time.Minute, func() bool { return len(a.Testing().Tasks()) == 0 }, "the pause to stop the task")
		began := time.Now()
		if err := e.m.ResumeTask(ctx, "bench"); err != nil {
			b.Fatal(err)
		}
		eventually.TrueEvery(b, 10*time.Minute, time.Millisecond, func() bool { return observed() >= 10000 }, "all 10,000 regions observed again")
		total += time.Since(began)
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "s-to-observe")
}

// BenchmarkAgentThroughput measures one agent, not the writer in front of
// it: the simulated cluster's bulk writer commits b.N rows straight into
// its ledger and CDC streams (well over the agent's pace), and the clock
// stops when the global checkpoint covers the last commit. rows/s and MB/s
// (key and value bytes) are end to end through intake, matching,
// buffering, compression, upload and checkpoints; writer-rows/s shows the
// source was not the bound. Flush interval 1 s, default memory quota.
//
//	go test -run '^$' -bench AgentThroughput -benchtime 300000x ./tests/e2e/
func BenchmarkAgentThroughput(b *testing.B) {
	for _, value := range []int{100, 1024} {
		for _, regions := range []int{16, 10000} {
			for _, where := range []string{"local", "s3"} {
				b.Run(fmt.Sprintf("value=%d/regions=%d/%s", value, regions, where), func(b *testing.B) {
					benchThroughput(b, value, regions, where, 0)
				})
			}
		}
	}
}

func benchThroughput(b *testing.B, value, regions int, where string, rate int) (rowsPerSec float64) {
	log.SetLevel(zapcore.ErrorLevel)
	ctx := context.Background()
	c := startPDCluster(b, ctx, simcluster.Config{Stores: 1})
	m := meta.NewClient(pdEtcd{c}.Client(b))
	w, err := c.NewBulkWriter(simcluster.BulkConfig{Keys: simcluster.KeysTiDBRow, Regions: regions, Split: true, ValueSize: value, Rate: rate})
	if err != nil {
		b.Fatal(err)
	}
	url := "local://" + b.TempDir()
	if where == "s3" {
		url = s3test.Start(b, "bk").URL("bk", "log")
	}
	start, _ := c.TSO(ctx)
	if err := br.Start(ctx, br.NewEnv(m).WithPD(c.PD()), br.StartOptions{TaskName: "bench", StartTS: fmt.Sprint(start), Storage: url}, io.Discard); err != nil {
		b.Fatal(err)
	}
	a, err := streamagent.New(streamagent.Config{StoreID: c.StoreIDs()[0], PD: c.PD(), Meta: m, ClusterID: c.ClusterID(),
		FlushInterval: time.Second, ReconcileInterval: time.Hour, CoordinatorInterval: 200 * time.Millisecond, TempDir: b.TempDir(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, nil)
	if err != nil {
		b.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); a.Run(actx) }()
	defer func() { cancel(); <-done }()
	// Every region observed before the clock starts.
	eventually.True(b, 2*time.Minute, func() bool {
		st := a.Status()
		return len(st.Tasks) == 1 && st.Tasks[0].ObservedRegions >= int64(regions)
	}, "the agent to observe %d regions", regions)
	b.ResetTimer()
	stopProfile := profileMeasured(b)
	began := time.Now()
	cpu := processCPU(b)
	st, err := w.Write(ctx, int64(b.N))
	if err != nil {
		b.Fatal(err)
	}
	last, _ := c.TSO(ctx)
	wrote := time.Now()
	waitCovered(b, m, last)
	elapsed := time.Since(began)
	b.StopTimer()
	stopProfile()
	rowsPerSec = float64(st.Rows) / elapsed.Seconds()
	b.ReportMetric(rowsPerSec, "rows/s")
	b.ReportMetric(float64(st.Bytes)/elapsed.Seconds()/1e6, "MB/s")
	b.ReportMetric(float64(st.Rows)/st.Elapsed.Seconds(), "writer-rows/s")
	b.ReportMetric(time.Since(wrote).Seconds(), "s-catch-up")
	// CPU per row is steadier than wall rates on a shared machine; it
	// includes the simulator's side (BenchmarkBulkEventFeed in
	// tests/simcluster measures that alone).
	b.ReportMetric(float64(processCPU(b)-cpu)/float64(st.Rows), "cpu-ns/row")
	return rowsPerSec
}

// profileMeasured starts a CPU profile of the measured section alone when
// LOGBACKUP_BENCH_CPUPROFILE names a directory (go test's -cpuprofile also
// takes in the set-up: splitting 10,000 regions, starting the cluster),
// written to <dir>/<benchmark name>.cpu; summarize it with
// `go run ./tests/profsummary FILE`.
func profileMeasured(b *testing.B) (stop func()) {
	dir := os.Getenv("LOGBACKUP_BENCH_CPUPROFILE")
	if dir == "" {
		return func() {}
	}
	name := strings.NewReplacer("/", "_", "=", "").Replace(b.Name()) + ".cpu"
	f, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		b.Fatalf("%v (is -cpuprofile set too?)", err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			b.Error(err)
		}
	}
}

// processCPU is the process's CPU time so far (user + system).
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkCatchUp compares the agent's two ways of receiving the same
// rows, in one run: path=live is BenchmarkAgentThroughput's 1 KiB × 16
// regions run (rows committed while the agent watches), path=scan
// preloads b.N rows before the task's start ts, starts the agent only
// then, and measures from the first row it takes in (they come through
// EventFeed's initial scan) until the global checkpoint covers the last
// commit — the catch-up after a pause, an outage or a start from an
// earlier ts. cpu-ns/row is the process's CPU over the measured section.
//
//	go test -run '^$' -bench 'CatchUp' -benchtime 200000x ./tests/e2e/
func BenchmarkCatchUp(b *testing.B) {
	b.Run("path=live", func(b *testing.B) { benchThroughput(b, 1024, 16, "local", 0) })
	b.Run("path=scan", func(b *testing.B) { benchCatchUp(b, 1024, 16) })
}

func benchCatchUp(b *testing.B, value, regions int) {
	log.SetLevel(zapcore.ErrorLevel)
	ctx := context.Background()
	c := startPDCluster(b, ctx, simcluster.Config{Stores: 1})
	m := meta.NewClient(pdEtcd{c}.Client(b))
	w, err := c.NewBulkWriter(simcluster.BulkConfig{Keys: simcluster.KeysTiDBRow, Regions: regions, Split: true, ValueSize: value})
	if err != nil {
		b.Fatal(err)
	}
	start, _ := c.TSO(ctx)
	st, err := w.Write(ctx, int64(b.N))
	if err != nil {
		b.Fatal(err)
	}
	last, _ := c.TSO(ctx)
	if err := br.Start(ctx, br.NewEnv(m).WithPD(c.PD()), br.StartOptions{TaskName: "bench", StartTS: fmt.Sprint(start), Storage: "local://" + b.TempDir()}, io.Discard); err != nil {
		b.Fatal(err)
	}
	runtime.GC() // the preload's garbage is not the agent's
	a, err := streamagent.New(streamagent.Config{StoreID: c.StoreIDs()[0], PD: c.PD(), Meta: m, ClusterID: c.ClusterID(),
		FlushInterval: time.Second, ReconcileInterval: time.Hour, CoordinatorInterval: 200 * time.Millisecond, TempDir: b.TempDir(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	actx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	agentStart := time.Now()
	go func() { defer close(done); a.Run(actx) }()
	defer func() { cancel(); <-done }()
	// The clock starts at the first row taken in: before it the agent
	// finds its task and registers its regions, which BenchmarkObserveRegions
	// measures.
	eventually.TrueEvery(b, 2*time.Minute, 200*time.Microsecond, func() bool {
		s := a.Status()
		return len(s.Tasks) == 1 && s.Tasks[0].BufferedBytes > 0
	}, "the agent to take in its first row")
	stopProfile := profileMeasured(b)
	began := time.Now()
	cpu := processCPU(b)
	waitCovered(b, m, last)
	elapsed := time.Since(began)
	b.StopTimer()
	stopProfile()
	b.ReportMetric(float64(st.Rows)/elapsed.Seconds(), "rows/s")
	b.ReportMetric(float64(st.Bytes)/elapsed.Seconds()/1e6, "MB/s")
	b.ReportMetric(began.Sub(agentStart).Seconds(), "s-to-first-row")
	b.ReportMetric(float64(processCPU(b)-cpu)/float64(st.Rows), "cpu-ns/row")
}

// waitCovered waits for the global checkpoint of task bench to cover last,
// polling every 10 ms as the throughput benchmarks always have; a
// LastError ends the benchmark at once.
func waitCovered(b *testing.B, m *meta.Client, last uint64) {
	b.Helper()
	eventually.TrueEvery(b, 10*time.Minute, 10*time.Millisecond, func() bool {
		if g, ok, _ := m.GlobalCheckpoint(b.Context(), "bench"); ok && g >= last {
			return true
		}
		if errs, _ := m.LastErrors(b.Context(), "bench"); len(errs) > 0 {
			b.Fatalf("the task stopped with an error: %v", errs)
		}
		return false
	}, "the checkpoint to cover the last commit")
}
