package e2e

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pingcap/log"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zapcore"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/streamagent"
	"logbackup/tests/eventually"
	"logbackup/tests/simcluster"
)

// BenchmarkManyRegions: one agent, 1 KiB rows scattered over N regions, at
// flush intervals an operator would run (TiKV's default is 3 minutes).
// Reported over the measured section (the writer's first commit until the
// global checkpoint covers its last): rows/s end to end; intake-rows/s
// until the agent has taken every row in (its own events counter), which
// a long flush interval does not bound; the process's CPU per row and
// peak RSS (agent and simulator together, the simulator's ledger
// included); etcd writes a minute (the revision's advance: every write of
// anyone, the agent's checkpoints most of it); objects a flush (data
// files over metadata files in storage).
//
//	go test -run '^$' -bench 'ManyRegions/regions=10000/flush=10s' -benchtime 1000000x -timeout 30m ./tests/e2e/
func BenchmarkManyRegions(b *testing.B) {
	for _, regions := range []int{10000, 100000} {
		for _, flush := range []time.Duration{10 * time.Second, 3 * time.Minute} {
			b.Run(fmt.Sprintf("regions=%d/flush=%s", regions, flush), func(b *testing.B) {
				benchManyRegions(b, regions, flush)
			})
		}
	}
}

func benchManyRegions(b *testing.B, regions int, flush time.Duration) {
	log.SetLevel(zapcore.ErrorLevel)
	ctx := context.Background()
	c := startPDCluster(b, ctx, simcluster.Config{Stores: 1})
	etcd := pdEtcd{c}.Client(b)
	m := meta.NewClient(etcd)
	w, err := c.NewBulkWriter(simcluster.BulkConfig{Keys: simcluster.KeysTiDBRow, Regions: regions, Split: true, ValueSize: 1024})
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	start, _ := c.TSO(ctx)
	if err := br.Start(ctx, br.NewEnv(m).WithPD(c.PD()), br.StartOptions{TaskName: "bench", StartTS: fmt.Sprint(start), Storage: "local://" + dir}, io.Discard); err != nil {
		b.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	a, err := streamagent.New(streamagent.Config{StoreID: c.StoreIDs()[0], PD: c.PD(), Meta: m, ClusterID: c.ClusterID(),
		FlushInterval: flush, ReconcileInterval: time.Hour, TempDir: b.TempDir(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, reg)
	if err != nil {
		b.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); a.Run(actx) }()
	defer func() { cancel(); <-done }()
	eventually.True(b, 10*time.Minute, func() bool {
		st := a.Status()
		return len(st.Tasks) == 1 && st.Tasks[0].ObservedRegions >= int64(regions) && st.Tasks[0].Scanning == 0
	}, "the agent to observe %d regions", regions)
	revision := func() int64 {
		resp, err := etcd.Get(ctx, "logbackup-bench-revision-probe")
		if err != nil {
			b.Fatal(err)
		}
		return resp.Header.Revision
	}
	b.ResetTimer()
	stopProfile := profileMeasured(b)
	rev0 := revision()
	var peak atomic.Int64
	stopRSS := sampleRSS(&peak)
	began := time.Now()
	cpu := processCPU(b)
	st, err := w.Write(ctx, int64(b.N))
	if err != nil {
		b.Fatal(err)
	}
	last, _ := c.TSO(ctx)
	var tookIn time.Duration
	eventually.TrueEvery(b, flush+10*time.Minute, 20*time.Millisecond, func() bool {
		if tookIn == 0 && gathered(reg, "logbackup_agent_events_total") >= float64(st.Rows) {
			tookIn = time.Since(began)
		}
		if g, ok, _ := m.GlobalCheckpoint(ctx, "bench"); ok && g >= last {
			return true
		}
		if errs, _ := m.LastErrors(ctx, "bench"); len(errs) > 0 {
			b.Fatalf("the task stopped with an error: %v", errs)
		}
		return false
	}, "the checkpoint to cover the last commit")
	elapsed := time.Since(began)
	b.StopTimer()
	stopProfile()
	stopRSS()
	if tookIn == 0 {
		tookIn = elapsed
	}
	writes := revision() - rev0
	var data, metas int
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil || d.IsDir():
		case strings.HasSuffix(p, ".meta"):
			metas++
		case strings.HasSuffix(p, ".log"):
			data++
		}
		return nil
	})
	b.ReportMetric(float64(st.Rows)/elapsed.Seconds(), "rows/s")
	b.ReportMetric(float64(st.Rows)/tookIn.Seconds(), "intake-rows/s")
	b.ReportMetric(float64(processCPU(b)-cpu)/float64(st.Rows), "cpu-ns/row")
	b.ReportMetric(float64(peak.Load())/1024, "peak-RSS-MiB")
	b.ReportMetric(float64(writes)/elapsed.Minutes(), "etcd-writes/min")
	if metas > 0 {
		b.ReportMetric(float64(data)/float64(metas), "objects/flush")
	}
	b.ReportMetric(float64(metas), "flushes")
}

// sampleRSS keeps the process's highest VmRSS (kB) every 100 ms until
// stopped.
func sampleRSS(peak *atomic.Int64) (stop func()) {
	quit, finished := make(chan struct{}), make(chan struct{})
	pid := os.Getpid()
	go func() {
		defer close(finished)
		for {
			if rss, err := readProcStatusKB(pid, "VmRSS"); err == nil && rss > peak.Load() {
				peak.Store(rss)
			}
			select {
			case <-quit:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return func() { close(quit); <-finished }
}

// gathered sums a counter's samples from an agent's registry.
func gathered(reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}
