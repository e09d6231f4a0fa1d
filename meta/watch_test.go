package meta_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"logbackup/meta"
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
	expect(t, ch, "add pitr", "pause pitr MANUAL", "pause pitr err", "resume pitr", "error pitr err", "delete pitr")
	cancel()
	for range ch { // closed once ctx ends
	}
}

// TestWatchSurvivesCompaction: the watcher's revision is compacted away
// while it is behind; it re-lists and emits exactly the difference.
func TestWatchSurvivesCompaction(t *testing.T) {
	c, cli, _ := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := c.PutTask(ctx, task("gone"), ranges); err != nil {
		t.Fatal(err)
	}
	known, rev, err := c.ListTasks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Changes the watcher has not seen, then a compaction past them.
	if err := c.DeleteTask(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if err := c.PutTask(ctx, task("fresh"), ranges); err != nil {
		t.Fatal(err)
	}
	if err := c.PauseTask(ctx, "fresh", nil); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "any")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	ch := c.WatchTasks(ctx, known, rev+1)
	got := map[string]bool{}
	for i := 0; i < 3; i++ {
		got[describe(next(t, ch))] = true
	}
	for _, want := range []string{"delete gone", "add fresh", "pause fresh"} {
		if !got[want] {
			t.Fatalf("after compaction got %v, missing %q", got, want)
		}
	}
	// And it keeps watching live changes afterwards.
	if err := c.ResumeTask(ctx, "fresh"); err != nil {
		t.Fatal(err)
	}
	expect(t, ch, "resume fresh")
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
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := c.PauseTask(ctx, "pitr", nil)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd did not come back: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	expect(t, ch, "pause pitr")
}

func ExampleEventType() {
	fmt.Println(meta.EventAdd, meta.EventPause, meta.EventResume, meta.EventDelete)
	// Output: add pause resume delete
}
