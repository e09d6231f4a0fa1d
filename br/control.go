package br

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	pd "github.com/tikv/pd/client"

	"logbackup/meta"
	"logbackup/proto/lbpb"
)

// DefaultPauseGCTTL is BR's default --gc-ttl of `log pause` (24 h).
const DefaultPauseGCTTL = 24 * time.Hour

// PauseSafePointID is the service safepoint BR keeps while a task is
// paused.
func PauseSafePointID(task string) string { return task + "_pause_safepoint" }

// Pause pauses a running task with a MANUAL PauseV2 record naming this
// operator, after setting BR's pause safepoint at the checkpoint − 1 for
// gcTTL (0: 24 h) so the changes a resume rescans are kept. Agents flush
// what they buffered and stop observing.
func Pause(ctx context.Context, env *Env, name, message string, gcTTL time.Duration, w io.Writer) error {
	t, err := getTaskTolerant(ctx, env, name)
	if err != nil {
		return err
	}
	if t.InfoErr != nil {
		return unreadableInfo(name, t.InfoErr)
	}
	if t.Pause.Paused {
		return userError("resume it with `br stream resume`", nil, "the task %s is paused already", name)
	}
	if gcTTL < 0 {
		return userError("give --gc-ttl as a positive duration, e.g. 24h", nil, "invalid --gc-ttl %s", gcTTL)
	}
	if gcTTL == 0 {
		gcTTL = DefaultPauseGCTTL
	}
	pdc, err := env.pd(ctx)
	if err != nil {
		return err
	}
	cp, err := taskCheckpoint(ctx, env, t)
	if err != nil {
		return err
	}
	if err := meta.SetServiceSafePoint(ctx, pdc, PauseSafePointID(name), gcTTL, cp-1); err != nil {
		if errors.Is(err, meta.ErrGCPassed) {
			return userError("the checkpoint is already collectable: stop the task and start a new one after a new full backup", err,
				"cannot pause task %q", name)
		}
		return userError("check PD's health", err, "cannot set the pause GC safepoint of task %q", name)
	}
	p := meta.NewManualPause(env.Hostname, env.PID, env.now(), message)
	if err := env.Meta.PauseTask(ctx, name, p); err != nil {
		return fmt.Errorf("pause task %q: %w", name, err)
	}
	record(ctx, env, t, lbpb.RecoveryEvent_PAUSED, message, w)
	fmt.Fprintf(w, "Task %q paused.\n", name)
	return nil
}

// Resume resumes a paused task. A task paused by an error (a store reported
// a last error, or the pause record has severity ERROR) is only resumed with
// clearError, after the operator has fixed the cause: resuming it blindly
// would hit the same error again. Resuming a running task is a no-op.
func Resume(ctx context.Context, env *Env, name string, clearError bool, w io.Writer) error {
	t, err := getTaskTolerant(ctx, env, name)
	if err != nil {
		return err
	}
	if t.InfoErr != nil {
		return unreadableInfo(name, t.InfoErr)
	}
	// Unreadable error or pause records may record an error: they count as
	// errors, and --clear-error replaces them with the rest.
	var bad []meta.CorruptRecord
	errs, err := env.Meta.Tolerant(&bad).LastErrors(ctx, name)
	if err != nil {
		return fmt.Errorf("read last errors of %q: %w", name, err)
	}
	for _, r := range bad {
		fmt.Fprintf(w, "Unreadable error record %s: %v\n", r.Key, r.Err)
	}
	if t.PauseErr != nil {
		fmt.Fprintf(w, "Unreadable pause record: %v\n", t.PauseErr)
	}
	records := len(errs) + len(bad) // what --clear-error removes
	if !t.Pause.Paused {
		if records > 0 && clearError {
			if err := env.Meta.ClearLastErrors(ctx, name); err != nil {
				return fmt.Errorf("clear last errors of %q: %w", name, err)
			}
			fmt.Fprintf(w, "The task %s is active already; cleared %d stale error record(s).\n", name, records)
			return nil
		}
		fmt.Fprintf(w, "The task %s is active already; nothing to resume.\n", name)
		return nil
	}
	byError := statusWord(t.Pause, records) == StatusError || t.PauseErr != nil
	if byError && !clearError {
		fmt.Fprintf(w, "The task %s was paused by an error (or its records cannot tell):\n", name)
		stores := make([]uint64, 0, len(errs))
		for s := range errs {
			stores = append(stores, s)
		}
		sort.Slice(stores, func(i, j int) bool { return stores[i] < stores[j] })
		for _, s := range stores {
			fmt.Fprintf(w, "  store %d: %s: %s\n", s, errs[s].ErrorCode, errs[s].ErrorMessage)
		}
		if len(errs) == 0 && t.Pause.V2 != nil {
			pv := pauseView(t.Pause.V2)
			fmt.Fprintf(w, "  %s %s\n", pv.ErrorCode, firstNonEmpty(pv.ErrorMessage, pv.Message, pv.ParseError))
		}
		return userError(fmt.Sprintf("fix the cause, then run `br stream resume --task-name %s --clear-error`", name), nil,
			"refusing to resume task %q paused by an error", name)
	}
	// The agents rescan from the checkpoint: PD must hold GC at it before
	// the task runs again, or the rescan may read versions GC removed.
	pdc, err := env.pd(ctx)
	if err != nil {
		return err
	}
	cp, err := holdForResume(ctx, env, pdc, t)
	if err != nil {
		return err
	}
	// Errors go first: if the second step fails the task is still paused
	// (now as a plain pause) and a retry of plain `resume` finishes the job.
	// The other order could leave a running task with stale errors.
	if clearError && records > 0 {
		if err := env.Meta.ClearLastErrors(ctx, name); err != nil {
			return fmt.Errorf("clear last errors of %q: %w", name, err)
		}
	}
	if err := env.Meta.ResumeTask(ctx, name); err != nil {
		return fmt.Errorf("resume task %q: %w", name, err)
	}
	// The agents' pause guards go; BR's pause safepoint is cut to 30
	// minutes as BR does, so GC stays held until the agents' flush
	// safepoints take over, and then it expires by itself.
	if err := meta.SetServiceSafePoint(ctx, pdc, PauseSafePointID(name), resumeGCTTL, cp-1); err != nil {
		fmt.Fprintf(w, "warning: could not shorten the pause GC safepoint: %v\n", err)
	}
	dropSafePoints(ctx, env, pdc, name, false, w)
	note := ""
	if clearError && records > 0 {
		fmt.Fprintf(w, "Cleared %d error record(s).\n", records)
		note = fmt.Sprintf("cleared %d error record(s)", records)
	}
	record(ctx, env, t, lbpb.RecoveryEvent_RESUMED, note, w)
	fmt.Fprintf(w, "Task %q resumed; agents rescan from the checkpoint.\n", name)
	return nil
}

// Stop deletes every key of the task in one transaction.
func Stop(ctx context.Context, env *Env, name string, w io.Writer) error {
	// Whatever the task's records hold, stop removes them.
	if _, err := getTaskTolerant(ctx, env, name); err != nil {
		return err
	}
	if err := env.Meta.DeleteTask(ctx, name); err != nil {
		return fmt.Errorf("stop task %q: %w", name, err)
	}
	// Nothing of the task may hold GC back any more.
	if pdc, err := env.pd(ctx); err == nil {
		if err := meta.SetServiceSafePoint(ctx, pdc, PauseSafePointID(name), 0, 0); err != nil {
			fmt.Fprintf(w, "warning: could not remove the pause GC safepoint: %v\n", err)
		}
		dropSafePoints(ctx, env, pdc, name, true, w)
	} else {
		fmt.Fprintf(w, "warning: GC safepoints of the task are left to expire: %v\n", err)
	}
	fmt.Fprintf(w, "Task %q stopped; its metadata is removed. The files in storage are kept.\n", name)
	return nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// taskCheckpoint is where a resume rescans from: the global checkpoint,
// floored at the task start. An unreadable or implausible global
// checkpoint is left out (status shows it; the coordinator replaces it).
func taskCheckpoint(ctx context.Context, env *Env, t *meta.TaskStatus) (uint64, error) {
	cp := t.Info.StartTs
	var bad []meta.CorruptRecord
	g, ok, err := env.Meta.Tolerant(&bad).GlobalCheckpoint(ctx, t.Info.Name)
	if err != nil {
		return 0, fmt.Errorf("read the checkpoint of %q: %w", t.Info.Name, err)
	}
	if ok {
		cp = max(cp, g)
	}
	return cp, nil
}

// dropSafePoints removes the agents' safepoints of a task on every store PD
// knows: the pause guards, and with flush the flush safepoints too. An
// agent that is down cannot remove its own.
func dropSafePoints(ctx context.Context, env *Env, pdc pd.Client, task string, flush bool, w io.Writer) {
	rctx, cancel := meta.PDCallContext(ctx, 10*time.Second)
	stores, err := pdc.GetAllStores(rctx)
	cancel()
	if err != nil {
		fmt.Fprintf(w, "warning: cannot list stores; the agents' GC safepoints are left to expire: %v\n", err)
		return
	}
	for _, s := range stores {
		ids := []string{meta.PauseGuardID(task, s.GetId())}
		if flush {
			ids = append(ids, meta.FlushSafePointID(task, s.GetId()))
		}
		for _, id := range ids {
			if err := meta.SetServiceSafePoint(ctx, pdc, id, 0, 0); err != nil {
				fmt.Fprintf(w, "warning: could not remove GC safepoint %s: %v\n", id, err)
			}
		}
	}
}

// resumeGCTTL is how long BR's pause safepoint outlives a resume (BR cuts
// it to 30 minutes): the agents' flush safepoints take over meanwhile.
const resumeGCTTL = 30 * time.Minute

// holdForResume makes PD hold GC at the task's checkpoint − 1 (BR's pause
// safepoint, for a pause's TTL while the task is still paused) and returns
// the checkpoint. PD refuses once its txn safe point has passed the
// checkpoint − 1 — the pause safepoint expired and a GC round ran — and so
// does this, whatever the GC safe point says: the changes the agents would
// rescan may be gone, and resuming would leave a hole in the backup.
func holdForResume(ctx context.Context, env *Env, pdc pd.Client, t *meta.TaskStatus) (uint64, error) {
	name := t.Info.Name
	cp, err := taskCheckpoint(ctx, env, t)
	if err != nil {
		return 0, err
	}
	collected := func(txn uint64) error {
		return userError("start a new task (after a new full backup) in another storage path", nil,
			"the global checkpoint %s (%d) of task %q has been garbage collected: PD's txn safe point is %s (%d), so PD no longer holds GC there and the changes since the checkpoint may be gone",
			FormatTS(cp, env.loc()), cp, name, FormatTS(txn, env.loc()), txn)
	}
	txn, err := meta.TxnSafePoint(ctx, pdc)
	if err != nil {
		return 0, userError("check PD's health", err, "cannot read PD's txn safe point")
	}
	if cp <= txn {
		return 0, collected(txn)
	}
	err = meta.SetServiceSafePoint(ctx, pdc, PauseSafePointID(name), DefaultPauseGCTTL, cp-1)
	if errors.Is(err, meta.ErrGCPassed) { // GC moved on since the read
		if txn, rerr := meta.TxnSafePoint(ctx, pdc); rerr == nil {
			return 0, collected(txn)
		}
		return 0, userError("start a new task (after a new full backup) in another storage path", err,
			"the global checkpoint %s (%d) of task %q has been garbage collected", FormatTS(cp, env.loc()), cp, name)
	}
	if err != nil {
		return 0, userError("check PD's health", err, "cannot hold GC at the checkpoint of task %q", name)
	}
	return cp, nil
}

// getTaskTolerant reads a task even when its info or pause value is
// corrupt (TaskStatus.InfoErr / PauseErr say so): the commands that repair
// a task must work whatever its records hold.
func getTaskTolerant(ctx context.Context, env *Env, name string) (*meta.TaskStatus, error) {
	var ignored []meta.CorruptRecord
	tolerant := *env
	tolerant.Meta = env.Meta.Tolerant(&ignored)
	return getTask(ctx, &tolerant, name)
}

func unreadableInfo(name string, err error) error {
	return userError(fmt.Sprintf("its info cannot be read; stop it (`br stream stop --task-name %s`) and start it again", name), err,
		"task %q is unusable", name)
}
