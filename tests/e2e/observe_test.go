package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"logbackup/streamagent"
	"logbackup/streamagent/checkpoint"
	"logbackup/tests/eventually"
	"logbackup/tests/s3test"
	"logbackup/tests/simcluster"
)

// TestAgentMetricsAndStatus: the agent's /metrics and /status reflect what
// it observes and flushes.
func TestAgentMetricsAndStatus(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h := newHarness(t, ctx, simcluster.Config{Stores: 1, SplitKeys: [][]byte{[]byte("t5")}}, "local://"+t.TempDir(), 0)
	c, startTS := h.c, h.startTS
	reg := prometheus.NewRegistry()
	a, stop := h.agent(c.StoreIDs()[0], reg, func(cfg *streamagent.Config) { cfg.FlushInterval = time.Hour })
	defer stop()
	srv := httptest.NewServer(a.Handler(reg))
	defer srv.Close()

	for i := 0; i < 20; i++ {
		if _, err := c.Put(ctx, []byte(fmt.Sprintf("t%d", i)), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	var st streamagent.Status
	eventually.NoError(t, 20*time.Second, func(ctx context.Context) error {
		if err := a.Testing().FlushWithAllRegionCheckpoints(ctx); err != nil {
			return err
		}
		resp, err := http.Get(srv.URL + "/status")
		if err != nil {
			return err
		}
		json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if len(st.Tasks) != 1 || st.Tasks[0].ObservedRegions != 2 || st.Tasks[0].StoreCheckpoint <= startTS {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	}, "status to show 2 observed regions and a checkpoint")
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"logbackup_agent_events_total 20", `logbackup_agent_observed_regions{task="pitr"} 2`, "logbackup_agent_flushed_bytes_total", "logbackup_agent_checkpoint_lag_seconds"} {
		if !strings.Contains(string(body), want) {
			t.Fatalf("/metrics lacks %q", want)
		}
	}
	// Go's profiles, as TiKV's status address serves them; not the
	// command line.
	for path, want := range map[string]int{"/debug/pprof/heap?debug=1": 200, "/debug/pprof/goroutine?debug=1": 200,
		"/debug/pprof/profile?seconds=1": 200, "/debug/pprof/cmdline": 404} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want || (want == 200 && len(body) == 0) {
			t.Fatalf("GET %s: %s with %d bytes; want %d", path, resp.Status, len(body), want)
		}
	}
}

// scrape reads one series' value from a registry, by metric name and an
// exact label set ("" for none).
func scrape(t *testing.T, reg *prometheus.Registry, name, labels string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			if strings.Join(ls, ",") != labels {
				continue
			}
			switch {
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue(), true
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue(), true
			}
		}
	}
	return 0, false
}

// metricSum is the sum of a counter or gauge over all its label values (0
// when it has none yet): "errors of any code", say.
func metricSum(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// TestLagAlertsFireWhileFlushesFail: storage answers 503 to every upload
// (retried within the budget, no pause). The lag the agents export keeps
// growing — it is derived at scrape time from the checkpoint, not set by
// the last good flush — and PingCAP's RPO expression over the coordinator's
// tidb_log_backup_last_checkpoint grows with it while the task stays
// running (task_status 0), so the RPO alerts fire during an outage.
func TestLagAlertsFireWhileFlushesFail(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s3 := s3test.Start(t, "bk")
	h := newHarness(t, ctx, simcluster.Config{Stores: 1}, s3.URL("bk", "log"), 0)
	reg := prometheus.NewRegistry()
	_, stop := h.agent(1, reg, func(cfg *streamagent.Config) {
		cfg.RetryBudget = streamagent.RetryBudget{Attempts: 1 << 20, Duration: time.Hour}
		// A coordinator tick ten flushes long: a flush that finished just
		// before the fault is published after it every time, not only
		// when a loaded machine delays a tick (as it did in CI).
		cfg.CoordinatorInterval = time.Second
	})
	defer stop()
	if _, err := h.c.Put(ctx, []byte("t1"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	end, _ := h.c.TSO(ctx)
	h.waitGlobal(end)
	var ckpt float64
	eventually.True(t, 20*time.Second, func() bool {
		v, ok := scrape(t, reg, "tidb_log_backup_last_checkpoint", "task=pitr")
		ckpt = v
		return ok && v >= float64(end)
	}, "the coordinator to export the global checkpoint")
	s3.SetFault(s3test.Fault{Status: 503, Remaining: -1, Match: func(r *http.Request) bool { return r.Method == http.MethodPut }})
	// A flush meets the fault: from here on flushes fail.
	eventually.True(t, 20*time.Second, func() bool { return s3.Faults() > 0 }, "a flush to meet the storage fault")
	// Flushes run one at a time, so the flush that met the fault is the
	// first to fail and what the stores made durable is final now; the
	// coordinator publishes it on its next tick, which can come after the
	// fault (a flush that finished just before it). Wait for that, not for
	// time: the checkpoint exported from here on must not move.
	var ckpt0 float64
	eventually.True(t, 20*time.Second, func() bool {
		ts, err := h.m.GetTask(ctx, "pitr")
		if err != nil {
			return false
		}
		flushed, err := checkpoint.Flushed(ctx, h.m, ts)
		if err != nil {
			return false
		}
		v, ok := scrape(t, reg, "tidb_log_backup_last_checkpoint", "task=pitr")
		ckpt0 = v
		return ok && v == float64(flushed)
	}, "the coordinator to publish what the stores flushed before the fault")
	lag0, ok := scrape(t, reg, "logbackup_agent_checkpoint_lag_seconds", "task=pitr")
	if !ok {
		t.Fatal("no lag exported")
	}
	// Time is the subject: the lag must grow with it while flushes fail.
	time.Sleep(3 * time.Second)
	lag1, _ := scrape(t, reg, "logbackup_agent_checkpoint_lag_seconds", "task=pitr")
	ckpt1, _ := scrape(t, reg, "tidb_log_backup_last_checkpoint", "task=pitr")
	status, _ := scrape(t, reg, "tikv_log_backup_task_status", "task=pitr")
	if s3.Faults() == 0 {
		t.Fatal("no upload met the outage")
	}
	if lag1-lag0 < 2.5 {
		t.Fatalf("lag went from %.1f s to %.1f s over 3 s of failing flushes: frozen", lag0, lag1)
	}
	if ckpt1 != ckpt0 || ckpt0 < ckpt {
		t.Fatalf("global checkpoint moved during the outage: %v → %v", ckpt0, ckpt1)
	}
	// PingCAP's RPO expression: (time() - checkpoint / 262144000) / 60.
	rpo := func(at time.Time, c float64) float64 { return (float64(at.UnixMilli())/1000 - c/262144000) / 60 }
	if now := time.Now(); rpo(now, ckpt1) <= rpo(now.Add(-3*time.Second), ckpt0) || status != 0 {
		t.Fatalf("RPO does not grow while running: status %v", status)
	}
}
