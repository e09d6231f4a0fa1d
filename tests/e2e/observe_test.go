package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/streamagent"
	"logbackup/tests/etcdtest"
	"logbackup/tests/simcluster"
)

// TestAgentMetricsAndStatus: the agent's /metrics and /status reflect what
// it observes and flushes.
func TestAgentMetricsAndStatus(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	etcd := etcdtest.Start(t)
	m := meta.NewClient(etcd.Client(t))
	c, err := simcluster.Start(ctx, simcluster.Config{Stores: 1, SplitKeys: [][]byte{[]byte("t5")}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	startTS, _ := c.TSO(ctx)
	if err := br.Start(ctx, br.NewEnv(m), br.StartOptions{TaskName: "pitr", StartTS: fmt.Sprint(startTS), Storage: "local://" + t.TempDir()}, io.Discard); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	a, err := streamagent.New(streamagent.Config{StoreID: c.StoreIDs()[0], PD: c.PD(), Meta: m, ClusterID: c.ClusterID(),
		FlushInterval: time.Hour, ReconcileInterval: 100 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, reg)
	if err != nil {
		t.Fatal(err)
	}
	actx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); a.Run(actx) }()
	defer func() { stop(); <-done }()
	srv := httptest.NewServer(a.Handler(reg))
	defer srv.Close()

	for i := 0; i < 20; i++ {
		if _, err := c.Put(ctx, []byte(fmt.Sprintf("t%d", i)), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	var st streamagent.Status
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if err := a.FlushNow(ctx); err == nil {
			resp, err := http.Get(srv.URL + "/status")
			if err == nil {
				json.NewDecoder(resp.Body).Decode(&st)
				resp.Body.Close()
				if len(st.Tasks) == 1 && st.Tasks[0].ObservedRegions == 2 && st.Tasks[0].StoreCheckpoint > startTS {
					break
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never showed 2 observed regions and a checkpoint: %+v", st)
		}
	}
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
}
