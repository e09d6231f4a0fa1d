package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"logbackup/br"
	"logbackup/streamagent"
	"logbackup/tests/eventually"
	"logbackup/tests/simcluster"
)

// TestLagLimitPauses: a task whose checkpoint lags past the limit is
// paused by the coordinator with an ERROR that says why, and is not
// resumed automatically.
func TestLagLimitPauses(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h := newHarness(t, ctx, simcluster.Config{Stores: 1}, "local://"+t.TempDir(), br.ComposeTS(time.Now().Add(-time.Hour)))
	m, etcd := h.m, h.etcd
	// No flush for an hour: the checkpoint stays at the start, an hour back.
	_, stop := h.agent(h.c.StoreIDs()[0], nil, func(cfg *streamagent.Config) {
		cfg.FlushInterval = time.Hour
		cfg.LagLimit = 30 * time.Minute
		cfg.AutoResume = streamagent.AutoResume{Backoff: 10 * time.Millisecond}
	})
	defer stop()
	eventually.True(t, 20*time.Second, func() bool {
		st, err := m.GetTask(ctx, "pitr")
		return err == nil && st.Pause.V2.IsError()
	}, "an ERROR pause of a task lagging an hour past a 30-minute limit")
	r := brRun{t: t, ep: etcd.Endpoint()}
	table := r.ok("stream", "status", "--task-name", "pitr")
	for _, want := range []string{"status: ○ ERROR", "KV:LogBackup:CheckpointLagTooLarge", "the lag is too huge"} {
		if !strings.Contains(table, want) {
			t.Fatalf("status lacks %q:\n%s", want, table)
		}
	}
	// Time is the subject: nothing may happen during ten coordinator ticks
	// with a 10 ms auto-resume backoff.
	time.Sleep(500 * time.Millisecond)
	if st, _ := m.GetTask(ctx, "pitr"); !st.Pause.Paused {
		t.Fatal("a lag pause was resumed automatically")
	}
}
