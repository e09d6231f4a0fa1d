package meta_test

import (
	"context"
	"errors"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"logbackup/meta"
	"logbackup/proto/lbpb"
)

// brStop deletes exactly the keys TiDB's `br log stop` deletes
// (MetaDataClient.DeleteTask), nothing of the agents'.
func brStop(t *testing.T, cli *clientv3.Client, name string) {
	t.Helper()
	_, err := cli.Txn(context.Background()).Then(
		clientv3.OpDelete(meta.InfoKey(name)),
		clientv3.OpDelete(meta.RangesPrefix(name), clientv3.WithPrefix()),
		clientv3.OpDelete(meta.CheckpointPrefix(name), clientv3.WithPrefix()),
		clientv3.OpDelete(meta.PauseKey(name)),
		clientv3.OpDelete(meta.LastErrorPrefix(name), clientv3.WithPrefix()),
		clientv3.OpDelete(meta.StorageCheckpointPrefix(name), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		t.Fatal(err)
	}
}

// TestIncarnationFence: every write through a fenced client lands while
// the incarnation lives and is refused, without touching etcd, once the task
// was stopped (by us or by TiDB's BR) or started again under the same name.
func TestIncarnationFence(t *testing.T) {
	c, cli, _ := setup(t)
	ctx := context.Background()
	if err := c.PutTask(ctx, task("pitr"), ranges); err != nil {
		t.Fatal(err)
	}
	first, err := c.GetTask(ctx, "pitr")
	if err != nil || first.Incarnation == 0 {
		t.Fatalf("GetTask: %+v %v", first, err)
	}
	f := c.Incarnation("pitr", first.Incarnation)
	writes := map[string]func() error{
		"store checkpoint": func() error { _, err := f.AdvanceStoreCheckpoint(ctx, "pitr", 1, 200); return err },
		"region checkpoints": func() error {
			return f.AdvanceRegionCheckpoints(ctx, "pitr", []meta.RegionTS{{RegionID: 2, EpochVersion: 1, TS: 200}})
		},
		"global checkpoint":  func() error { _, err := f.AdvanceGlobalCheckpoint(ctx, "pitr", 200); return err },
		"storage checkpoint": func() error { _, err := f.AdvanceStorageCheckpoint(ctx, "pitr", 1, 200); return err },
		"span checkpoints": func() error {
			return f.PutSpanCheckpoints(ctx, "pitr", first.Incarnation, &lbpb.SpanCheckpoints{StoreId: 1, FlushTs: 200})
		},
		"last error": func() error {
			return f.ReportLastError(ctx, "pitr", &brpb.StreamBackupError{StoreId: 1, ErrorCode: "x"})
		},
		"history": func() error {
			return f.AppendHistory(ctx, "pitr", first.Incarnation, &lbpb.RecoveryEvent{StoreId: 1, HappenAtUnixMs: 5})
		},
		"pause": func() error {
			return f.PauseTask(ctx, "pitr", meta.NewManualPause("h", 1, time.Unix(1700000000, 0), "m"))
		},
	}
	for name, w := range writes {
		if err := w(); err != nil {
			t.Fatalf("%s on the live incarnation: %v", name, err)
		}
	}
	if err := f.ResumeTask(ctx, "pitr"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.AdvanceStoreCheckpoint(ctx, "other", 1, 5); err == nil {
		t.Fatal("a client fenced for pitr wrote task other")
	}

	// TiDB's stop, then a new start under the same name.
	brStop(t, cli, "pitr")
	for name, w := range writes {
		if err := w(); !errors.Is(err, meta.ErrStaleIncarnation) {
			t.Fatalf("%s after BR's stop: %v, want ErrStaleIncarnation", name, err)
		}
	}
	if err := c.PutTask(ctx, task("pitr"), ranges); err != nil {
		t.Fatal(err)
	}
	second, err := c.GetTask(ctx, "pitr")
	if err != nil || second.Incarnation == first.Incarnation {
		t.Fatalf("restarted task has incarnation %d (first %d): %v", second.Incarnation, first.Incarnation, err)
	}
	for name, w := range writes {
		if err := w(); !errors.Is(err, meta.ErrStaleIncarnation) {
			t.Fatalf("%s after a restart: %v, want ErrStaleIncarnation", name, err)
		}
	}
	// Nothing the stale writers tried reached the new incarnation.
	for _, prefix := range []string{meta.CheckpointPrefix("pitr"), meta.StorageCheckpointPrefix("pitr"), meta.LastErrorPrefix("pitr"),
		meta.PauseKey("pitr"), meta.SpanCheckpointPrefix("pitr", second.Incarnation), meta.HistoryPrefix("pitr", second.Incarnation)} {
		if ks := keysUnder(t, cli, prefix); len(ks) != 0 {
			t.Fatalf("stale writes reached the new incarnation: %v", ks)
		}
	}
	// The first incarnation's own state is not read as the second's.
	if scs, err := c.SpanCheckpoints(ctx, "pitr", second.Incarnation); err != nil || len(scs) != 0 {
		t.Fatalf("second incarnation sees span checkpoints %v (%v)", scs, err)
	}
	if scs, err := c.SpanCheckpoints(ctx, "pitr", first.Incarnation); err != nil || len(scs) != 1 {
		t.Fatalf("first incarnation's record: %v (%v)", scs, err)
	}
}

// TestCleanStaleAgentState: the state of earlier incarnations, of tasks
// TiDB's BR stopped, and of the layout before incarnations is removed; the
// live incarnation's is kept.
func TestCleanStaleAgentState(t *testing.T) {
	c, cli, _ := setup(t)
	ctx := context.Background()
	if err := c.PutTask(ctx, task("pitr"), ranges); err != nil {
		t.Fatal(err)
	}
	old, _ := c.GetTask(ctx, "pitr")
	put := func(inc int64) {
		if err := c.PutSpanCheckpoints(ctx, "pitr", inc, &lbpb.SpanCheckpoints{StoreId: 1}); err != nil {
			t.Fatal(err)
		}
		if err := c.AppendHistory(ctx, "pitr", inc, &lbpb.RecoveryEvent{StoreId: 1, HappenAtUnixMs: 1}); err != nil {
			t.Fatal(err)
		}
	}
	put(old.Incarnation)
	brStop(t, cli, "pitr")
	if err := c.PutTask(ctx, task("pitr"), ranges); err != nil {
		t.Fatal(err)
	}
	live, _ := c.GetTask(ctx, "pitr")
	put(live.Incarnation)
	// A task BR stopped for good, and keys of the layout before incarnations.
	if _, err := cli.Put(ctx, meta.SpanCheckpointPrefix("gone", 42)+"1", "x"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{meta.Prefix + "/stream-agent/span-checkpoint/pitr/1", meta.Prefix + "/stream-agent/history/pitr/00000000000000000005-1-1"} {
		if _, err := cli.Put(ctx, k, "x"); err != nil {
			t.Fatal(err)
		}
	}
	n, err := c.CleanStaleAgentState(ctx)
	if err != nil || n != 2 {
		t.Fatalf("CleanStaleAgentState = %d, %v; want 2 incarnations removed", n, err)
	}
	got := keysUnder(t, cli, meta.Prefix+"/stream-agent/")
	want := map[string]bool{meta.SpanCheckpointKey("pitr", live.Incarnation, 1): true}
	for _, k := range got {
		if !want[k] && !(len(k) > len(meta.HistoryPrefix("pitr", live.Incarnation)) && k[:len(meta.HistoryPrefix("pitr", live.Incarnation))] == meta.HistoryPrefix("pitr", live.Incarnation)) {
			t.Errorf("left behind: %s", k)
		}
	}
	if len(got) != 2 {
		t.Fatalf("kept %v, want the live incarnation's two keys", got)
	}
	// Our own stop removes every incarnation's state.
	if err := c.DeleteTask(ctx, "pitr"); err != nil {
		t.Fatal(err)
	}
	if ks := keysUnder(t, cli, meta.Prefix+"/"); len(ks) != 0 {
		t.Fatalf("after stop: %v", ks)
	}
}

// TestWatchCarriesIncarnation: a task stopped and started again is seen as
// a delete and an add of a new incarnation, also across a compaction.
func TestWatchCarriesIncarnation(t *testing.T) {
	c, cli, _ := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := c.PutTask(ctx, task("pitr"), ranges); err != nil {
		t.Fatal(err)
	}
	tasks, rev, err := c.ListTasks(ctx)
	if err != nil || len(tasks) != 1 || tasks[0].Incarnation == 0 {
		t.Fatalf("ListTasks: %v %v", tasks, err)
	}
	events := c.WatchTasks(ctx, tasks, rev+1)
	brStop(t, cli, "pitr")
	if err := c.PutTask(ctx, task("pitr"), ranges); err != nil {
		t.Fatal(err)
	}
	now, _ := c.GetTask(ctx, "pitr")
	if ev := <-events; ev.Type != meta.EventDelete {
		t.Fatalf("first event %v, want delete", ev)
	}
	if ev := <-events; ev.Type != meta.EventAdd || ev.Incarnation != now.Incarnation || ev.Incarnation == tasks[0].Incarnation {
		t.Fatalf("second event %v (incarnation %d), want add of incarnation %d", ev, ev.Incarnation, now.Incarnation)
	}
}
