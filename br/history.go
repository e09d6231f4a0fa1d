package br

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"logbackup/meta"
	"logbackup/proto/lbpb"
)

// record appends an operator's action to the task's recovery history;
// a failure is reported but does not undo the action.
func record(ctx context.Context, env *Env, t *meta.TaskStatus, kind lbpb.RecoveryEvent_Kind, message string, w io.Writer) {
	ev := &lbpb.RecoveryEvent{Kind: kind, Actor: lbpb.RecoveryEvent_OPERATOR, HappenAtUnixMs: env.now().UnixMilli(),
		Message: message, OperatorHost: env.Hostname, OperatorPid: int64(env.PID)}
	if err := env.Meta.Incarnation(t.Info.Name, t.Incarnation).AppendHistory(ctx, t.Info.Name, t.Incarnation, ev); err != nil {
		fmt.Fprintf(w, "warning: could not record this in the task history: %v\n", err)
	}
}

// HistoryLine renders one event for people.
func HistoryLine(ev *lbpb.RecoveryEvent, loc *time.Location) string {
	s := fmt.Sprintf("%s %-21s by %s", time.UnixMilli(ev.HappenAtUnixMs).In(loc).Format("2006-01-02 15:04:05.000"), ev.Kind, actor(ev))
	if ev.Attempt > 0 {
		s += fmt.Sprintf(" (attempt %d)", ev.Attempt)
	}
	if o := outcome(ev); o != "" {
		s += " [" + o + "]"
	}
	if ev.ErrorCode != "" {
		s += " " + ev.ErrorCode
	}
	if ev.Message != "" {
		s += ": " + ev.Message
	}
	return s
}

// outcome names what an automatic resume event says: the coordinator
// records each resume and its outcome, never a probe.
func outcome(ev *lbpb.RecoveryEvent) string {
	switch ev.Kind {
	case lbpb.RecoveryEvent_AUTO_RESUME_ATTEMPT:
		return "resumed"
	case lbpb.RecoveryEvent_AUTO_RESUME_SUCCEEDED:
		return "held"
	case lbpb.RecoveryEvent_AUTO_RESUME_FAILED:
		if strings.Contains(ev.Message, meta.RecoveryGaveUpMarker) {
			return "gave_up"
		}
		return "failed"
	}
	return ""
}

func actor(ev *lbpb.RecoveryEvent) string {
	switch ev.Actor {
	case lbpb.RecoveryEvent_OPERATOR:
		return fmt.Sprintf("operator %s[%d]", ev.OperatorHost, ev.OperatorPid)
	case lbpb.RecoveryEvent_AGENT:
		return fmt.Sprintf("agent of store %d", ev.StoreId)
	case lbpb.RecoveryEvent_COORDINATOR:
		return fmt.Sprintf("coordinator (store %d)", ev.StoreId)
	}
	return "unknown"
}

// History prints a task's recovery history, oldest first.
func History(ctx context.Context, env *Env, name string, asJSON bool, w io.Writer) error {
	t, err := getTaskTolerant(ctx, env, name)
	if err != nil {
		return err
	}
	// An unreadable record is shown as such; the rest still is.
	var bad []meta.CorruptRecord
	evs, err := env.Meta.Tolerant(&bad).History(ctx, name, t.Incarnation)
	if err != nil {
		return fmt.Errorf("read history of %q: %w", name, err)
	}
	if asJSON {
		type row struct {
			Time      time.Time `json:"time"`
			Kind      string    `json:"kind"`
			Actor     string    `json:"actor"`
			StoreID   uint64    `json:"store_id,omitempty"`
			ErrorCode string    `json:"error_code,omitempty"`
			Message   string    `json:"message,omitempty"`
			Attempt   uint32    `json:"attempt,omitempty"`
			Outcome   string    `json:"outcome,omitempty"`
		}
		rows := []row{}
		for _, ev := range evs {
			rows = append(rows, row{time.UnixMilli(ev.HappenAtUnixMs), ev.Kind.String(), actor(ev), ev.StoreId, ev.ErrorCode, ev.Message, ev.Attempt, outcome(ev)})
		}
		for _, r := range bad {
			rows = append(rows, row{Kind: "CORRUPT_RECORD", Actor: "unknown", Message: r.Key + ": " + r.Err.Error()})
		}
		b, _ := json.Marshal(rows)
		_, err := fmt.Fprintf(w, "%s\n", b)
		return err
	}
	if len(evs) == 0 && len(bad) == 0 {
		fmt.Fprintf(w, "No recovery events for task %q.\n", name)
	}
	for _, ev := range evs {
		fmt.Fprintln(w, HistoryLine(ev, env.loc()))
	}
	for _, r := range bad {
		fmt.Fprintf(w, "unreadable record %s: %v\n", r.Key, r.Err)
	}
	return nil
}
