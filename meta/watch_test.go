package meta_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"logbackup/meta"
	"logbackup/tests/eventually"
)

// next waits for one event (bounded, so a missing event fails, not hangs).
func next(t *testing.T, ch <-chan meta.TaskEvent) meta.TaskEvent {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return ev
	case <-time.After(20 * time.Second):
		t.Fatal("no watch event within 20s")
	}
	return meta.TaskEvent{}
}

func describe(ev meta.TaskEvent) string {
	s := ev.Type.String() + " " + ev.Name
	if ev.Type == meta.EventPause && ev.Pause != nil {
		s += " " + ev.Pause.Severity
	}
	if ev.Err != nil {
		s += " err"
	}
	return s
}

func expect(t *testing.T, ch <-chan meta.TaskEvent, want ...string) {
	t.Helper()
	var got []string
	for range want {
		got = append(got, describe(next(t, ch)))
	}
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Fatalf("events:\n got %s\nwant %s", strings.Join(got, ", "), strings.Join(want, ", "))
	}
}

// putRaw writes a task's info directly (PutTask refuses a second task).
func putRaw(t *testing.T, cli *clientv3.Client, name string) {
	t.Helper()
	raw, _ := meta.EncodeTaskInfo(task(name))
	if _, err := cli.Put(context.Background(), meta.InfoKey(name), string(raw)); err != nil {
		t.Fatal(err)
	}
}

func pauseRaw(t *testing.T, cli *clientv3.Client, name string, p *meta.PauseV2) {
	t.Helper()
	raw, _ := meta.EncodePause(p)
	if _, err := cli.Put(context.Background(), meta.PauseKey(name), string(raw)); err != nil {
		t.Fatal(err)
	}
}

func TestWatchTasks(t *testing.T) {
	c, cli, _ := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	known, rev, err := c.ListTasks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ch := c.WatchTasks(ctx, known, rev+1)
	if err := c.PutTask(ctx, task("pitr"), ranges); err != nil {
		t.Fatal(err)
	}
	if err := c.PauseTask(ctx, "pitr", meta.NewManualPause("h", 1, time.Now(), "m")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AdvanceStoreCheckpoint(ctx, "pitr", 1, 5); err != nil { // not an event
		t.Fatal(err)
	}
	e := &brpb.StreamBackupError{ErrorCode: "KV:LogBackup:Io", StoreId: 1}
	if err := c.ReportLastError(ctx, "pitr", e); err != nil { // inside the watched range, not an event
		t.Fatal(err)
	}
	// Paused again with another payload: a second pause event.
	if err := c.PauseTask(ctx, "pitr", meta.NewErrorPause("tikv", 2, time.Now(), e)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, meta.PauseKey("pitr"), "{broken"); err != nil {
		t.Fatal(err)
	}
	if err := c.ResumeTask(ctx, "pitr"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, meta.InfoKey("pitr"), "\xff\x00bad"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteTask(ctx, "pitr"); err != nil {
		t.Fatal(err)
	}
	expect(t, ch, "add pitr", "pause pitr MANUAL", "pause pitr ERROR", "pause pitr err", "resume pitr", "error pitr err", "delete pitr")
	cancel()
	for range ch { // closed once ctx ends
	}
}

func TestWatchEventDetails(t *testing.T) {
	c, cli, _ := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := c.WatchTasks(ctx, nil, 0) // from "now": lists first

	if err := c.PutTask(ctx, task("pitr"), ranges); err != nil {
		t.Fatal(err)
	}
	ev := next(t, ch)
	if ev.Type != meta.EventAdd || ev.Info == nil || ev.Info.StartTs != 100 || ev.Revision == 0 {
		t.Fatalf("add: %+v", ev)
	}
	e := &brpb.StreamBackupError{ErrorCode: "KV:LogBackup:Io", ErrorMessage: "disk", StoreId: 4}
	if err := c.PauseTask(ctx, "pitr", meta.NewErrorPause("tikv", 2, time.Now(), e)); err != nil {
		t.Fatal(err)
	}
	ev = next(t, ch)
	if got, err := ev.Pause.ErrorPayload(); ev.Type != meta.EventPause || err != nil || got.ErrorMessage != "disk" {
		t.Fatalf("pause: %+v %v", ev, err)
	}
	// A put of the info of a paused task is an add, which (read as "run")
	// is followed by the pause that still holds.
	info := task("pitr")
	info.EndTs = 12345
	raw, _ := meta.EncodeTaskInfo(info)
	if _, err := cli.Put(ctx, meta.InfoKey("pitr"), string(raw)); err != nil {
		t.Fatal(err)
	}
	ev = next(t, ch)
	if ev.Type != meta.EventAdd || ev.Info.EndTs != 12345 {
		t.Fatalf("re-put info: %+v", ev)
	}
	expect(t, ch, "pause pitr ERROR")
	// A corrupt info names its key.
	if _, err := cli.Put(ctx, meta.InfoKey("pitr"), "\xff\x00bad"); err != nil {
		t.Fatal(err)
	}
	ev = next(t, ch)
	if ev.Type != meta.EventError || !errors.Is(ev.Err, meta.ErrMalformed) || !strings.Contains(ev.Err.Error(), meta.InfoKey("pitr")) {
		t.Fatalf("corrupt info: %+v", ev)
	}
	// Deleting a paused task: one delete, no resume for the pause key that
	// goes with it.
	if err := c.DeleteTask(ctx, "pitr"); err != nil {
		t.Fatal(err)
	}
	// A pause key without a task is no event; when the task appears, its
	// add is followed by that pause.
	pauseRaw(t, cli, "later", nil)
	putRaw(t, cli, "later")
	if _, err := cli.Delete(ctx, meta.PauseKey("later")); err != nil {
		t.Fatal(err)
	}
	expect(t, ch, "delete pitr", "add later", "pause later", "resume later")
}

// TestWatchSurvivesCompaction: the watcher's revision is compacted away
// while it is behind; it re-lists and emits exactly the difference: no
// event lost, none invented.
func TestWatchSurvivesCompaction(t *testing.T) {
	c, cli, _ := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, name := range []string{"steady", "gone", "resumed", "repaused", "stillpaused", "updated"} {
		putRaw(t, cli, name)
	}
	for _, name := range []string{"resumed", "repaused", "stillpaused"} {
		pauseRaw(t, cli, name, meta.NewManualPause("h", 1, time.Unix(0, 0), "first"))
	}
	known, rev, err := c.ListTasks(ctx)
	if err != nil || len(known) != 6 {
		t.Fatalf("list: %v %v", known, err)
	}
	// Changes the watcher has not seen, then a compaction past them.
	if _, err := cli.Delete(ctx, meta.InfoKey("gone")); err != nil {
		t.Fatal(err)
	}
	if err := c.ResumeTask(ctx, "resumed"); err != nil {
		t.Fatal(err)
	}
	pauseRaw(t, cli, "repaused", meta.NewErrorPause("h", 1, time.Unix(0, 0), &brpb.StreamBackupError{ErrorCode: "x"}))
	putRaw(t, cli, "updated")
	putRaw(t, cli, "fresh")
	pauseRaw(t, cli, "fresh", nil)
	pauseRaw(t, cli, "orphan", nil) // a pause without a task: nothing to report
	resp, err := cli.Get(ctx, "any")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	ch := c.WatchTasks(ctx, known, rev+1)
	want := []string{"delete gone", "resume resumed", "pause repaused ERROR", "add updated", "add fresh", "pause fresh"}
	got := map[string]bool{}
	for range want {
		got[describe(next(t, ch))] = true
	}
	for _, w := range want {
		if !got[w] {
			t.Fatalf("after compaction got %v, missing %q", got, w)
		}
	}
	// Nothing else came (steady, stillpaused, orphan), and it keeps
	// watching live changes afterwards.
	if err := c.ResumeTask(ctx, "fresh"); err != nil {
		t.Fatal(err)
	}
	expect(t, ch, "resume fresh")
	putRaw(t, cli, "orphan")
	expect(t, ch, "add orphan", "pause orphan")
}

// TestWatchCompactedWhileCutOff: the watcher loses etcd (its connection is
// cut), changes are made and compacted away before it gets back, and it
// still reports exactly them, through a re-list.
func TestWatchCompactedWhileCutOff(t *testing.T) {
	_, cli, srv := setup(t)
	proxy := newTCPProxy(t, srv.Endpoint())
	watchCli, err := clientv3.New(clientv3.Config{Endpoints: []string{proxy.addr}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer watchCli.Close()
	c := meta.NewClient(watchCli)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	putRaw(t, cli, "a")
	putRaw(t, cli, "steady")
	known, rev, err := c.ListTasks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ch := c.WatchTasks(ctx, known, rev+1)
	putRaw(t, cli, "b")
	expect(t, ch, "add b")

	proxy.cut()
	if _, err := cli.Delete(ctx, meta.InfoKey("a")); err != nil {
		t.Fatal(err)
	}
	pauseRaw(t, cli, "b", nil)
	resp, err := cli.Compact(ctx, rev+3)
	if err != nil {
		t.Fatal(err)
	}
	compacted := resp.Header.Revision
	proxy.restore(t)

	first, second := next(t, ch), next(t, ch)
	got := map[string]bool{describe(first): true, describe(second): true}
	if !got["delete a"] || !got["pause b"] {
		t.Fatalf("got %v", got)
	}
	// Both come from one re-list (live events would carry their own
	// revisions), taken after the compaction.
	if first.Revision != second.Revision || first.Revision < compacted {
		t.Fatalf("revisions %d, %d (compacted at %d): not from a re-list", first.Revision, second.Revision, compacted)
	}
	putRaw(t, cli, "c")
	expect(t, ch, "add c")
}

// TestWatchSurvivesEtcdRestart: events written after etcd comes back are
// delivered on the same channel.
func TestWatchSurvivesEtcdRestart(t *testing.T) {
	c, _, srv := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	known, rev, err := c.ListTasks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ch := c.WatchTasks(ctx, known, rev+1)
	if err := c.PutTask(ctx, task("pitr"), ranges); err != nil {
		t.Fatal(err)
	}
	expect(t, ch, "add pitr")
	srv.Stop(t)
	srv.Restart(t)
	eventually.NoError(t, 20*time.Second, func(ctx context.Context) error { return c.PauseTask(ctx, "pitr", nil) },
		"etcd to come back and take the pause")
	expect(t, ch, "pause pitr")
}

func ExampleEventType() {
	fmt.Println(meta.EventAdd, meta.EventPause, meta.EventResume, meta.EventDelete)
	// Output: add pause resume delete
}
