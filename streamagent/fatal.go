package streamagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/tikv/client-go/v2/oracle"

	"logbackup/meta"
	"logbackup/proto/lbpb"
	"logbackup/storage"
	"logbackup/streamagent/errs"
	"logbackup/streamagent/metrics"
	"logbackup/streamagent/recovery"
	"logbackup/streamagent/retry"
)

// gcGuardTTL keeps the data a resume needs from being garbage collected
// while a task is paused by an error (TiKV: 24 h).
const gcGuardTTL = 24 * time.Hour

// noteError counts an error by code and decides, with the budget,
// whether it is fatal.
func (a *Agent) noteError(b *retry.Counter, err error) *retry.Fatal {
	info := errs.Classify(err)
	a.metrics.CountError(string(info.Code))
	return b.Fail(time.Now(), info, err)
}

// reportFatal runs the fatal path for a stopped task, in TiKV's order:
// count it, write the LastError, record it in the history, pause with
// severity ERROR, guard the GC safepoint, log once. The pause comes after
// the LastError and the history event because it is what others act on:
// automatic recovery may resume the task within a second of seeing it, and
// a person reads the error next to it. The GC guard (PD) neither waits for
// the etcd writes nor holds them back. Failed etcd writes are retried until they succeed or ctx
// ends; the task's observers are already gone and its buffers dropped, so
// no checkpoint can move meanwhile.
func (a *Agent) reportFatal(ctx context.Context, ts *meta.TaskStatus, f *retry.Fatal) {
	task, inc := ts.Info.Name, ts.Incarnation
	// Fenced: a fatal error of an incarnation that was stopped meanwhile
	// must not pause or blame the task started after it.
	m := a.cfg.Meta.Incarnation(task, inc)
	a.metrics.CountFatal(string(f.Info.Code))
	a.metrics.SetTaskStatus(task, metrics.StatusError)
	msg := fmt.Sprintf("[store = %d] %s; cause: %s; action: %s", a.cfg.StoreID, storage.Redact(f.Err.Error()), f.Info.Cause, f.Info.Action)
	lastErr := &brpb.StreamBackupError{HappenAt: uint64(time.Now().UnixMilli()), ErrorCode: string(f.Info.Code), ErrorMessage: msg, StoreId: a.cfg.StoreID}
	a.cfg.Logger.Error("task meets a fatal error; pausing it", "task", task, "code", f.Info.Code, "err", storage.Redact(f.Err.Error()))
	host, _ := os.Hostname()
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"report last error", func(sctx context.Context) error {
			if err := m.ReportLastError(sctx, task, lastErr); err != nil {
				return err
			}
			// Best effort, once, on a deadline of its own: the history
			// is for people, and the pause must not wait on it.
			a.history(ctx, task, inc, &lbpb.RecoveryEvent{Kind: lbpb.RecoveryEvent_ERROR_REPORTED, Actor: lbpb.RecoveryEvent_AGENT,
				ErrorCode: string(f.Info.Code), Message: msg, HappenAtUnixMs: int64(lastErr.HappenAt)})
			return nil
		}},
		{"pause task", func(ctx context.Context) error {
			return m.PauseTask(ctx, task, meta.NewErrorPause(host, os.Getpid(), time.Now(), lastErr))
		}},
		{"guard gc safepoint", func(ctx context.Context) error { return a.guardGC(ctx, task, inc) }},
	}
	const reportStep, pauseStep = 0, 1
	// Every round tries every step still pending, so PD refusing the
	// safepoint never holds back the pause, nor a refused etcd write the
	// guard; the pause alone waits for the report. etcd steps are retried until they land;
	// the GC guard is best effort after a few tries, as in TiKV.
	done := make([]bool, len(steps))
	bo := retry.NewBackoff(100*time.Millisecond, 5*time.Second)
	for round := 1; ; round++ {
		pending := false
		for i, s := range steps {
			if done[i] {
				continue
			}
			if i == pauseStep && !done[reportStep] {
				pending = true
				continue
			}
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := s.fn(sctx)
			cancel()
			switch {
			case errors.Is(err, meta.ErrTaskNotFound) || errors.Is(err, meta.ErrStaleIncarnation):
				// Stopped or started anew meanwhile: nothing left to report to.
				a.cfg.Logger.Warn("task stopped before its fatal error was reported", "task", task, "step", s.name)
				return
			case err == nil:
				done[i] = true
			case s.name == "guard gc safepoint" && round >= 5:
				a.cfg.Logger.Warn("cannot set the GC guard of a paused task", "task", task, "err", err)
				done[i] = true
			default:
				pending = true
				a.cfg.Logger.Warn("fatal path step failed; retrying", "task", task, "step", s.name, "err", err)
			}
		}
		if !pending || ctx.Err() != nil {
			return
		}
		if !retry.Sleep(ctx, bo.NextBackOff()) {
			return
		}
	}
}

// history records a recovery event of this agent's store.
func (a *Agent) history(ctx context.Context, task string, inc int64, ev *lbpb.RecoveryEvent) {
	recovery.RecordEvent(ctx, a.cfg.Meta, a.cfg.StoreID, a.cfg.Logger, task, inc, ev)
}

// guardGC sets a PD service safepoint at the task's checkpoint − 1 so the
// changes a resume rescans are not collected while the task is paused.
func (a *Agent) guardGC(ctx context.Context, task string, inc int64) error {
	st, err := a.cfg.Meta.GetTask(ctx, task)
	if errors.Is(err, meta.ErrTaskNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.Incarnation != inc {
		return nil
	}
	cp := st.Info.StartTs
	if g, ok, err := a.cfg.Meta.GlobalCheckpoint(ctx, task); err != nil {
		return err
	} else if ok {
		cp = max(cp, g)
	}
	if cp == 0 {
		return nil
	}
	_, err = a.cfg.PD.UpdateServiceGCSafePoint(ctx, meta.PauseGuardID(task, a.cfg.StoreID), int64(gcGuardTTL/time.Second), cp-1)
	return err
}

// checkLag pauses a running task whose global checkpoint lags more than
// the limit, with an ERROR pause that says so (as BR's advancer does). The
// code is not recoverable: a person decides, since resuming only helps
// once the cause is fixed.
func (a *Agent) checkLag(ctx context.Context, t *meta.TaskStatus, checkpoint uint64) error {
	if a.cfg.LagLimit < 0 || checkpoint == 0 {
		return nil
	}
	at := oracle.GetTimeFromTS(checkpoint)
	lag := time.Since(at)
	if lag <= a.cfg.LagLimit {
		return nil
	}
	info := errs.Lookup(errs.CodeCheckpointLag)
	msg := fmt.Sprintf("The checkpoint is at %s, now it is %s, the lag is too huge (%s) hence pause the task to avoid impaction to the cluster; action: %s",
		at.UTC().Format(time.RFC3339), time.Now().UTC().Format(time.RFC3339), lag.Round(time.Second), info.Action)
	e := &brpb.StreamBackupError{HappenAt: uint64(time.Now().UnixMilli()), ErrorCode: string(info.Code), ErrorMessage: msg, StoreId: a.cfg.StoreID}
	host, _ := os.Hostname()
	if err := a.cfg.Meta.Incarnation(t.Info.Name, t.Incarnation).PauseTask(ctx, t.Info.Name, meta.NewErrorPause(host, os.Getpid(), time.Now(), e)); err != nil {
		return fmt.Errorf("pause lagging task %q: %w", t.Info.Name, err)
	}
	a.metrics.CountFatal(string(info.Code))
	a.cfg.Logger.Error("pausing a task whose checkpoint lags too much", "task", t.Info.Name, "lag", lag.Round(time.Second))
	a.history(ctx, t.Info.Name, t.Incarnation, &lbpb.RecoveryEvent{Kind: lbpb.RecoveryEvent_PAUSED, Actor: lbpb.RecoveryEvent_COORDINATOR,
		ErrorCode: string(info.Code), Message: msg})
	return nil
}

// dropSafePoints removes this store's safepoints of a task: the flush one
// when the task stops, the pause guard when it stops or resumes.
func (a *Agent) dropSafePoints(ctx context.Context, task string, flush bool) {
	ids := []string{meta.PauseGuardID(task, a.cfg.StoreID)}
	if flush {
		ids = append(ids, meta.FlushSafePointID(task, a.cfg.StoreID))
	}
	for _, id := range ids {
		rctx, cancel := meta.PDCallContext(ctx, 10*time.Second)
		// TTL 0 removes a service safepoint.
		if _, err := a.cfg.PD.UpdateServiceGCSafePoint(rctx, id, 0, 0); err != nil {
			a.cfg.Logger.Warn("cannot remove a GC safepoint; it expires with its TTL", "id", id, "err", err)
		}
		cancel()
	}
}
