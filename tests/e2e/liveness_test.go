package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"logbackup/meta"
	"logbackup/proto/lbpb"
	"logbackup/tests/etcdtest"
)

// TestStatusShowsAgentLiveness: a store that flushed for the task but has
// no live agent makes the task STALLED, never NORMAL; when its agent comes
// back (or its lease is alive) the task is NORMAL again.
func TestStatusShowsAgentLiveness(t *testing.T) {
	etcd := etcdtest.Start(t)
	m := meta.NewClient(etcd.Client(t))
	r := brRun{t: t, ep: etcd.Endpoint()}
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
	if st := statusOf(t, r, "pitr"); st.Status != "STALLED" {
		t.Fatalf("json status %q", st.Status)
	}
	a2ctx, stopAgent2 := context.WithCancel(ctx)
	if _, err := m.RegisterAgent(a2ctx, &lbpb.AgentRegistration{StoreId: 2, Hostname: "h2", Version: "v"}, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if st := statusOf(t, r, "pitr"); st.Status != "NORMAL" {
		t.Fatalf("with both agents live: %q", st.Status)
	}
	// Agent 2 dies: its lease expires and the task is STALLED again.
	stopAgent2()
	deadline := time.Now().Add(15 * time.Second)
	for statusOf(t, r, "pitr").Status != "STALLED" {
		if time.Now().After(deadline) {
			t.Fatal("a dead agent's store was not flagged within its lease")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestResumeRefusedBelowGCSafePoint: resuming a task whose checkpoint PD
// has already garbage-collected is refused with that reason.
func TestResumeRefusedBelowGCSafePoint(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	r := brRun{t: t, ep: etcd.Endpoint()}
	r.ok("stream", "start", "--task-name", "pitr", "--storage", "local://"+filepath.Join(t.TempDir(), "b"), "--start-ts", "2024-01-01 00:00:00+0000")
	r.ok("stream", "pause", "--task-name", "pitr")
	ctx := context.Background()
	// What PD keeps in its etcd: the cluster id and the GC safepoint (hex).
	if _, err := cli.Put(ctx, "/pd/cluster_id", string([]byte{0, 0, 0, 0, 0, 0, 0, 7})); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "/pd/7/gc/safe_point", fmt.Sprintf("%x", uint64(time.Now().UnixMilli())<<18)); err != nil {
		t.Fatal(err)
	}
	res := r.fails("garbage collected", "stream", "resume", "--task-name", "pitr")
	if !strings.Contains(res.stderr, "start a new task") {
		t.Fatalf("no hint: %s", res.stderr)
	}
	if st := statusOf(t, r, "pitr"); st.Status != "PAUSE" {
		t.Fatalf("a refused resume changed the task: %s", st.Status)
	}
	// With the safepoint behind the checkpoint, resume works.
	if _, err := cli.Put(ctx, "/pd/7/gc/safe_point", "1"); err != nil {
		t.Fatal(err)
	}
	r.ok("stream", "resume", "--task-name", "pitr")
}
