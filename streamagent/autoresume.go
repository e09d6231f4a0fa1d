package streamagent

import (
	"context"
	"fmt"
	"os"
	"time"

	"logbackup/meta"
	"logbackup/proto/lbpb"
	"logbackup/storage"
	"logbackup/streamagent/errs"
)

// AutoResume says whether and how the coordinator resumes tasks paused by
// a recoverable error. A task a person paused is never resumed.
type AutoResume struct {
	Disabled    bool
	MaxAttempts int           // default 5
	Backoff     time.Duration // first wait after the pause; doubles per attempt (default 30 s, cap 30 min)
}

// recoverable codes: the cause can clear by itself (storage or network
// back), so trying again later is the right call. They are retryable
// codes, which reach a LastError only through the retry budget.
var recoverable = map[errs.Code]bool{
	errs.CodeStorageUnavailable: true, errs.CodeStorageThrottled: true,
	errs.CodeNetwork: true, errs.CodeDeadline: true, errs.CodeEtcdUnavailable: true, errs.CodePD: true, errs.CodeGRPC: true,
}

type resumeState struct {
	inc      int64
	attempts int
	next     time.Time
	pausedAt time.Time
}

// autoResumeOnce considers one paused task; the coordinator calls it each
// tick. It resumes only error pauses with a recoverable code, after a
// backoff, and only once the task's storage is writable again.
func (a *Agent) autoResumeOnce(ctx context.Context, st *meta.TaskStatus) {
	cfg := a.cfg.AutoResume
	name := st.Info.Name
	p := st.Pause.V2
	if cfg.Disabled || p == nil || !p.IsError() {
		delete(a.resumes, name)
		return // manual and legacy pauses are the operator's
	}
	e, err := p.ErrorPayload()
	if err != nil || e == nil || !recoverable[errs.Code(e.ErrorCode)] {
		return
	}
	rs := a.resumes[name]
	if rs == nil || rs.inc != st.Incarnation || !rs.pausedAt.Equal(p.OperationTime) {
		attempts := 0
		if rs != nil && rs.inc == st.Incarnation {
			attempts = rs.attempts // paused again after an auto-resume: the same error came back
		}
		rs = &resumeState{inc: st.Incarnation, attempts: attempts, pausedAt: p.OperationTime}
		rs.next = time.Now().Add(backoffFor(cfg.Backoff, attempts))
		a.resumes[name] = rs
	}
	if rs.attempts >= cfg.MaxAttempts || time.Now().Before(rs.next) {
		return
	}
	rs.attempts++
	rs.next = time.Now().Add(backoffFor(cfg.Backoff, rs.attempts))
	a.history(ctx, name, st.Incarnation, &lbpb.RecoveryEvent{Kind: lbpb.RecoveryEvent_AUTO_RESUME_ATTEMPT, Actor: lbpb.RecoveryEvent_COORDINATOR,
		ErrorCode: e.ErrorCode, Attempt: uint32(rs.attempts)})
	if err := a.probeStorage(ctx, st); err != nil {
		a.metrics.autoResumes.WithLabelValues("failed").Inc()
		a.history(ctx, name, st.Incarnation, &lbpb.RecoveryEvent{Kind: lbpb.RecoveryEvent_AUTO_RESUME_FAILED, Actor: lbpb.RecoveryEvent_COORDINATOR,
			ErrorCode: string(errs.Classify(err).Code), Message: storage.Redact(err.Error()), Attempt: uint32(rs.attempts)})
		return
	}
	// Errors first, then the pause key: a crash in between leaves a plain
	// pause, never a running task with stale errors.
	m := a.cfg.Meta.Incarnation(name, st.Incarnation)
	if err := m.ClearLastErrors(ctx, name); err != nil {
		return
	}
	if err := m.ResumeTask(ctx, name); err != nil {
		return
	}
	a.metrics.autoResumes.WithLabelValues("resumed").Inc()
	a.metrics.timeToRecover.Observe(time.Since(p.OperationTime).Seconds())
	a.history(ctx, name, st.Incarnation, &lbpb.RecoveryEvent{Kind: lbpb.RecoveryEvent_AUTO_RESUME_SUCCEEDED, Actor: lbpb.RecoveryEvent_COORDINATOR,
		ErrorCode: e.ErrorCode, Attempt: uint32(rs.attempts), Message: fmt.Sprintf("paused for %s", time.Since(p.OperationTime).Round(time.Second))})
}

func backoffFor(base time.Duration, attempts int) time.Duration {
	d := base
	for i := 0; i < attempts && d < 30*time.Minute; i++ {
		d *= 2
	}
	return min(d, 30*time.Minute)
}

// probeStorage checks the task's storage takes writes again.
func (a *Agent) probeStorage(ctx context.Context, st *meta.TaskStatus) error {
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s, err := a.cfg.OpenStorage(pctx, st.Info.Storage)
	if err != nil {
		return err
	}
	defer s.Close()
	return storage.CheckWritable(pctx, s)
}

// history records a recovery event; losing one is logged, never fatal.
func (a *Agent) history(ctx context.Context, task string, inc int64, ev *lbpb.RecoveryEvent) {
	if ev.HappenAtUnixMs == 0 {
		ev.HappenAtUnixMs = time.Now().UnixMilli()
	}
	if ev.StoreId == 0 {
		ev.StoreId = a.cfg.StoreID
	}
	if ev.OperatorHost == "" {
		ev.OperatorHost, _ = os.Hostname()
		ev.OperatorPid = int64(os.Getpid())
	}
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := a.cfg.Meta.Incarnation(task, inc).AppendHistory(hctx, task, inc, ev); err != nil {
		a.cfg.Logger.Warn("cannot record recovery history", "task", task, "err", err)
	}
}
