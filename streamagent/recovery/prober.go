package recovery

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"logbackup/meta"
	"logbackup/proto/lbpb"
	"logbackup/storage"
	"logbackup/streamagent/errs"
)

// One prober per paused task incarnation, on the coordinator only (one
// elected agent), so however many stores failed, storage coming back sees
// one probe per task every few seconds, at jittered times.

// startProber starts the task's prober unless one runs. Coordinator
// goroutine only.
func (r *Recovery) startProber(ctx context.Context, tr *taskRecovery) {
	if tr.done != nil {
		select {
		case <-tr.done:
		default:
			return
		}
	}
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	tr.cancel, tr.done = cancel, done
	r.d.Spawn(func() {
		defer close(done)
		r.probeLoop(pctx, tr)
	})
}

// stopProber stops the task's prober and waits for it. Never with tr.mu
// held: the prober takes it.
func (r *Recovery) stopProber(tr *taskRecovery) {
	if tr.cancel == nil {
		return
	}
	tr.cancel()
	<-tr.done
	tr.cancel, tr.done = nil, nil
}

// probeGap is one jittered gap between probe starts: interval ±20%, never
// more than maxProbeGap.
func probeGap(interval time.Duration) time.Duration {
	return min(interval*4/5+rand.N(interval*2/5+1), maxProbeGap)
}

// probeLoop probes the task's failing dependency until a probe is healthy
// and the resume goes through, or the tick stops it. The first probe comes
// soon (within a jittered second at most): the fault may have cleared
// already — an etcd pause, for one, is only written once etcd answers.
func (r *Recovery) probeLoop(ctx context.Context, tr *taskRecovery) {
	interval := r.d.Config.probeInterval()
	wait := rand.N(min(interval/5, time.Second) + 1)
	var st storage.Storage // opened once: opening costs more than a probe
	defer func() {
		if st != nil {
			st.Close()
		}
	}()
	for {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
		start := time.Now()
		tr.mu.Lock()
		var deps []string
		if s := tr.state; s != nil && s.Phase == meta.RecoveryProbing {
			deps = s.Dependencies
		}
		tr.mu.Unlock()
		if deps == nil {
			return // the tick moved the incident on; it stops or restarts this prober
		}
		dep, err := r.probe(ctx, tr, deps, &st)
		if ctx.Err() != nil {
			return
		}
		if r.afterProbe(ctx, tr, dep, err) {
			return
		}
		wait = max(0, probeGap(interval)-time.Since(start))
	}
}

// probe checks each dependency in turn, each under the probe timeout, and
// stops at the first that fails. A storage probe writes, reads back and
// deletes one small object under the task's prefix: three requests, one
// attempt each (the probe's own schedule is the retry).
func (r *Recovery) probe(ctx context.Context, tr *taskRecovery, deps []string, st *storage.Storage) (string, error) {
	a := &r.d
	for _, d := range deps {
		pctx, cancel := context.WithTimeout(ctx, a.Config.probeTimeout())
		var err error
		switch d {
		case depStorage:
			if *st == nil {
				*st, err = a.OpenProbe(pctx, tr.info.Storage)
			}
			if err == nil {
				err = storage.CheckWritable(pctx, *st)
			}
		case depPD:
			err = a.probePD(pctx)
		case depEtcd:
			err = a.Meta.ProbeEtcd(pctx, tr.task)
		default:
			err = fmt.Errorf("unknown dependency %q", d)
		}
		cancel()
		result := "ok"
		if err != nil {
			result = "failed"
		}
		a.Metrics.RecoveryProbes.WithLabelValues(d, result).Inc()
		if err != nil {
			return d, err
		}
	}
	return "", nil
}

// probePD asks PD for a timestamp: every flush needs one first.
func (a *Deps) probePD(ctx context.Context) error {
	rctx, cancel := meta.PDCallContext(ctx, a.Config.probeTimeout())
	defer cancel()
	if _, _, err := a.GetTS(rctx); err != nil {
		return fmt.Errorf("PD probe (GetTS): %w", err)
	}
	return nil
}

// afterProbe records the probe and, when it was healthy and no backoff
// holds, resumes the task. It says whether the prober is done.
func (r *Recovery) afterProbe(ctx context.Context, tr *taskRecovery, dep string, err error) bool {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	s := tr.state
	if s == nil || s.Phase != meta.RecoveryProbing {
		return true
	}
	now := time.Now()
	s.Probes++
	s.LastProbeAt, s.LastProbeOK, s.LastProbeError = now, err == nil, ""
	if err != nil {
		msg := storage.Redact(err.Error())
		if len(msg) > 300 {
			msg = msg[:300] + "…"
		}
		s.LastProbeError = dep + ": " + msg
	}
	done := false
	if err == nil && !now.Before(s.NextResumeAt) {
		done = r.resume(ctx, tr)
	}
	// Published when something changed, or at most once a second: the
	// probes of a short interval must not become etcd's load.
	if done || s.Probes == 1 || s.LastProbeOK != tr.publishedOK || now.Sub(tr.publishedAt) >= time.Second {
		r.publish(ctx, tr)
		tr.publishedOK, tr.publishedAt = s.LastProbeOK, now
	}
	return done
}

// resume clears the errors and removes the pause in one transaction,
// fenced to the incarnation and conditional on the pause still being the
// recoverable one just read. It says whether the prober is done: resumed,
// or the task is no longer paused by a recoverable error. tr.mu is held.
func (r *Recovery) resume(ctx context.Context, tr *taskRecovery) bool {
	a, s := &r.d, tr.state
	for range 3 { // a store's report may rewrite the pause meanwhile: read again
		st, err := a.Meta.GetTask(ctx, tr.task)
		if errors.Is(err, meta.ErrTaskNotFound) || (err == nil && st.Incarnation != tr.inc) {
			return true // stopped: nothing left to probe for
		}
		if err != nil {
			return false
		}
		class, e := ClassifyPause(st)
		if class != RecoverablePause {
			return true // resumed or paused otherwise meanwhile: the tick decides
		}
		if deps := recoverable[errs.Code(e.ErrorCode)]; strings.Join(deps, "+") != strings.Join(s.Dependencies, "+") {
			// Another recoverable error replaced the one probed for: probe
			// what it names first.
			s.ErrorCode, s.Dependencies = e.ErrorCode, deps
			return false
		}
		rev, err := a.Meta.Incarnation(tr.task, tr.inc).ResumeFromErrorPause(ctx, tr.task, st.PauseRevision())
		if errors.Is(err, meta.ErrPauseChanged) {
			continue
		}
		if err != nil {
			a.Log.Warn("automatic resume failed; next probe tries again", "task", tr.task, "err", err)
			return false
		}
		now := time.Now()
		paused := now.Sub(st.Pause.V2.OperationTime)
		s.Phase, s.ResumesAttempted, s.LastResumeAt, s.ResumeRevision = meta.RecoveryResumed, s.ResumesAttempted+1, now, rev
		a.Metrics.AutoResumes.WithLabelValues("resumed").Inc()
		a.Metrics.TimeToRecover.Observe(paused.Seconds())
		a.history(ctx, tr.task, tr.inc, &lbpb.RecoveryEvent{Kind: lbpb.RecoveryEvent_AUTO_RESUME_ATTEMPT, Actor: lbpb.RecoveryEvent_COORDINATOR,
			ErrorCode: e.ErrorCode, Attempt: uint32(s.ResumesAttempted),
			Message: fmt.Sprintf("resumed after a healthy %s probe; paused for %s, %d probes", strings.Join(s.Dependencies, "+"), paused.Round(time.Second), s.Probes)})
		a.Log.Info("resumed a task after a healthy probe", "task", tr.task, "code", e.ErrorCode, "attempt", s.ResumesAttempted, "paused", paused.Round(time.Second))
		return true
	}
	return false
}
