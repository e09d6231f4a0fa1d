package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/streamagent"
	"logbackup/tests/etcdtest"
	"logbackup/tests/simcluster"
)

// TestLagLimitPauses: a task whose checkpoint lags past the limit is
// paused by the coordinator with an ERROR that says why, and is not
// resumed automatically.
func TestLagLimitPauses(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	etcd := etcdtest.Start(t)
	m := meta.NewClient(etcd.Client(t))
	c, err := simcluster.Start(ctx, simcluster.Config{Stores: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now().Add(-time.Hour)
	if err := br.Start(ctx, br.NewEnv(m), br.StartOptions{TaskName: "pitr", StartTS: fmt.Sprint(br.ComposeTS(start)), Storage: "local://" + t.TempDir()}, io.Discard); err != nil {
		t.Fatal(err)
	}
	// No flush for an hour: the checkpoint stays at the start, an hour back.
	a, err := streamagent.New(streamagent.Config{StoreID: c.StoreIDs()[0], PD: c.PD(), Meta: m, ClusterID: c.ClusterID(),
		FlushInterval: time.Hour, CoordinatorInterval: 50 * time.Millisecond, LagLimit: 30 * time.Minute,
		AutoResume: streamagent.AutoResume{Backoff: 10 * time.Millisecond}, TempDir: t.TempDir(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, nil)
	if err != nil {
		t.Fatal(err)
	}
	actx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); a.Run(actx) }()
	defer func() { stop(); <-done }()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st, err := m.GetTask(ctx, "pitr")
		if err == nil && st.Pause.V2.IsError() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a task lagging an hour past a 30-minute limit was not paused")
		}
	}
	r := brRun{t: t, ep: etcd.Endpoint()}
	table := r.ok("stream", "status", "--task-name", "pitr")
	for _, want := range []string{"status: ○ ERROR", "KV:LogBackup:CheckpointLagTooLarge", "the lag is too huge"} {
		if !strings.Contains(table, want) {
			t.Fatalf("status lacks %q:\n%s", want, table)
		}
	}
	time.Sleep(500 * time.Millisecond) // ten coordinator ticks with a 10 ms auto-resume backoff
	if st, _ := m.GetTask(ctx, "pitr"); !st.Pause.Paused {
		t.Fatal("a lag pause was resumed automatically")
	}
}
