package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent/logfile"
	"logbackup/tests/eventually"
	"logbackup/tests/simcluster"
)

// viewOf loads `br stream status` for pitr, table and JSON views.
func viewOf(t *testing.T, ctx context.Context, m *meta.Client) *br.TaskView {
	t.Helper()
	views, err := br.LoadTasks(ctx, br.NewEnv(m), "pitr")
	if err != nil || len(views) != 1 {
		t.Fatalf("status: %v %v", views, err)
	}
	return views[0]
}

// TestTiDBAdvancerBeside: a tidb-server's log-backup advancer campaigns
// under /tidb/br-stream/owner/ (TiDB's [log-backup] enable). While it
// lives, our coordinator never writes central_global (two writers of one
// key are unsafe), says so in status and in a metric, and takes over again
// when it is gone.
func TestTiDBAdvancerBeside(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h := newHarness(t, ctx, simcluster.Config{Stores: 1}, "local://"+filepath.Join(t.TempDir(), "b"), 0)
	reg := prometheus.NewRegistry()
	_, stop := h.agent(1, reg, nil)
	defer stop()
	put := func(tag string) uint64 {
		if _, err := h.c.Put(ctx, []byte("t1"), []byte(tag)); err != nil {
			t.Fatal(err)
		}
		ts, _ := h.c.TSO(ctx)
		return ts
	}
	h.waitGlobal(put("a"))

	// A tidb-server campaigns, as TiDB's owner manager does: a leased key.
	cli := h.etcd.Client(t)
	lease, err := cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, meta.AdvancerOwnerPrefix()+"3eaa9b1c6a2bd8f1", "tidb-server-1", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 20*time.Second, func() bool {
		v, ok := scrape(t, reg, "logbackup_coordinator_foreign_advancer", "task=pitr")
		return ok && v == 1
	}, "the coordinator to notice TiDB's advancer")
	before, _, _ := h.m.GlobalCheckpoint(ctx, "pitr")
	end := put("b")
	// Time is the subject: nothing may happen during many coordinator
	// ticks and flushes.
	time.Sleep(time.Second)
	if g, _, _ := h.m.GlobalCheckpoint(ctx, "pitr"); g != before || g >= end {
		t.Fatalf("our coordinator wrote central_global (%d → %d) while TiDB's advancer owned it", before, g)
	}
	v := viewOf(t, ctx, h.m)
	if len(v.Conflicts) != 1 || !strings.Contains(v.Conflicts[0], "TiDB's log-backup advancer is running") {
		t.Fatalf("status conflicts: %q", v.Conflicts)
	}
	// TiDB's advancer turned off: ours takes over.
	if _, err := cli.Revoke(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	h.waitGlobal(end)
	if v := viewOf(t, ctx, h.m); len(v.Conflicts) != 0 {
		t.Fatalf("conflicts after the advancer left: %q", v.Conflicts)
	}
}

// TestTiKVLogBackupBeside: a store with no agent of ours writes the task's
// store checkpoint and its v1/global_checkpoint file, as TiKV's built-in
// log backup does when log-backup.enable is left on. The conflict shows in
// status and in a metric.
func TestTiKVLogBackupBeside(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "b")
	h := newHarness(t, ctx, simcluster.Config{Stores: 1}, "local://"+dir, 0)
	reg := prometheus.NewRegistry()
	_, stop := h.agent(1, reg, nil)
	defer stop()
	if _, err := h.c.Put(ctx, []byte("t1"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	end, _ := h.c.TSO(ctx)
	h.waitGlobal(end)
	if v := viewOf(t, ctx, h.m); len(v.Conflicts) != 0 {
		t.Fatalf("conflicts with our agents only: %q", v.Conflicts)
	}
	// Store 7 (TiKV's own log backup) flushes: a storage file only.
	st, err := storage.OpenURL(ctx, "local://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.WriteFile(ctx, logfile.GlobalCheckpointName(7), logfile.EncodeGlobalCheckpoint(end)); err != nil {
		t.Fatal(err)
	}
	waitGauge := func(want float64) {
		t.Helper()
		eventually.True(t, 20*time.Second, func() bool {
			v, ok := scrape(t, reg, "logbackup_coordinator_foreign_checkpoint_writers", "task=pitr")
			return ok && v == want
		}, "%v foreign writers counted", want)
	}
	waitGauge(1)
	// And store 8 writes its store checkpoint in etcd.
	if _, err := h.m.AdvanceStoreCheckpoint(ctx, "pitr", 8, end); err != nil {
		t.Fatal(err)
	}
	waitGauge(2)
	v := viewOf(t, ctx, h.m)
	if len(v.Conflicts) != 1 || !strings.Contains(v.Conflicts[0], "store 8") || !strings.Contains(v.Conflicts[0], "log-backup.enable") {
		t.Fatalf("status conflicts (etcd shows store 8): %q", v.Conflicts)
	}
}

// TestTakeOverFromTiKVLogBackup: a task that TiKV's built-in log backup
// ran (TiDB's advancer wrote central_global T; no span checkpoint of ours)
// is taken over by the agents from T — not from the task start, which PD's
// GC has already passed — and everything committed after T is backed up.
func TestTakeOverFromTiKVLogBackup(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "b")
	h := newHarness(t, ctx, simcluster.Config{SplitKeys: [][]byte{[]byte("t5")}}, "local://"+dir, 0)
	for i := 0; i < 10; i++ {
		if _, err := h.c.Put(ctx, []byte(fmt.Sprintf("t%d", i)), []byte("tikv wrote these")); err != nil {
			t.Fatal(err)
		}
	}
	handover, _ := h.c.TSO(ctx)
	if _, err := h.m.AdvanceGlobalCheckpoint(ctx, "pitr", handover); err != nil { // TiDB's advancer, before it was turned off
		t.Fatal(err)
	}
	// GC has run past the task start (TiKV's safepoint held it at the
	// checkpoint, and the start safepoint has expired long ago).
	h.c.AdvancePDClock(time.Hour)
	if sp, err := h.c.SetGCSafePoint(ctx, handover-1); err != nil || sp != handover-1 {
		t.Fatalf("GC reached %d (%v), want %d", sp, err, handover-1)
	}
	for _, s := range h.c.StoreIDs() {
		_, stop := h.agent(s, nil, nil)
		defer stop()
	}
	for i := 0; i < 30; i++ {
		if _, err := h.c.Put(ctx, []byte(fmt.Sprintf("t%d", i%9)), []byte(fmt.Sprintf("agents %d", i))); err != nil {
			t.Fatal(err)
		}
	}
	end, _ := h.c.TSO(ctx)
	global := h.waitGlobal(end)
	if n := assertBackedUp(t, ctx, "local://"+dir, h.c, handover, global); n != 30 {
		t.Fatalf("%d versions after the handover, want 30", n)
	}
	if le, _ := h.m.LastErrors(ctx, "pitr"); len(le) > 0 {
		t.Fatalf("the take-over met errors: %v", le)
	}
}
