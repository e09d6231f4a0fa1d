package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"logbackup/meta"
	"logbackup/tests/eventually"
	"logbackup/tests/simcluster"
)

// TestAgentsReportCorruptTaskInfo: garbage in info/<task> makes the agents
// write a MalformedMetadata LastError and pause the task, instead of
// stalling while the lag grows unseen.
func TestAgentsReportCorruptTaskInfo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h := newHarness(t, ctx, simcluster.Config{Stores: 1}, "local://"+filepath.Join(t.TempDir(), "b"), 0)
	_, stop := h.agent(1, nil, nil)
	defer stop()
	if _, err := h.etcd.Client(t).Put(ctx, meta.InfoKey("pitr"), "\xff\x00garbage"); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 30*time.Second, func() bool {
		le, err := h.m.Tolerant(new([]meta.CorruptRecord)).LastErrors(ctx, "pitr")
		if err != nil || len(le) != 1 || le[1] == nil {
			return false
		}
		if le[1].ErrorCode != "KV:LogBackup:MalformedMetadata" || !strings.Contains(le[1].ErrorMessage, meta.InfoKey("pitr")) {
			t.Fatalf("LastError %s: %s", le[1].ErrorCode, le[1].ErrorMessage)
		}
		return true
	}, "a LastError for the corrupt task info")
	// The fatal path writes the LastError, then the pause.
	eventually.NoError(t, 30*time.Second, func(ctx context.Context) error {
		var bad []meta.CorruptRecord
		st, err := h.m.Tolerant(&bad).GetTask(ctx, "pitr")
		if err == nil && !(st.Pause.Paused && st.Pause.V2.IsError()) {
			err = fmt.Errorf("task %+v", st)
		}
		return err
	}, "an ERROR pause of the task")
}

// TestImplausibleGlobalCheckpointReplaced: a central_global of 0xFF…FF
// (from a broken tool or clock) would stop the checkpoint forever, since
// checkpoints never go down, and would make the agents skip every change as
// "already backed up". It is shown as corrupt, ignored as a floor, and
// replaced by the coordinator's next plausible value; nothing is lost.
func TestImplausibleGlobalCheckpointReplaced(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "b")
	h := newHarness(t, ctx, simcluster.Config{Stores: 1}, "local://"+dir, 0)
	if _, err := h.etcd.Client(t).Put(ctx, meta.GlobalCheckpointKey("pitr"), string([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})); err != nil {
		t.Fatal(err)
	}
	if _, err := h.m.AdvanceGlobalCheckpoint(ctx, "pitr", ^uint64(0)); err == nil {
		t.Fatal("an implausible checkpoint was written")
	}
	_, stop := h.agent(1, nil, nil)
	defer stop()
	for i := 0; i < 20; i++ {
		if _, err := h.c.Put(ctx, []byte("t1"), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	end, _ := h.c.TSO(ctx)
	global := h.waitGlobal(end)
	if global == ^uint64(0) {
		t.Fatal("the implausible checkpoint stood")
	}
	if n := assertBackedUp(t, ctx, "local://"+dir, h.c, h.startTS, global); n != 20 {
		t.Fatalf("%d versions, want 20", n)
	}
}
