package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"logbackup/proto/lbpb"
	"logbackup/streamagent"
	"logbackup/tests/eventually"
	"logbackup/tests/s3test"
	"logbackup/tests/simcluster"
)

// TestAutoResume: storage failing past the retry budget pauses the task
// with a recoverable code; the coordinator probes storage while it is down
// (status says so, history does not list probes), resumes on the first
// healthy probe, the resume holds, and the pause window is backed up. A
// manual pause is never auto-resumed. Every resume and its outcome is in
// the task's history.
func TestAutoResume(t *testing.T) {
	t.Parallel() // its own cluster, mostly waiting: runs beside the other long tests (see TestMain)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s3 := s3test.Start(t, "bk")
	h := newHarness(t, ctx, simcluster.Config{SplitKeys: [][]byte{[]byte("t5")}}, s3.URL("bk", "log"), 0)
	c, m, etcd, startTS := h.c, h.m, h.etcd, h.startTS
	for _, s := range c.StoreIDs() {
		_, stop := h.agent(s, nil, func(cfg *streamagent.Config) {
			cfg.CoordinatorInterval = 100 * time.Millisecond
			cfg.RetryBudget = streamagent.RetryBudget{Attempts: 2, Duration: time.Hour}
			cfg.AutoResume = streamagent.AutoResume{ProbeInterval: 200 * time.Millisecond}
		})
		defer stop()
	}
	put := func(n int, tag string) {
		for i := 0; i < n; i++ {
			if _, err := c.Put(ctx, []byte(fmt.Sprintf("t%d%03d", i%9, i)), []byte(tag)); err != nil {
				t.Fatal(err)
			}
		}
	}
	hasEvent := func(kind lbpb.RecoveryEvent_Kind) bool {
		st, err := m.GetTask(ctx, "pitr")
		if err != nil {
			t.Fatal(err)
		}
		evs, err := m.History(ctx, "pitr", st.Incarnation)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			if ev.Kind == kind {
				return true
			}
		}
		return false
	}
	waitFor := func(what string, d time.Duration, cond func() bool) {
		t.Helper()
		eventually.True(t, d, cond, "%s", what)
	}
	put(20, "before")
	s3.SetFault(s3test.Fault{Status: 503, Remaining: -1, Match: func(r *http.Request) bool { return r.Method == http.MethodPut }})
	waitFor("an error pause", time.Minute, func() bool {
		st, err := m.GetTask(ctx, "pitr")
		return err == nil && st.Pause.V2.IsError()
	})
	st, _ := m.GetTask(ctx, "pitr")
	if e, _ := st.Pause.V2.ErrorPayload(); e == nil || e.ErrorCode != "KV:LogBackup:StorageUnavailable" || !strings.Contains(e.ErrorMessage, "retry budget exhausted") {
		t.Fatalf("pause payload: %+v", e)
	}
	put(20, "during")
	waitFor("failed storage probes", time.Minute, func() bool {
		rs, err := m.GetRecoveryState(ctx, "pitr", st.Incarnation)
		return err == nil && rs != nil && rs.Probes >= 3 && !rs.LastProbeOK
	})
	if st, _ := m.GetTask(ctx, "pitr"); !st.Pause.Paused {
		t.Fatal("auto-resumed while storage was still failing")
	}
	r := brRun{t: t, ep: etcd.Endpoint()}
	table := r.ok("stream", "status", "--task-name", "pitr")
	for _, want := range []string{"auto-recovery: probing storage every 200ms, last probe failed at ", ", 0 resumes attempted", "auto-recovery-probe-error: storage: "} {
		if !strings.Contains(table, want) {
			t.Fatalf("status lacks %q:\n%s", want, table)
		}
	}
	if strings.Contains(table, s3test.SecretKey) {
		t.Fatal("status leaks the storage secret")
	}
	if js := r.ok("stream", "status", "--task-name", "pitr", "--json"); !strings.Contains(js, `"auto_recovery":{"phase":"probing"`) || !strings.Contains(js, `"dependencies":["storage"]`) {
		t.Fatalf("JSON status lacks the auto-recovery state: %s", js)
	}
	if hasEvent(lbpb.RecoveryEvent_AUTO_RESUME_ATTEMPT) || hasEvent(lbpb.RecoveryEvent_AUTO_RESUME_FAILED) {
		t.Fatal("a probe was recorded in the history as a resume")
	}
	s3.ClearFault()
	waitFor("the auto-resume", time.Minute, func() bool {
		st, err := m.GetTask(ctx, "pitr")
		return err == nil && !st.Pause.Paused && hasEvent(lbpb.RecoveryEvent_AUTO_RESUME_ATTEMPT)
	})
	if le, _ := m.LastErrors(ctx, "pitr"); len(le) != 0 {
		t.Fatalf("auto-resume left %d last errors", len(le))
	}
	put(20, "after")
	end, _ := c.TSO(ctx)
	var global uint64
	global = h.waitGlobal(end)
	if n := assertBackedUp(t, ctx, s3.URL("bk", "log"), c, startTS, global); n != 60 {
		t.Fatalf("%d versions committed, want 60", n)
	}
	waitFor("the resume's outcome", time.Minute, func() bool { return hasEvent(lbpb.RecoveryEvent_AUTO_RESUME_SUCCEEDED) })
	if !hasEvent(lbpb.RecoveryEvent_ERROR_REPORTED) || hasEvent(lbpb.RecoveryEvent_AUTO_RESUME_FAILED) {
		t.Fatal("history lacks the error report, or shows a failed resume in a clean outage")
	}
	if rs, _ := m.GetRecoveryState(ctx, "pitr", st.Incarnation); rs != nil {
		t.Fatalf("recovery state left after the resume held: %+v", rs)
	}

	// A manual pause stays paused through many coordinator ticks.
	r.ok("stream", "pause", "--task-name", "pitr", "--message", "operator")
	// Time is the subject: nothing may happen during 20 coordinator ticks.
	time.Sleep(2 * time.Second)
	if st, _ := m.GetTask(ctx, "pitr"); !st.Pause.Paused {
		t.Fatal("a manual pause was resumed automatically")
	}
	hist := r.ok("stream", "history", "--task-name", "pitr")
	for _, want := range []string{"ERROR_REPORTED", "AUTO_RESUME_ATTEMPT", "AUTO_RESUME_SUCCEEDED", "PAUSED", "by operator"} {
		if !strings.Contains(hist, want) {
			t.Fatalf("history lacks %q:\n%s", want, hist)
		}
	}
	if !strings.Contains(r.ok("stream", "status", "--task-name", "pitr"), "history[-1]") {
		t.Fatal("status does not show the recent history")
	}
}
