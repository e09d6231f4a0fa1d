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
