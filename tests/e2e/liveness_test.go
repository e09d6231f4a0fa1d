package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"logbackup/meta"
	"logbackup/proto/lbpb"
	"logbackup/tests/eventually"
)

// TestStatusShowsAgentLiveness: a store that flushed for the task but has
// no live agent makes the task STALLED, never NORMAL; when its agent comes
// back (or its lease is alive) the task is NORMAL again.
func TestStatusShowsAgentLiveness(t *testing.T) {
	r, cli, _ := cliCluster(t)
	m := meta.NewClient(cli)
	r.ok("stream", "start", "--task-name", "pitr", "--storage", "local://"+filepath.Join(t.TempDir(), "b"))
	ctx := context.Background()
	st, err := m.GetTask(ctx, "pitr")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []uint64{1, 2} {
		if err := m.PutSpanCheckpoints(ctx, "pitr", st.Incarnation, &lbpb.SpanCheckpoints{StoreId: s, Spans: []*lbpb.SpanCheckpoints_Span{{StartKey: []byte("t"), Ts: 10}}}); err != nil {
			t.Fatal(err)
		}
	}
	actx, stopAgent1 := context.WithCancel(ctx)
	defer stopAgent1()
	if _, err := m.RegisterAgent(actx, &lbpb.AgentRegistration{StoreId: 1, Hostname: "h1", Version: "v"}, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	table := r.ok("stream", "status", "--task-name", "pitr")
	for _, want := range []string{"status: ○ STALLED", "agents: 1 live (stores 1)", "agent[store=2]: ○ NOT RUNNING"} {
		if !strings.Contains(table, want) {
			t.Fatalf("status lacks %q:\n%s", want, table)
		}
	}
	// JSON keeps BR's word for scripts written for BR; ours has its field.
	if st := statusOf(t, r, "pitr"); st.Status != "NORMAL" || st.State != "STALLED" {
		t.Fatalf("json status %q, state %q", st.Status, st.State)
	}
	a2ctx, stopAgent2 := context.WithCancel(ctx)
	if _, err := m.RegisterAgent(a2ctx, &lbpb.AgentRegistration{StoreId: 2, Hostname: "h2", Version: "v"}, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if st := statusOf(t, r, "pitr"); st.State != "NORMAL" {
		t.Fatalf("with both agents live: %q", st.State)
	}
	// Agent 2 dies: its lease expires and the task is STALLED again.
	stopAgent2()
	eventually.True(t, 15*time.Second, func() bool { return statusOf(t, r, "pitr").State == "STALLED" },
		"a dead agent's store to be flagged once its lease expires")
}

// TestResumeRefusedBelowGCSafePoint: while a task is paused, BR's pause
// safepoint keeps PD's GC from passing its checkpoint; once it has expired
// and GC has run past the checkpoint, status says so plainly and resume is
// refused with that reason.
func TestResumeRefusedBelowGCSafePoint(t *testing.T) {
	r, _, c := cliCluster(t)
	ctx := context.Background()
	r.ok("stream", "start", "--task-name", "pitr", "--storage", "local://"+filepath.Join(t.TempDir(), "b"), "--start-ts", "2024-01-01 00:00:00+0000")
	r.ok("stream", "pause", "--task-name", "pitr")
	checkpoint := statusOf(t, r, "pitr").Checkpoint
	now, _ := c.TSO(ctx)
	// GC runs: the pause safepoint stops it below the checkpoint.
	if sp, err := c.SetGCSafePoint(ctx, now); err != nil || sp >= checkpoint {
		t.Fatalf("GC reached %d (%v) past the paused task's checkpoint %d", sp, err, checkpoint)
	}
	if table := r.ok("stream", "status", "--task-name", "pitr"); strings.Contains(table, "gc-safepoint") {
		t.Fatalf("status warns while GC is held:\n%s", table)
	}
	// A day later the pause safepoint has expired and GC passes.
	c.AdvancePDClock(25 * time.Hour)
	if sp, err := c.SetGCSafePoint(ctx, now); err != nil || sp != now {
		t.Fatalf("GC reached %d (%v), want %d", sp, err, now)
	}
	if table := r.ok("stream", "status", "--task-name", "pitr"); !strings.Contains(table, "cannot resume without loss") {
		t.Fatalf("status does not say the checkpoint is gone:\n%s", table)
	}
	res := r.fails("garbage collected", "stream", "resume", "--task-name", "pitr")
	if !strings.Contains(res.stderr, "start a new task") {
		t.Fatalf("no hint: %s", res.stderr)
	}
	if st := statusOf(t, r, "pitr"); st.Status != "PAUSE" {
		t.Fatalf("a refused resume changed the task: %s", st.Status)
	}
}
