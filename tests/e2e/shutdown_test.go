package e2e

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"logbackup/streamagent"
	"logbackup/tests/eventually"
	"logbackup/tests/s3test"
	"logbackup/tests/simcluster"
)

// TestShutdownBoundedByFinalFlushTimeout: a stopping agent whose storage
// hangs gives its final flush Config.FinalFlushTimeout, not more, and
// exits; the changes it could not flush stay above the checkpoint for the
// next owner to rescan. (Failed before: the final flush waited a fixed
// minute, so with the rest of the shutdown an agent under SIGTERM outlived
// the playground nemesis's one-minute bound and a 30 s grace period.)
func TestShutdownBoundedByFinalFlushTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv := s3test.Start(t, "bk")
	h := newHarness(t, ctx, simcluster.Config{Stores: 1}, srv.URL("bk", "log"), 0)
	const final = 2 * time.Second
	reg := prometheus.NewRegistry()
	_, stop := h.agent(1, reg, func(c *streamagent.Config) {
		c.FlushInterval = time.Hour // only the final flush writes what follows
		c.FinalFlushTimeout = final
	})
	// Every upload from now on hangs for ten minutes.
	srv.SetFault(s3test.Fault{SlowBody: 10 * time.Minute, Remaining: -1, Match: func(r *http.Request) bool { return r.Method == http.MethodPut }})
	var firstBuffered uint64
	for i := 0; i < 5; i++ {
		ts, err := h.c.Put(ctx, []byte(fmt.Sprintf("t%d", i)), []byte("buffered"))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			firstBuffered = ts
		}
	}
	// The final flush has the changes to write.
	eventually.True(t, 30*time.Second, func() bool { return metricSum(t, reg, "logbackup_agent_events_total") >= 5 },
		"the agent to take the 5 changes in")
	began := time.Now()
	stop()
	// Generous against a loaded machine, far below the old fixed minute.
	if took := time.Since(began); took > final+25*time.Second {
		t.Fatalf("the agent took %s to stop with a %s final flush timeout", took, final)
	}
	cps, err := h.m.Checkpoints(ctx, "pitr")
	if err != nil {
		t.Fatal(err)
	}
	for _, cp := range cps {
		if cp.TS >= firstBuffered {
			t.Fatalf("checkpoint %+v covers changes (from %d) that were never flushed", cp, firstBuffered)
		}
	}
}
