package recovery

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"logbackup/meta"
	"logbackup/proto/lbpb"
	"logbackup/storage"
	"logbackup/streamagent/errs"
)

// The coordinator's automatic recovery (autoresume.go, prober.go) step by
// step, on a real embedded etcd (fixture_test.go). Most tests drive the
// steps themselves — a tick's step, one probe, what follows the probe — so
// nothing races them; the prober goroutine and the tick (the fixture's,
// as the coordinator's does it) are tested end to end once, and the
// agent's own tick driving it is streamagent's
// TestCoordinatorTickDrivesRecovery.
// The recovery paces itself on the wall clock (it has no clock seam): a
// backoff is passed by moving the state's NextResumeAt, never by waiting.

// recoveryTestStep runs one coordinator tick's step for st (as observe
// does, without starting the prober) and says whether the task wants one.
func recoveryTestStep(f *fixture, st *meta.TaskStatus, global uint64) (*taskRecovery, bool) {
	f.t.Helper()
	r := f.r
	tr := r.tasks[st.IncarnationKey()]
	if tr == nil {
		s, err := f.r.d.Meta.GetRecoveryState(f.ctx, st.Info.Name, st.Incarnation)
		if err != nil {
			f.t.Fatal(err)
		}
		tr = &taskRecovery{task: st.Info.Name, inc: st.Incarnation, info: st.Info, state: s}
		r.tasks[st.IncarnationKey()] = tr
	}
	class, e := ClassifyPause(st)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr, r.step(f.ctx, tr, st, class, e, global)
}

// recoveryTestProbe runs one probe of what tr's state names, and what
// follows it; done says the prober would stop (resumed, or nothing left to
// probe for).
func recoveryTestProbe(f *fixture, tr *taskRecovery) (dep string, err error, done bool) {
	f.t.Helper()
	ctx := f.ctx
	tr.mu.Lock()
	var deps []string
	if tr.state != nil {
		deps = tr.state.Dependencies
	}
	tr.mu.Unlock()
	var st storage.Storage
	dep, err = f.r.probe(ctx, tr, deps, &st)
	return dep, err, f.r.afterProbe(ctx, tr, dep, err)
}

// recoveryTestState is a copy of tr's state (nil: no incident).
func recoveryTestState(tr *taskRecovery) *meta.RecoveryState {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.state == nil {
		return nil
	}
	s := *tr.state
	return &s
}

// TestRecoveryProbesTheFailingDependency: for each recoverable code, a
// tick of the paused task starts an incident (published: probing, what
// is probed); each probe checks the dependencies the code names in order
// and stops at the first that fails; while it fails the task stays paused
// with its LastError and the failure is published (redacted); once it
// answers, the task is resumed with its LastErrors cleared, the resume
// recorded in the history, the state and the metrics.
func TestRecoveryProbesTheFailingDependency(t *testing.T) {
	cases := []struct {
		code   errs.Code
		broken string // the dependency that fails until healed
		before []string
	}{
		{errs.CodeStorageUnavailable, depStorage, nil},
		{errs.CodeStorageThrottled, depStorage, nil},
		{errs.CodePD, depPD, nil},
		{errs.CodeEtcdUnavailable, depEtcd, nil},
		{errs.CodeNetwork, depPD, []string{depStorage}},
		{errs.CodeDeadline, depEtcd, []string{depStorage, depPD}},
		{errs.CodeGRPC, depStorage, nil},
	}
	for _, c := range cases {
		t.Run(string(c.code)+"/"+c.broken, func(t *testing.T) {
			f := newFixture(t, func(cfg *AutoResume) {
				*cfg = AutoResume{ProbeInterval: time.Second, MaxAttempts: 3, Backoff: time.Hour}
			})
			f.putTask("rec")
			st := f.pauseWith("rec", string(c.code))
			secret := "https://bucket/x?X-Amz-Signature=SiGnAtUrE0123"
			switch c.broken {
			case depStorage:
				f.probe.SetFail(fmt.Errorf("PUT %s: %w", secret, syscall.ECONNREFUSED))
			case depPD:
				f.pd.failTS(errors.New("injected: PD has no leader " + secret))
			case depEtcd:
				f.kv.SetRule(func(op clientv3.Op) error {
					if op.IsGet() && op.IsCountOnly() && string(op.KeyBytes()) == meta.InfoKey("rec") {
						return errors.New("injected: etcd has no quorum " + secret)
					}
					return nil
				})
			}

			tr, wants := recoveryTestStep(f, st, 0)
			if !wants {
				t.Fatal("a task paused by a recoverable error wants no prober")
			}
			pub := f.recoveryState(st)
			if pub == nil || pub.Phase != meta.RecoveryProbing || pub.ErrorCode != string(c.code) ||
				strings.Join(pub.Dependencies, "+") != strings.Join(recoverable[c.code], "+") || pub.CoordinatorStore != fixtureStore || pub.MaxFailedResumes != 3 {
				t.Fatalf("published %+v, want probing %v for %s", pub, recoverable[c.code], c.code)
			}

			for i := 1; i <= 3; i++ { // held while the dependency fails
				dep, err, done := recoveryTestProbe(f, tr)
				if dep != c.broken || err == nil || done {
					t.Fatalf("probe %d: failed at %q (%v), done %v; want a failure at %s", i, dep, err, done, c.broken)
				}
				s := recoveryTestState(tr)
				if s.Phase != meta.RecoveryProbing || s.Probes != int64(i) || s.LastProbeOK || !strings.HasPrefix(s.LastProbeError, c.broken+": ") {
					t.Fatalf("after probe %d: %+v", i, s)
				}
				if strings.Contains(s.LastProbeError, "SiGnAtUrE0123") {
					t.Fatalf("the published probe error carries the credential: %s", s.LastProbeError)
				}
			}
			if got := f.metric("logbackup_agent_recovery_probes_total", "dependency", c.broken, "result", "failed"); got != 3 {
				t.Errorf("failed %s probes counted %v, want 3", c.broken, got)
			}
			for _, d := range c.before {
				if got := f.metric("logbackup_agent_recovery_probes_total", "dependency", d, "result", "ok"); got != 3 {
					t.Errorf("%s probed ok %v times, want 3 (probed before %s)", d, got, c.broken)
				}
			}
			if pub := f.recoveryState(st); pub.LastProbeOK || pub.Probes < 1 {
				t.Errorf("published %+v, want the failing probe", pub)
			}
			if p := f.task("rec").Pause; !p.Paused {
				t.Fatal("resumed while the probe fails")
			}
			if last, _ := f.check.LastErrors(context.Background(), "rec"); len(last) != 1 {
				t.Fatalf("last errors %v while held, want the one that paused it", last)
			}

			f.probe.SetFail(nil)
			f.pd.failTS(nil)
			f.kv.SetRule(nil)
			dep, err, done := recoveryTestProbe(f, tr)
			if dep != "" || err != nil || !done {
				t.Fatalf("healed probe: %q %v, done %v", dep, err, done)
			}
			now := f.task("rec")
			if now.Pause.Paused {
				t.Fatal("still paused after a healthy probe")
			}
			if last, err := f.check.LastErrors(context.Background(), "rec"); err != nil || len(last) != 0 {
				t.Errorf("last errors %v %v after the resume, want cleared", last, err)
			}
			s := recoveryTestState(tr)
			if s.Phase != meta.RecoveryResumed || s.ResumesAttempted != 1 || s.FailedResumes != 0 || s.ResumeRevision == 0 || s.LastResumeAt.IsZero() {
				t.Errorf("state after the resume %+v", s)
			}
			if pub := f.recoveryState(st); pub == nil || pub.Phase != meta.RecoveryResumed {
				t.Errorf("published %+v, want resumed", pub)
			}
			h := f.history(st)
			if len(h) != 1 || h[0].Kind != lbpb.RecoveryEvent_AUTO_RESUME_ATTEMPT || h[0].Actor != lbpb.RecoveryEvent_COORDINATOR ||
				h[0].Attempt != 1 || h[0].ErrorCode != string(c.code) || !strings.Contains(h[0].Message, "healthy "+strings.Join(recoverable[c.code], "+")+" probe") {
				t.Errorf("history %v, want one AUTO_RESUME_ATTEMPT", h)
			}
			if got := f.metric("logbackup_agent_auto_resumes_total", "outcome", "resumed"); got != 1 {
				t.Errorf("resumes counted %v, want 1", got)
			}
			if got := f.metric("logbackup_agent_time_to_recover_seconds"); got != 1 {
				t.Errorf("time to recover observed %v times, want 1", got)
			}
		})
	}
}

// TestRecoveryEndToEnd: the coordinator's tick (AdvanceOnce) starts the
// prober of a task paused by a storage outage; the prober probes on its
// own schedule and holds while storage fails, then resumes the task once
// it answers; the next tick, the global checkpoint having passed the
// resume, judges it held (history, metric) and ends the incident.
func TestRecoveryEndToEnd(t *testing.T) {
	f := newFixture(t, func(cfg *AutoResume) { *cfg = AutoResume{ProbeInterval: 20 * time.Millisecond} })
	ctx := context.Background()
	f.putTask("e2e")
	st := f.pauseWith("e2e", string(errs.CodeStorageUnavailable))
	f.probe.SetFail(fmt.Errorf("injected: %w", syscall.ECONNREFUSED))
	if err := f.tick(); err != nil {
		t.Fatal(err)
	}
	tr := f.r.tasks[st.IncarnationKey()]
	if tr == nil || tr.done == nil {
		t.Fatal("the tick started no prober")
	}
	for range 4 { // a probe starts only after the one before it was handled
		select {
		case <-f.probe.Writes:
		case <-time.After(10 * time.Second):
			t.Fatal("the prober does not probe")
		}
	}
	if !f.task("e2e").Pause.Paused {
		t.Fatal("resumed while storage fails")
	}
	if s := recoveryTestState(tr); s.Phase != meta.RecoveryProbing || s.Probes < 3 || s.LastProbeOK {
		t.Fatalf("state while storage fails: %+v", s)
	}
	// Another tick meanwhile changes nothing: one prober per task.
	prober := tr.done
	if err := f.tick(); err != nil {
		t.Fatal(err)
	}
	if tr.done != prober {
		t.Fatal("a second tick started a second prober")
	}

	f.probe.SetFail(nil)
	select {
	case <-tr.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the prober did not end after storage healed")
	}
	if f.task("e2e").Pause.Paused {
		t.Fatal("not resumed after a healthy probe")
	}
	if got := f.metric("logbackup_agent_auto_resumes_total", "outcome", "resumed"); got != 1 {
		t.Errorf("resumes %v, want 1", got)
	}

	// The task runs; its checkpoint passes the resume.
	if _, err := f.check.AdvanceGlobalCheckpoint(ctx, "e2e", tsAt(time.Now().Add(time.Second))); err != nil {
		t.Fatal(err)
	}
	if err := f.tick(); err != nil {
		t.Fatal(err)
	}
	if got := f.metric("logbackup_agent_auto_resumes_total", "outcome", "held"); got != 1 {
		t.Errorf("held resumes %v, want 1", got)
	}
	if k := f.historyKinds(st); k[lbpb.RecoveryEvent_AUTO_RESUME_ATTEMPT] != 1 || k[lbpb.RecoveryEvent_AUTO_RESUME_SUCCEEDED] != 1 {
		t.Errorf("history %v, want the attempt and its success", k)
	}
	if s := f.recoveryState(st); s != nil {
		t.Errorf("state %+v after the resume held, want the incident ended", s)
	}
}

// TestRecoveryFailedResumesBackOffThenGiveUp: a resume the task does not
// hold (it pauses again before its checkpoint passes the resume) is a
// failed resume: counted, recorded, and followed by a backoff that a
// healthy probe does not cut short, doubling per failed resume; at the
// bound recovery gives up: the pause is rewritten with recovery_gave_up,
// a LastError says so, and the task is never resumed automatically again.
func TestRecoveryFailedResumesBackOffThenGiveUp(t *testing.T) {
	f := newFixture(t, func(cfg *AutoResume) { *cfg = AutoResume{MaxAttempts: 3, Backoff: 10 * time.Minute} })
	f.putTask("flap")
	code := string(errs.CodeStorageUnavailable)
	st := f.pauseWith("flap", code)
	tr, _ := recoveryTestStep(f, st, 0)
	resume := func(attempt int) {
		t.Helper()
		if _, _, done := recoveryTestProbe(f, tr); !done || f.task("flap").Pause.Paused {
			t.Fatalf("resume %d: the healthy probe did not resume", attempt)
		}
		if s := recoveryTestState(tr); s.ResumesAttempted != attempt {
			t.Fatalf("resume %d: state %+v", attempt, s)
		}
	}
	resume(1)
	for failed := 1; failed <= 2; failed++ {
		st = f.pauseWith("flap", code) // the resumed task fails again at once
		before := time.Now()
		_, wants := recoveryTestStep(f, st, 0)
		s := recoveryTestState(tr)
		if !wants || s.Phase != meta.RecoveryProbing || s.FailedResumes != failed || s.Probes != 0 {
			t.Fatalf("failed resume %d: wants a prober %v, state %+v", failed, wants, s)
		}
		wait := 10 * time.Minute << (failed - 1) // doubling per failed resume
		if got := s.NextResumeAt.Sub(before); got < wait || got > wait+time.Second {
			t.Fatalf("failed resume %d: next resume in %s, want %s", failed, got, wait)
		}
		if got := f.metric("logbackup_agent_auto_resumes_total", "outcome", "failed"); got != float64(failed) {
			t.Errorf("failed resumes counted %v, want %d", got, failed)
		}
		// Within the backoff a healthy probe does not resume.
		if _, err, done := recoveryTestProbe(f, tr); err != nil || done || !f.task("flap").Pause.Paused {
			t.Fatalf("failed resume %d: resumed within the backoff (probe %v, done %v)", failed, err, done)
		}
		tr.mu.Lock()
		tr.state.NextResumeAt = time.Now().Add(-time.Millisecond) // the backoff passed
		tr.mu.Unlock()
		resume(failed + 1)
	}
	st = f.pauseWith("flap", code) // the third failed resume: the bound
	if _, wants := recoveryTestStep(f, st, 0); wants {
		t.Fatal("a prober is wanted after giving up")
	}
	if s := f.recoveryState(st); s == nil || s.Phase != meta.RecoveryGaveUp || s.FailedResumes != 3 {
		t.Fatalf("published %+v, want gave-up after 3 failed resumes", s)
	}
	if got := f.metric("logbackup_agent_auto_resumes_total", "outcome", "gave_up"); got != 1 {
		t.Errorf("gave_up counted %v, want 1", got)
	}
	gaveUp := f.task("flap")
	if !gaveUp.Pause.Paused || !gaveUp.Pause.V2.IsError() || !gaveUp.Pause.V2.RecoveryGaveUp {
		t.Fatalf("pause %+v, want an ERROR pause with recovery_gave_up", gaveUp.Pause.V2)
	}
	if class, _ := ClassifyPause(gaveUp); class != GaveUpPause {
		t.Fatalf("the pause classifies as %d, want GaveUpPause", class)
	}
	le := f.lastError(t, "flap")
	if le.ErrorCode != code || !strings.Contains(le.ErrorMessage, meta.RecoveryGaveUpMarker) || !strings.Contains(le.ErrorMessage, "--task-name flap --clear-error") {
		t.Errorf("LastError %v, want the gave-up message", le)
	}
	k := f.historyKinds(st)
	if k[lbpb.RecoveryEvent_AUTO_RESUME_ATTEMPT] != 3 || k[lbpb.RecoveryEvent_AUTO_RESUME_FAILED] != 3 {
		t.Errorf("history %v, want 3 attempts and 3 failures", k)
	}
	if h := f.history(st); !strings.Contains(h[len(h)-1].Message, meta.RecoveryGaveUpMarker) {
		t.Errorf("the last history event %v does not say recovery gave up", h[len(h)-1])
	}

	// Later ticks and healthy probes leave it to a person.
	for range 2 {
		if _, wants := recoveryTestStep(f, f.task("flap"), 0); wants {
			t.Fatal("a gave-up task wants a prober")
		}
		if _, _, done := recoveryTestProbe(f, tr); !done {
			t.Fatal("a probe of a gave-up incident goes on")
		}
	}
	if !f.task("flap").Pause.Paused {
		t.Fatal("a gave-up task was resumed")
	}
	if got := f.metric("logbackup_agent_auto_resumes_total", "outcome", "resumed"); got != 3 {
		t.Errorf("resumes %v, want 3", got)
	}
}

// TestRecoveryHeldThenFailedAnew: a resume whose checkpoint passed it
// held, even if the task pauses again before a tick saw it run: that is
// recorded as held, and the new pause is a new incident, counted from zero.
func TestRecoveryHeldThenFailedAnew(t *testing.T) {
	f := newFixture(t, func(cfg *AutoResume) { *cfg = AutoResume{MaxAttempts: 1, Backoff: time.Hour} })
	ctx := context.Background()
	f.putTask("anew")
	st := f.pauseWith("anew", string(errs.CodePD))
	tr, _ := recoveryTestStep(f, st, 0)
	if _, _, done := recoveryTestProbe(f, tr); !done {
		t.Fatal("not resumed")
	}
	if _, err := f.check.AdvanceGlobalCheckpoint(ctx, "anew", tsAt(time.Now().Add(time.Second))); err != nil {
		t.Fatal(err)
	}
	st = f.pauseWith("anew", string(errs.CodeStorageUnavailable))
	_, wants := recoveryTestStep(f, st, 0)
	s := recoveryTestState(tr)
	if !wants || s == nil || s.Phase != meta.RecoveryProbing || s.FailedResumes != 0 || s.ResumesAttempted != 0 || s.ErrorCode != string(errs.CodeStorageUnavailable) {
		t.Fatalf("wants %v, state %+v; want a new incident probing storage", wants, s)
	}
	if got := f.metric("logbackup_agent_auto_resumes_total", "outcome", "held"); got != 1 {
		t.Errorf("held %v, want 1", got)
	}
	if got := f.metric("logbackup_agent_auto_resumes_total", "outcome", "failed"); got != 0 {
		t.Errorf("failed %v, want 0 (with a bound of 1, a failure would have given up)", got)
	}
}

// TestRecoveryNeverResumesNonRecoverable: a task paused by a person, or by
// an error no probe can clear, gets no incident, no prober, no probe, no
// history from the coordinator and stays paused however many ticks pass;
// neither does a recoverable one when automatic recovery is disabled.
func TestRecoveryNeverResumesNonRecoverable(t *testing.T) {
	cases := []struct {
		name     string
		code     string // "" a person's pause
		disabled bool
	}{
		{"a person's pause", "", false},
		{"access denied", string(errs.CodeStorageAccessDenied), false},
		{"TiKV's Io", string(errs.CodeIo), false},
		{"checkpoint lag", string(errs.CodeCheckpointLag), false},
		{"malformed metadata", string(errs.CodeMalformedMetadata), false},
		{"recoverable, recovery disabled", string(errs.CodeStorageUnavailable), true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, func(cfg *AutoResume) {
				*cfg = AutoResume{Disabled: c.disabled, ProbeInterval: 10 * time.Millisecond}
			})
			ctx := context.Background()
			st := f.putTask("keep")
			if c.code == "" {
				if err := f.check.PauseTask(ctx, "keep", meta.NewManualPause("h", 1, time.Now(), "maintenance")); err != nil {
					t.Fatal(err)
				}
			} else {
				st = f.pauseWith("keep", c.code)
			}
			for range 3 {
				if err := f.tick(); err != nil {
					t.Fatal(err)
				}
			}
			if tr := f.r.tasks[st.IncarnationKey()]; tr == nil || tr.done != nil || tr.state != nil {
				t.Fatalf("recovery %+v, want followed with no incident and no prober", tr)
			}
			if s := f.recoveryState(st); s != nil {
				t.Errorf("published %+v", s)
			}
			if h := f.history(st); len(h) != 0 {
				t.Errorf("history %v", h)
			}
			if len(f.probe.Writes) != 0 || f.metric("logbackup_agent_recovery_probes_total") != 0 {
				t.Error("probed")
			}
			if !f.task("keep").Pause.Paused {
				t.Fatal("resumed")
			}
		})
	}
}

// TestRecoveryResumedThenNonRecoverable: a task resumed automatically that
// pauses again, before its checkpoint passed the resume, with an error no
// probe clears: a failed resume, recorded as one a person decides, and the
// incident ends with no prober.
func TestRecoveryResumedThenNonRecoverable(t *testing.T) {
	f := newFixture(t, nil)
	f.putTask("worse")
	st := f.pauseWith("worse", string(errs.CodeStorageUnavailable))
	tr, _ := recoveryTestStep(f, st, 0)
	if _, _, done := recoveryTestProbe(f, tr); !done {
		t.Fatal("not resumed")
	}
	st = f.pauseWith("worse", string(errs.CodeStorageAccessDenied))
	if _, wants := recoveryTestStep(f, st, 0); wants {
		t.Fatal("a prober is wanted for an access denial")
	}
	if s := f.recoveryState(st); s != nil || recoveryTestState(tr) != nil {
		t.Errorf("the incident did not end: %+v", s)
	}
	h := f.history(st)
	last := h[len(h)-1]
	if last.Kind != lbpb.RecoveryEvent_AUTO_RESUME_FAILED || last.ErrorCode != string(errs.CodeStorageAccessDenied) || !strings.Contains(last.Message, "a person decides") {
		t.Errorf("last history event %v", last)
	}
	if got := f.metric("logbackup_agent_auto_resumes_total", "outcome", "failed"); got != 1 {
		t.Errorf("failed %v, want 1", got)
	}
	if !f.task("worse").Pause.Paused {
		t.Fatal("resumed")
	}
}

// TestRecoveryAcrossCoordinators: a coordinator that loses its election
// stops its probers and leaves the published state; the next coordinator
// continues the incident where it was left, so failed resumes count
// against the same bound.
func TestRecoveryAcrossCoordinators(t *testing.T) {
	f := newFixture(t, func(cfg *AutoResume) {
		*cfg = AutoResume{ProbeInterval: time.Hour, MaxAttempts: 2, Backoff: time.Hour}
	})
	f.putTask("handover")
	st := f.pauseWith("handover", string(errs.CodeEtcdUnavailable))
	tr, _ := recoveryTestStep(f, st, 0)
	if _, _, done := recoveryTestProbe(f, tr); !done {
		t.Fatal("not resumed")
	}
	st = f.pauseWith("handover", string(errs.CodeEtcdUnavailable))
	if err := f.tick(); err != nil { // one failed resume; its prober starts
		t.Fatal(err)
	}
	if tr.done == nil {
		t.Fatal("no prober")
	}
	prober := tr.done
	f.r.ForgetExcept(nil) // lost the election
	select {
	case <-prober:
	default:
		t.Fatal("the prober outlived the coordinator's term")
	}
	if len(f.r.tasks) != 0 {
		t.Fatal("the old coordinator kept its incidents")
	}
	if s := f.recoveryState(st); s == nil || s.FailedResumes != 1 || s.Phase != meta.RecoveryProbing {
		t.Fatalf("published %+v, want the incident left for the next coordinator", s)
	}

	// The next coordinator (this agent elected again, knowing nothing)
	// picks it up from etcd on its first tick: one more failed resume
	// reaches the bound. Its prober is stopped, so the test's own probes
	// are the only ones.
	f.r.Observe(f.ctx, st, 0)
	tr = f.r.tasks[st.IncarnationKey()]
	if tr == nil {
		t.Fatal("the tick did not follow the task")
	}
	f.r.stopProber(tr)
	if s := recoveryTestState(tr); s == nil || s.FailedResumes != 1 || s.Phase != meta.RecoveryProbing {
		t.Fatalf("taken over %+v, want the failed resume counted", s)
	}
	tr.mu.Lock()
	tr.state.NextResumeAt = time.Time{}
	tr.mu.Unlock()
	if _, _, done := recoveryTestProbe(f, tr); !done {
		t.Fatal("not resumed")
	}
	st = f.pauseWith("handover", string(errs.CodeEtcdUnavailable))
	recoveryTestStep(f, st, 0)
	if s := f.recoveryState(st); s == nil || s.Phase != meta.RecoveryGaveUp || s.FailedResumes != 2 {
		t.Fatalf("published %+v, want gave-up at the bound of 2", s)
	}
}
