package br

import (
	"context"
	"fmt"
	"io"
	"sort"

	"logbackup/meta"
	"logbackup/proto/lbpb"
)

// Pause pauses a running task with a MANUAL PauseV2 record naming this
// operator. Agents drop their observers and unflushed buffers and rescan from
// the checkpoint when the task is resumed.
func Pause(ctx context.Context, env *Env, name, message string, w io.Writer) error {
	t, err := getTask(ctx, env, name)
	if err != nil {
		return err
	}
	if t.Pause.Paused {
		return userError("resume it with `br stream resume`", nil, "the task %s is paused already", name)
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
	t, err := getTask(ctx, env, name)
	if err != nil {
		return err
	}
	errs, err := env.Meta.LastErrors(ctx, name)
	if err != nil {
		return fmt.Errorf("read last errors of %q: %w", name, err)
	}
	if !t.Pause.Paused {
		if len(errs) > 0 && clearError {
			if err := env.Meta.ClearLastErrors(ctx, name); err != nil {
				return fmt.Errorf("clear last errors of %q: %w", name, err)
			}
			fmt.Fprintf(w, "The task %s is active already; cleared %d stale error record(s).\n", name, len(errs))
			return nil
		}
		fmt.Fprintf(w, "The task %s is active already; nothing to resume.\n", name)
		return nil
	}
	if statusWord(t.Pause, len(errs)) == StatusError && !clearError {
		fmt.Fprintf(w, "The task %s was paused by an error:\n", name)
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
	if err := checkNotCollected(ctx, env, t); err != nil {
		return err
	}
	// Errors go first: if the second step fails the task is still paused
	// (now as a plain pause) and a retry of plain `resume` finishes the job.
	// The other order could leave a running task with stale errors.
	if clearError && len(errs) > 0 {
		if err := env.Meta.ClearLastErrors(ctx, name); err != nil {
			return fmt.Errorf("clear last errors of %q: %w", name, err)
		}
	}
	if err := env.Meta.ResumeTask(ctx, name); err != nil {
		return fmt.Errorf("resume task %q: %w", name, err)
	}
	note := ""
	if clearError && len(errs) > 0 {
		fmt.Fprintf(w, "Cleared %d error record(s).\n", len(errs))
		note = fmt.Sprintf("cleared %d error record(s)", len(errs))
	}
	record(ctx, env, t, lbpb.RecoveryEvent_RESUMED, note, w)
	fmt.Fprintf(w, "Task %q resumed; agents rescan from the checkpoint.\n", name)
	return nil
}

// Stop deletes every key of the task in one transaction.
func Stop(ctx context.Context, env *Env, name string, w io.Writer) error {
	if _, err := getTask(ctx, env, name); err != nil {
		return err
	}
	if err := env.Meta.DeleteTask(ctx, name); err != nil {
		return fmt.Errorf("stop task %q: %w", name, err)
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

// checkNotCollected refuses to resume a task whose checkpoint is below
// PD's GC safepoint: the changes it would rescan are gone, and resuming
// would leave a hole in the backup.
func checkNotCollected(ctx context.Context, env *Env, t *meta.TaskStatus) error {
	sp, ok, err := env.Meta.GCSafePoint(ctx)
	if err != nil || !ok {
		return err
	}
	cp := t.Info.StartTs
	if g, ok, err := env.Meta.GlobalCheckpoint(ctx, t.Info.Name); err != nil {
		return err
	} else if ok {
		cp = max(cp, g)
	}
	if cp < sp {
		return userError("start a new task (after a new full backup) in another storage path", nil,
			"the global checkpoint ts %d (%s) of task %q has been garbage collected (GC safepoint %d); the changes since it are gone",
			cp, FormatTS(cp, env.loc()), t.Info.Name, sp)
	}
	return nil
}
