package streamagent

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"logbackup/proto/lbpb"
	"logbackup/streamagent/errs"
)

// TestCoordinatorTickDrivesRecovery: the agent's coordinator runs the
// automatic recovery (streamagent/recovery, whose steps its own tests
// cover) with the agent's parts: its tick (AdvanceOnce) starts a prober
// of a task paused by a storage outage, on the agent's lifetime, probing
// the storage the agent opens for probes, once however often it ticks;
// the prober resumes the task once storage answers; the next tick, the
// global checkpoint having passed the resume, judges it held (history,
// the agent's metrics) and ends the incident.
func TestCoordinatorTickDrivesRecovery(t *testing.T) {
	f := newEtcdAgentFixture(t, func(cfg *Config) { cfg.AutoResume = AutoResume{ProbeInterval: 20 * time.Millisecond} })
	ctx := context.Background()
	f.putTask("e2e")
	st := f.pauseWith("e2e", string(errs.CodeStorageUnavailable))
	f.probe.SetFail(fmt.Errorf("injected: %w", syscall.ECONNREFUSED))
	if err := f.a.AdvanceOnce(f.ctx); err != nil {
		t.Fatal(err)
	}
	if n := f.a.life.Load().live.Load(); n != 1 {
		t.Fatalf("%d goroutines of the agent after the tick, want its prober", n)
	}
	for range 3 { // a probe starts only after the one before it was handled
		select {
		case <-f.probe.Writes:
		case <-time.After(10 * time.Second):
			t.Fatal("the prober does not probe")
		}
	}
	if err := f.a.AdvanceOnce(f.ctx); err != nil {
		t.Fatal(err)
	}
	if n := f.a.life.Load().live.Load(); n != 1 {
		t.Fatalf("%d goroutines of the agent after a second tick, want the one prober", n)
	}
	if !f.task("e2e").Pause.Paused {
		t.Fatal("resumed while storage fails")
	}

	f.probe.SetFail(nil)
	f.waitUntil("the resume", func() bool { return !f.task("e2e").Pause.Paused })
	f.waitUntil("the prober to end", func() bool { return f.a.life.Load().live.Load() == 0 })
	if got := f.metric("logbackup_agent_auto_resumes_total", "outcome", "resumed"); got != 1 {
		t.Errorf("resumes %v, want 1", got)
	}

	// The task runs; its checkpoint passes the resume.
	if _, err := f.check.AdvanceGlobalCheckpoint(ctx, "e2e", etcdAgentTS(time.Now().Add(time.Second))); err != nil {
		t.Fatal(err)
	}
	if err := f.a.AdvanceOnce(f.ctx); err != nil {
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
