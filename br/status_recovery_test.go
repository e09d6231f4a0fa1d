package br

import (
	"strings"
	"testing"
	"time"

	"logbackup/meta"
	"logbackup/proto/lbpb"
)

// TestAutoRecoveryLine: the status row says what is probed, how often, the
// last probe and its time, and the resumes so far, in each phase.
func TestAutoRecoveryLine(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	probing := &meta.RecoveryState{Phase: meta.RecoveryProbing, Dependencies: []string{"storage"}, ProbeIntervalMs: 5000,
		LastProbeAt: now.Add(-3 * time.Second), LastProbeOK: false, ResumesAttempted: 0, MaxFailedResumes: 5}
	cases := []struct {
		name string
		s    *meta.RecoveryState
		want []string
	}{
		{"probing", probing, []string{"probing storage every 5s, last probe failed at 2026-12-01T11:59:57Z, 0 resumes attempted"}},
		{"no probe yet", &meta.RecoveryState{Phase: meta.RecoveryProbing, Dependencies: []string{"storage", "pd", "etcd"}, ProbeIntervalMs: 5000},
			[]string{"probing storage+pd+etcd every 5s, no probe yet, 0 resumes attempted"}},
		{"backing off", &meta.RecoveryState{Phase: meta.RecoveryProbing, Dependencies: []string{"pd"}, ProbeIntervalMs: 5000, LastProbeAt: now,
			LastProbeOK: true, ResumesAttempted: 2, FailedResumes: 2, MaxFailedResumes: 5, NextResumeAt: now.Add(time.Minute)},
			[]string{"probing pd every 5s, last probe ok at 2026-12-01T12:00:00Z, 2 resumes attempted (2 of 5 allowed failed again); no resume before 2026-12-01T12:01:00Z"}},
		{"resumed", &meta.RecoveryState{Phase: meta.RecoveryResumed, Dependencies: []string{"etcd"}, ResumesAttempted: 1, LastResumeAt: now},
			[]string{"resumed at 2026-12-01T12:00:00Z after a healthy etcd probe, 1 resumes attempted"}},
		{"gave up", &meta.RecoveryState{Phase: meta.RecoveryGaveUp, Dependencies: []string{"storage"}, FailedResumes: 5, MaxFailedResumes: 5},
			[]string{"○ gave up: 5 of 5 resumes failed again after a healthy storage probe; a person decides"}},
	}
	for _, c := range cases {
		got := autoRecoveryLine(c.s, now, time.UTC)
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: %q lacks %q", c.name, got, w)
			}
		}
	}
	// The row and the probe error row appear in the table of a paused task.
	probing.LastProbeError = "storage: 503 SlowDown"
	rows := taskRows(&TaskView{Name: "pitr", Status: StatusError, AutoRecovery: probing}, now, time.UTC)
	var keys []string
	for _, r := range rows {
		keys = append(keys, r.key)
	}
	if k := strings.Join(keys, ","); !strings.Contains(k, "auto-recovery,auto-recovery-probe-error") {
		t.Fatalf("rows %s", k)
	}
}

// TestHistoryOutcome: each automatic resume event says its outcome.
func TestHistoryOutcome(t *testing.T) {
	for kind, msg := range map[lbpb.RecoveryEvent_Kind]string{
		lbpb.RecoveryEvent_AUTO_RESUME_ATTEMPT:   "[resumed]",
		lbpb.RecoveryEvent_AUTO_RESUME_SUCCEEDED: "[held]",
		lbpb.RecoveryEvent_AUTO_RESUME_FAILED:    "[failed]",
	} {
		if l := HistoryLine(&lbpb.RecoveryEvent{Kind: kind, Actor: lbpb.RecoveryEvent_COORDINATOR, Attempt: 1}, time.UTC); !strings.Contains(l, msg) {
			t.Errorf("%s: %q lacks %s", kind, l, msg)
		}
	}
	gave := &lbpb.RecoveryEvent{Kind: lbpb.RecoveryEvent_AUTO_RESUME_FAILED, Message: meta.RecoveryGaveUpMarker + ": 5 resumes"}
	if l := HistoryLine(gave, time.UTC); !strings.Contains(l, "[gave_up]") {
		t.Errorf("%q lacks [gave_up]", l)
	}
	if l := HistoryLine(&lbpb.RecoveryEvent{Kind: lbpb.RecoveryEvent_PAUSED}, time.UTC); strings.Contains(l, "[") {
		t.Errorf("a pause has an outcome: %q", l)
	}
}
