package meta_test

import (
	"context"
	"errors"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/meta"
	"logbackup/tests/eventually"
)

// TestRecoveryStatePublished: the coordinator's recovery state is written
// through the incarnation's fence, read back as written, and removed with
// the rest of the agents' state — by the stale-state cleaner once the
// incarnation is gone, and by our stop.
func TestRecoveryStatePublished(t *testing.T) {
	c, cli, _ := setup(t)
	ctx := context.Background()
	if err := c.PutTask(ctx, task("pitr"), ranges); err != nil {
		t.Fatal(err)
	}
	first, _ := c.GetTask(ctx, "pitr")
	f := c.Incarnation("pitr", first.Incarnation)
	if s, err := c.GetRecoveryState(ctx, "pitr", first.Incarnation); err != nil || s != nil {
		t.Fatalf("before any publish: %+v, %v", s, err)
	}
	want := &meta.RecoveryState{Phase: meta.RecoveryProbing, ErrorCode: "KV:LogBackup:StorageUnavailable", Dependencies: []string{"storage"},
		ProbeIntervalMs: 5000, PausedAt: time.Unix(1700000000, 0).UTC(), Probes: 3, LastProbeAt: time.Unix(1700000015, 0).UTC(),
		LastProbeError: "503", ResumesAttempted: 1, FailedResumes: 1, MaxFailedResumes: 5, CoordinatorStore: 2}
	if err := f.PutRecoveryState(ctx, "pitr", first.Incarnation, want); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetRecoveryState(ctx, "pitr", first.Incarnation)
	if err != nil || got == nil || got.Phase != want.Phase || got.ErrorCode != want.ErrorCode || got.Probes != 3 ||
		!got.LastProbeAt.Equal(want.LastProbeAt) || got.ProbeInterval() != 5*time.Second || got.FailedResumes != 1 || got.LastProbeError != "503" {
		t.Fatalf("read back %+v (%v), want %+v", got, err, want)
	}
	if _, err := cli.Put(ctx, meta.RecoveryKey("pitr", first.Incarnation), "{not json"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetRecoveryState(ctx, "pitr", first.Incarnation); !errors.Is(err, meta.ErrMalformed) {
		t.Fatalf("garbage read as %v, want ErrMalformed", err)
	}
	if err := f.DeleteRecoveryState(ctx, "pitr", first.Incarnation); err != nil {
		t.Fatal(err)
	}
	if ks := keysUnder(t, cli, meta.RecoveryKey("pitr", first.Incarnation)); len(ks) != 0 {
		t.Fatalf("after delete: %v", ks)
	}
	if err := f.PutRecoveryState(ctx, "pitr", first.Incarnation, want); err != nil {
		t.Fatal(err)
	}

	// TiDB's stop and a new start: the old incarnation's state is refused,
	// invisible to the new one, and cleaned.
	brStop(t, cli, "pitr")
	if err := c.PutTask(ctx, task("pitr"), ranges); err != nil {
		t.Fatal(err)
	}
	second, _ := c.GetTask(ctx, "pitr")
	if err := f.PutRecoveryState(ctx, "pitr", first.Incarnation, want); !errors.Is(err, meta.ErrStaleIncarnation) {
		t.Fatalf("stale publish: %v, want ErrStaleIncarnation", err)
	}
	if s, err := c.GetRecoveryState(ctx, "pitr", second.Incarnation); err != nil || s != nil {
		t.Fatalf("new incarnation sees %+v (%v)", s, err)
	}
	if err := c.Incarnation("pitr", second.Incarnation).PutRecoveryState(ctx, "pitr", second.Incarnation, want); err != nil {
		t.Fatal(err)
	}
	if n, err := c.CleanStaleAgentState(ctx); err != nil || n != 1 {
		t.Fatalf("CleanStaleAgentState = %d, %v; want the first incarnation removed", n, err)
	}
	if ks := keysUnder(t, cli, meta.RecoveryKey("pitr", first.Incarnation)); len(ks) != 0 {
		t.Fatalf("stale recovery state left behind: %v", ks)
	}
	if s, _ := c.GetRecoveryState(ctx, "pitr", second.Incarnation); s == nil {
		t.Fatal("the live incarnation's recovery state was cleaned")
	}
	if err := c.DeleteTask(ctx, "pitr"); err != nil {
		t.Fatal(err)
	}
	if ks := keysUnder(t, cli, meta.Prefix+"/"); len(ks) != 0 {
		t.Fatalf("after stop: %v", ks)
	}
}

// TestResumeFromErrorPause: errors and pause go in one transaction, only
// while the pause is the one read; a pause rewritten meanwhile (a person,
// or another store's error) and a stopped task are left alone.
func TestResumeFromErrorPause(t *testing.T) {
	c, cli, _ := setup(t)
	ctx := context.Background()
	if err := c.PutTask(ctx, task("pitr"), ranges); err != nil {
		t.Fatal(err)
	}
	st, _ := c.GetTask(ctx, "pitr")
	f := c.Incarnation("pitr", st.Incarnation)
	e := &brpb.StreamBackupError{StoreId: 1, ErrorCode: "KV:LogBackup:StorageUnavailable", ErrorMessage: "503"}
	pauseWithError := func() *meta.TaskStatus {
		t.Helper()
		if err := f.ReportLastError(ctx, "pitr", e); err != nil {
			t.Fatal(err)
		}
		if err := f.PauseTask(ctx, "pitr", meta.NewErrorPause("h", 1, time.Now(), e)); err != nil {
			t.Fatal(err)
		}
		st, err := c.GetTask(ctx, "pitr")
		if err != nil || st.PauseRevision() == 0 {
			t.Fatalf("paused task: %+v %v", st, err)
		}
		return st
	}
	read := pauseWithError()
	// A person pauses after the read: the resume must not undo that.
	if err := f.PauseTask(ctx, "pitr", meta.NewManualPause("op", 2, time.Now(), "maintenance")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ResumeFromErrorPause(ctx, "pitr", read.PauseRevision()); !errors.Is(err, meta.ErrPauseChanged) {
		t.Fatalf("resume over a newer pause: %v, want ErrPauseChanged", err)
	}
	if now, _ := c.GetTask(ctx, "pitr"); !now.Pause.Paused || now.Pause.V2.IsError() {
		t.Fatal("the person's pause was removed")
	}
	if le, _ := c.LastErrors(ctx, "pitr"); len(le) != 1 {
		t.Fatalf("last errors touched by a refused resume: %v", le)
	}

	read = pauseWithError()
	rev, err := f.ResumeFromErrorPause(ctx, "pitr", read.PauseRevision())
	if err != nil || rev <= read.PauseRevision() {
		t.Fatalf("resume: rev %d, %v", rev, err)
	}
	if now, _ := c.GetTask(ctx, "pitr"); now.Pause.Paused {
		t.Fatal("still paused")
	}
	if le, _ := c.LastErrors(ctx, "pitr"); len(le) != 0 {
		t.Fatalf("last errors left: %v", le)
	}

	// Replacing the pause: conditional the same way.
	read = pauseWithError()
	gave := &brpb.StreamBackupError{StoreId: 2, ErrorCode: e.ErrorCode, ErrorMessage: "gave up"}
	if err := f.ReplaceErrorPause(ctx, "pitr", read.PauseRevision()-1, meta.NewErrorPause("c", 3, time.Now(), gave), gave); !errors.Is(err, meta.ErrPauseChanged) {
		t.Fatalf("replace over another pause: %v", err)
	}
	if err := f.ReplaceErrorPause(ctx, "pitr", read.PauseRevision(), meta.NewErrorPause("c", 3, time.Now(), gave), gave); err != nil {
		t.Fatal(err)
	}
	now, _ := c.GetTask(ctx, "pitr")
	if p, _ := now.Pause.V2.ErrorPayload(); p == nil || p.ErrorMessage != "gave up" {
		t.Fatalf("pause payload %+v", p)
	}
	if le, _ := c.LastErrors(ctx, "pitr"); le[2] == nil || le[2].ErrorMessage != "gave up" {
		t.Fatalf("last errors %v", le)
	}

	// A stopped task: the fence says so.
	brStop(t, cli, "pitr")
	if _, err := f.ResumeFromErrorPause(ctx, "pitr", now.PauseRevision()); !errors.Is(err, meta.ErrStaleIncarnation) {
		t.Fatalf("resume of a stopped task: %v, want ErrStaleIncarnation", err)
	}
	if err := c.ProbeEtcd(ctx, "pitr"); err != nil {
		t.Fatalf("etcd probe on a healthy etcd: %v", err)
	}
}

// TestProbeEtcdDown: the etcd probe fails within its deadline while etcd is
// down and answers again once it is back.
func TestProbeEtcdDown(t *testing.T) {
	c, _, srv := setup(t)
	ctx := context.Background()
	srv.Stop(t)
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	start := time.Now()
	if err := c.ProbeEtcd(pctx, "pitr"); err == nil {
		t.Fatal("probe of a stopped etcd succeeded")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("probe ignored its deadline: %s", d)
	}
	srv.Restart(t)
	eventually.NoError(t, 30*time.Second, func(ctx context.Context) error {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		return c.ProbeEtcd(pctx, "pitr")
	}, "the probe to succeed after etcd's restart")
}
