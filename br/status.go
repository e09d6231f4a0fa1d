package br

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/pd/client/opt"

	"logbackup/meta"
	"logbackup/storage"
)

// Task status words, as BR prints them.
const (
	StatusNormal = "NORMAL"
	StatusPause  = "PAUSE"
	StatusError  = "ERROR"
	// StatusStalled is ours: the task runs, but a store that takes part in
	// it has no live agent, so the global checkpoint cannot move. BR would
	// say NORMAL here; we refuse to.
	StatusStalled = "STALLED"
)

// StatusOptions are the flags of `br stream status`.
type StatusOptions struct {
	TaskName string // "" or "*" = every task
	JSON     bool
}

// TaskView is everything `status` shows about one task. Its JSON form keeps
// BR's `--json` field names so BR-oriented tooling can read it.
type TaskView struct {
	Name    string `json:"name"`
	StartTS uint64 `json:"start_ts,omitempty"`
	EndTS   uint64 `json:"end_ts,omitempty"`
	// Status is BR's word (NORMAL, PAUSE, ERROR), so scripts written for
	// BR keep parsing it; State is ours, with STALLED besides.
	Status      string          `json:"status"`
	State       string          `json:"state"`
	TableFilter []string        `json:"table_filter"`
	Progress    []StoreProgress `json:"progress"`
	Storage     string          `json:"storage"`
	Checkpoint  uint64          `json:"checkpoint"`
	LastErrors  []StoreError    `json:"last_errors"`
	// Pause is our addition: PauseV2 details (BR keeps them out of JSON).
	Pause *PauseView `json:"pause,omitempty"`
	// Agents and StoresWithoutAgent are ours: which stores have a live
	// agent, and which stores that flushed for this task no longer do.
	Agents             []AgentView `json:"agents"`
	StoresWithoutAgent []uint64    `json:"stores_without_agent"`
	// RecentHistory is the last few recovery events (`br stream history`
	// shows all of them).
	RecentHistory []string `json:"recent_history,omitempty"`
	// Stores are the stores' agent states for this task; EstimateQPS (as
	// BR's JSON names it) is the changes per second they receive.
	Stores      []StoreState `json:"stores"`
	EstimateQPS float64      `json:"estimate_qps"`
	// Conflicts are other writers of the task's state (TiDB's advancer,
	// TiKV's built-in log backup), in words; empty when there are none.
	Conflicts []string `json:"conflicts"`
	// GCSafePoint is PD's GC safepoint and TxnSafePoint its txn safe point
	// (what PD enforces; ahead of the GC safepoint during a GC round) when
	// PD could be asked (0: not known). GCPassed says the txn safe point has
	// reached the checkpoint: PD no longer holds GC there, the changes since
	// the checkpoint may be gone and the task cannot resume without loss.
	GCSafePoint  uint64 `json:"gc_safepoint,omitempty"`
	TxnSafePoint uint64 `json:"txn_safepoint,omitempty"`
	GCPassed     bool   `json:"gc_safepoint_passed"`
	// PDStores are the TiKV stores PD lists (not tombstones, not TiFlash)
	// that hold the task back: leading regions of its ranges with no live
	// agent, or not heard from by PD for more than 20 s. Empty when PD
	// could not be asked.
	PDStores []PDStoreView `json:"pd_stores"`
	// AutoRecovery is what the coordinator's automatic recovery does for a
	// task paused by a recoverable error (or just resumed by it): what it
	// probes, how often, the last probe, the resumes so far.
	AutoRecovery *meta.RecoveryState `json:"auto_recovery,omitempty"`
	// Corrupt are the task's records that could not be read (key, why);
	// the rest of the view is shown all the same.
	Corrupt []CorruptView `json:"corrupt_records"`

	hasGlobal bool // a central_global checkpoint exists
}

// PDStoreView is one store PD lists that holds the task back.
type PDStoreView struct {
	StoreID uint64 `json:"store_id"`
	Address string `json:"address"`
	// NoAgent: it leads LeaderRegions regions of the task's ranges and no
	// live agent is registered for it.
	NoAgent       bool `json:"no_agent"`
	LeaderRegions int  `json:"leader_regions"`
	// Disconnected: PD has not had a heartbeat from it for more than
	// storeDisconnected (PD keeps such a store Up; only the heartbeat
	// tells). LastHeartbeat is zero if PD never had one.
	Disconnected  bool      `json:"disconnected"`
	LastHeartbeat time.Time `json:"last_heartbeat,omitempty"`
	// SilentSeconds is how long PD has not heard from it, on PD's clock.
	SilentSeconds float64 `json:"silent_seconds,omitempty"`
}

// storeDisconnected is how long PD may not hear from a store before status
// calls it disconnected: PD's own threshold (its store state "Disconnected").
const storeDisconnected = 20 * time.Second

// StoreState is one store's agent state for a task: INITIALIZING (initial
// scans running), HEALTHY, IDLE (no leader region of the task), RETRYING
// (within the retry budget), PAUSED, ERROR (a LastError), or NO AGENT (no
// live agent reports for it).
type StoreState struct {
	StoreID         uint64    `json:"store_id"`
	State           string    `json:"state"`
	Since           time.Time `json:"since,omitempty"`
	ObservedRegions int64     `json:"observed_regions"`
	Scanning        int64     `json:"scanning,omitempty"`
	RowsPerSec      float64   `json:"rows_per_sec"`
	BytesPerSec     float64   `json:"bytes_per_sec"`
	LastError       string    `json:"last_error,omitempty"`
	Attempts        int       `json:"attempts,omitempty"`
}

// Store states besides the agents' own (meta.State*).
const (
	StorePaused  = "PAUSED"
	StoreErrored = "ERROR"
	StoreNoAgent = "NO AGENT"
)

// staleProgress: a report older than this is from an agent that is gone.
const staleProgress = 15 * time.Second

// CorruptView is one record that could not be read.
type CorruptView struct {
	Key   string `json:"key"`
	Error string `json:"error"`
}

// StoreProgress is one store's checkpoint (checkpoint/<task>/store/<id>).
type StoreProgress struct {
	StoreID    uint64 `json:"store_id"`
	Checkpoint uint64 `json:"checkpoint"`
}

// StoreError is one store's LastError.
type StoreError struct {
	StoreID   uint64                  `json:"store_id"`
	LastError *brpb.StreamBackupError `json:"last_error"`
}

// AgentView is one live agent's registration.
type AgentView struct {
	StoreID   uint64    `json:"store_id"`
	Hostname  string    `json:"hostname"`
	PID       int64     `json:"pid"`
	Version   string    `json:"version"`
	StartedAt time.Time `json:"started_at"`
}

// PauseView is the PauseV2 record of a paused task.
type PauseView struct {
	Severity     string    `json:"severity"`
	Time         time.Time `json:"time"`
	Operator     string    `json:"operator"`
	OperatorPID  int       `json:"operator_pid"`
	Message      string    `json:"message,omitempty"`
	ErrorCode    string    `json:"error_code,omitempty"`
	ErrorMessage string    `json:"error_message,omitempty"`
	ParseError   string    `json:"parse_error,omitempty"`
}

// statusWord applies BR's rule: ERROR iff paused and (some store reported a
// last error or the pause record has severity ERROR); PAUSE; NORMAL.
func statusWord(p meta.PauseStatus, lastErrors int) string {
	switch {
	case !p.Paused:
		return StatusNormal
	case lastErrors > 0 || (p.V2 != nil && p.V2.IsError()):
		return StatusError
	default:
		return StatusPause
	}
}

// LoadTasks gathers the view of one task (name) or of all tasks ("" or "*").
func LoadTasks(ctx context.Context, env *Env, name string) ([]*TaskView, error) {
	var tasks []*meta.TaskStatus
	// Corrupt records are shown, not fatal: status is what an operator
	// reaches for when something is wrong.
	var ignored []meta.CorruptRecord
	listing := *env
	listing.Meta = env.Meta.Tolerant(&ignored) // info/pause errors come back in the TaskStatus
	if name == "" || name == "*" {
		all, _, err := listing.Meta.ListTasks(ctx)
		if err != nil {
			return nil, fmt.Errorf("list tasks: %w", err)
		}
		tasks = all
	} else {
		t, err := getTask(ctx, &listing, name)
		if err != nil {
			return nil, err
		}
		tasks = []*meta.TaskStatus{t}
	}
	views := make([]*TaskView, 0, len(tasks))
	for _, t := range tasks {
		var bad []meta.CorruptRecord
		tolerant := *env
		tolerant.Meta = env.Meta.Tolerant(&bad)
		v, err := loadView(ctx, &tolerant, t)
		if err != nil {
			return nil, err
		}
		for _, e := range []error{t.InfoErr, t.PauseErr} {
			var m *meta.MalformedError
			if errors.As(e, &m) {
				bad = append(bad, meta.CorruptRecord{Key: m.Key, Err: m.Err})
			}
		}
		v.Corrupt = []CorruptView{}
		v.PDStores = []PDStoreView{}
		for _, r := range bad {
			v.Corrupt = append(v.Corrupt, CorruptView{Key: r.Key, Error: r.Err.Error()})
		}
		sort.Slice(v.Corrupt, func(i, j int) bool { return v.Corrupt[i].Key < v.Corrupt[j].Key })
		if t.InfoErr != nil {
			v.Status, v.State = StatusError, StatusError // nothing of it can run
		}
		views = append(views, v)
	}
	// PD is asked once, and only when there is a task: status must work
	// with etcd alone, so an unreachable PD leaves the GC and store rows
	// out.
	// A PD that does not answer the first call is not asked again: each
	// call would wait out its deadline.
	if len(views) > 0 {
		if pdc, err := env.pd(ctx); err == nil {
			// A resume holds GC at checkpoint − 1, which PD refuses once its
			// txn safe point is at the checkpoint.
			if txn, err := meta.TxnSafePoint(ctx, pdc); err == nil {
				for _, v := range views {
					v.TxnSafePoint, v.GCPassed = txn, v.Checkpoint <= txn
				}
				if sp, err := meta.GCSafePoint(ctx, pdc); err == nil {
					for _, v := range views {
						v.GCSafePoint = sp
					}
				}
				crossCheckPD(ctx, env, views, tasks)
			} else {
				env.log().Warn("status: PD does not answer; GC and store rows left out", "err", err)
			}
		}
	}
	return views, nil
}

// crossCheckPD fills each task's PDStores from PD's store list: stores that
// lead regions of the task but have no live agent (an agent never started,
// or started with a wrong --store-id, is seen nowhere else), and stores PD
// has not heard from lately. Errors leave the rows out: status must answer
// whatever PD does.
func crossCheckPD(ctx context.Context, env *Env, views []*TaskView, tasks []*meta.TaskStatus) {
	pdc, err := env.pd(ctx)
	if err != nil {
		return
	}
	rctx, cancel := meta.PDCallContext(ctx, 10*time.Second)
	all, err := pdc.GetAllStores(rctx, opt.WithExcludeTombstone())
	cancel()
	if err != nil {
		env.log().Warn("status: cannot list the stores from PD", "err", err)
		return
	}
	// PD's clock judges PD's heartbeat times: the local clock may be off.
	now := env.now()
	if ts, err := env.tso(ctx); err == nil {
		now = PhysicalTime(ts)
	}
	agents, err := env.Meta.Agents(ctx)
	if err != nil {
		env.log().Warn("status: cannot read agent registrations", "err", err)
		return
	}
	for i, v := range views {
		if tasks[i].InfoErr != nil {
			continue
		}
		leaders, err := leaderStores(ctx, env, v.Name)
		if err != nil {
			env.log().Warn("status: cannot list the task's regions", "task", v.Name, "err", err)
			continue
		}
		for _, s := range all {
			if s.GetState() == metapb.StoreState_Tombstone || isTiFlash(s) {
				continue
			}
			pv := PDStoreView{StoreID: s.GetId(), Address: s.GetAddress(), LeaderRegions: leaders[s.GetId()]}
			pv.NoAgent = pv.LeaderRegions > 0 && agents[s.GetId()] == nil
			if hb := s.GetLastHeartbeat(); hb > 0 {
				pv.LastHeartbeat = time.Unix(0, hb)
				pv.SilentSeconds = max(0, now.Sub(pv.LastHeartbeat).Seconds())
			}
			pv.Disconnected = pv.LastHeartbeat.IsZero() || now.Sub(pv.LastHeartbeat) > storeDisconnected
			if pv.NoAgent || pv.Disconnected {
				v.PDStores = append(v.PDStores, pv)
			}
		}
		sort.Slice(v.PDStores, func(i, j int) bool { return v.PDStores[i].StoreID < v.PDStores[j].StoreID })
	}
}

func getTask(ctx context.Context, env *Env, name string) (*meta.TaskStatus, error) {
	t, err := env.Meta.GetTask(ctx, name)
	if errors.Is(err, meta.ErrTaskNotFound) {
		return nil, userError("list tasks with `br stream status`", meta.ErrTaskNotFound, "task %q not found", name)
	}
	if err != nil {
		return nil, fmt.Errorf("get task %q: %w", name, err)
	}
	return t, nil
}

func loadView(ctx context.Context, env *Env, t *meta.TaskStatus) (*TaskView, error) {
	info := t.Info
	v := &TaskView{
		Name:        info.Name,
		StartTS:     info.StartTs,
		EndTS:       info.EndTs,
		TableFilter: info.TableFilter,
		Progress:    []StoreProgress{},
		LastErrors:  []StoreError{},
		Storage:     storageString(info.Storage),
	}
	errs, err := env.Meta.LastErrors(ctx, info.Name)
	if err != nil {
		return nil, fmt.Errorf("read last errors of %q: %w", info.Name, err)
	}
	for store, e := range errs {
		v.LastErrors = append(v.LastErrors, StoreError{StoreID: store, LastError: e})
	}
	sort.Slice(v.LastErrors, func(i, j int) bool { return v.LastErrors[i].StoreID < v.LastErrors[j].StoreID })
	v.Status = statusWord(t.Pause, len(errs))
	if t.Pause.V2 != nil {
		v.Pause = pauseView(t.Pause.V2)
	}

	cps, err := env.Meta.Checkpoints(ctx, info.Name)
	if err != nil {
		return nil, fmt.Errorf("read checkpoints of %q: %w", info.Name, err)
	}
	for _, cp := range cps {
		switch cp.Kind {
		case meta.CheckpointStore:
			v.Progress = append(v.Progress, StoreProgress{StoreID: cp.StoreID, Checkpoint: cp.TS})
		case meta.CheckpointGlobal:
			v.hasGlobal = true
		}
	}
	sort.Slice(v.Progress, func(i, j int) bool { return v.Progress[i].StoreID < v.Progress[j].StoreID })

	// Like BR, the displayed global checkpoint is the storage checkpoint:
	// the highest ts any store has durably recorded in storage, floored at
	// the task's start.
	scs, err := env.Meta.StorageCheckpoints(ctx, info.Name)
	if err != nil {
		return nil, fmt.Errorf("read storage checkpoints of %q: %w", info.Name, err)
	}
	v.Checkpoint = info.StartTs
	for _, ts := range scs {
		v.Checkpoint = max(v.Checkpoint, ts)
	}
	if err := loadAgents(ctx, env, v, t.Incarnation); err != nil {
		return nil, err
	}
	if err := loadStores(ctx, env, v, t, errs); err != nil {
		return nil, err
	}
	nb, err := env.Meta.Neighbours(ctx, info.Name, t.Incarnation)
	if err != nil {
		return nil, fmt.Errorf("read other log-backup writers of %q: %w", info.Name, err)
	}
	v.Conflicts = append([]string{}, nb.Describe()...)
	rs, err := env.Meta.GetRecoveryState(ctx, info.Name, t.Incarnation)
	if err != nil {
		return nil, fmt.Errorf("read the automatic recovery state of %q: %w", info.Name, err)
	}
	if rs != nil && (t.Pause.Paused || rs.Phase == meta.RecoveryResumed) {
		v.AutoRecovery = rs
	}
	evs, err := env.Meta.History(ctx, info.Name, t.Incarnation)
	if err != nil {
		return nil, fmt.Errorf("read history of %q: %w", info.Name, err)
	}
	for _, ev := range evs[max(0, len(evs)-3):] {
		v.RecentHistory = append(v.RecentHistory, HistoryLine(ev, env.loc()))
	}
	return v, nil
}

// loadAgents fills the live agents and the stores that took part in the
// task (they published span checkpoints) but have no live agent now.
func loadAgents(ctx context.Context, env *Env, v *TaskView, inc int64) error {
	agents, err := env.Meta.Agents(ctx)
	if err != nil {
		return fmt.Errorf("read agent registrations: %w", err)
	}
	v.Agents, v.StoresWithoutAgent = []AgentView{}, []uint64{}
	for _, a := range agents {
		v.Agents = append(v.Agents, AgentView{StoreID: a.StoreId, Hostname: a.Hostname, PID: a.Pid, Version: a.Version,
			StartedAt: time.UnixMilli(a.StartedAtUnixMs)})
	}
	sort.Slice(v.Agents, func(i, j int) bool { return v.Agents[i].StoreID < v.Agents[j].StoreID })
	participants, err := env.Meta.SpanCheckpoints(ctx, v.Name, inc)
	if err != nil {
		return fmt.Errorf("read span checkpoints of %q: %w", v.Name, err)
	}
	for store := range participants {
		if _, live := agents[store]; !live {
			v.StoresWithoutAgent = append(v.StoresWithoutAgent, store)
		}
	}
	sort.Slice(v.StoresWithoutAgent, func(i, j int) bool { return v.StoresWithoutAgent[i] < v.StoresWithoutAgent[j] })
	v.State = v.Status
	if v.Status == StatusNormal && len(v.StoresWithoutAgent) > 0 {
		v.State = StatusStalled
	}
	return nil
}

func pauseView(p *meta.PauseV2) *PauseView {
	pv := &PauseView{Severity: p.Severity, Time: p.OperationTime, Operator: p.OperationHostname, OperatorPID: p.OperationPID}
	if text, ok := p.Text(); ok {
		pv.Message = text
		return pv
	}
	e, err := p.ErrorPayload()
	switch {
	case err != nil:
		pv.ParseError = err.Error()
	case e != nil:
		pv.ErrorCode, pv.ErrorMessage = e.ErrorCode, e.ErrorMessage
	}
	return pv
}

// storageString shows where a task writes, never its credentials.
func storageString(b *brpb.StorageBackend) string {
	if b == nil {
		return "<none>"
	}
	loc, err := storage.LocationFromBackend(b)
	if err != nil {
		return "<unreadable storage: " + storage.Redact(err.Error()) + ">"
	}
	return loc.Redacted()
}

// Status prints the tasks as BR's table or as a one-line JSON array.
func Status(ctx context.Context, env *Env, opts StatusOptions, w io.Writer) error {
	views, err := LoadTasks(ctx, env, opts.TaskName)
	if err != nil {
		return err
	}
	if opts.JSON {
		b, err := json.Marshal(views)
		if err != nil {
			return fmt.Errorf("encode status: %w", err)
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	return renderTable(w, views, env.now(), env.loc())
}

func renderTable(w io.Writer, views []*TaskView, now time.Time, loc *time.Location) error {
	var b strings.Builder
	if len(views) == 0 {
		b.WriteString("○ No Task Yet.\n")
		_, err := io.WriteString(w, b.String())
		return err
	}
	fmt.Fprintf(&b, "● Total %d Tasks.\n", len(views))
	for i, v := range views {
		fmt.Fprintf(&b, "> #%d <\n", i+1)
		writeRows(&b, taskRows(v, now, loc))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

type row struct{ key, value string }

func taskRows(v *TaskView, now time.Time, loc *time.Location) []row {
	at := func(ts uint64) string { return fmt.Sprintf("%s; gap=%s", FormatTS(ts, loc), Gap(now, ts)) }
	glyph := map[string]string{StatusNormal: "●", StatusPause: "●", StatusError: "○", StatusStalled: "○"}[v.State]
	rows := []row{
		{"name", v.Name},
		{"status", glyph + " " + v.State},
		{"start", FormatTS(v.StartTS, loc)},
	}
	if v.EndTS > 0 {
		rows = append(rows, row{"end", FormatTS(v.EndTS, loc)})
	}
	rows = append(rows, row{"storage", v.Storage}, row{"speed(est.)", fmt.Sprintf("%.2f ops/s", v.EstimateQPS)},
		row{"checkpoint[global]", at(v.Checkpoint)})
	if v.GCPassed {
		rows = append(rows, row{"gc-safepoint", fmt.Sprintf("○ PD's txn safe point %s (TiDB's GC) has reached the checkpoint: the changes since the checkpoint may be gone and this task cannot resume without loss; stop it and start a new one after a new full backup",
			FormatTS(v.TxnSafePoint, loc))})
	}
	if !v.hasGlobal {
		for _, p := range v.Progress {
			rows = append(rows, row{fmt.Sprintf("checkpoint[store=%d]", p.StoreID), at(p.Checkpoint)})
		}
	}
	if len(v.Agents) > 0 || len(v.StoresWithoutAgent) > 0 {
		ids := make([]string, 0, len(v.Agents))
		for _, a := range v.Agents {
			ids = append(ids, fmt.Sprint(a.StoreID))
		}
		rows = append(rows, row{"agents", fmt.Sprintf("%d live (stores %s)", len(v.Agents), strings.Join(ids, ", "))})
		for _, s := range v.StoresWithoutAgent {
			rows = append(rows, row{fmt.Sprintf("agent[store=%d]", s), "○ NOT RUNNING: the checkpoint cannot advance until it is back"})
		}
	}
	for _, s := range v.PDStores {
		rows = append(rows, row{fmt.Sprintf("pd[store=%d]", s.StoreID), pdStoreLine(s)})
	}
	if p := v.Pause; p != nil {
		rows = append(rows,
			row{"pause-time", p.Time.In(loc).Format(time.RFC3339)},
			row{"pause-operator", p.Operator},
			row{"pause-operator-pid", fmt.Sprint(p.OperatorPID)})
		switch {
		case p.ParseError != "":
			rows = append(rows, row{"pause-payload[errparse]", p.ParseError})
		case p.ErrorCode != "" || p.ErrorMessage != "":
			rows = append(rows, row{"pause-payload[errcode]", p.ErrorCode}, row{"pause-payload[errmesg]", p.ErrorMessage})
		default:
			rows = append(rows, row{"pause-payload", p.Message})
		}
	}
	if r := v.AutoRecovery; r != nil {
		rows = append(rows, row{"auto-recovery", autoRecoveryLine(r, now, loc)})
		if r.Phase == meta.RecoveryProbing && r.LastProbeError != "" {
			rows = append(rows, row{"auto-recovery-probe-error", r.LastProbeError})
		}
	}
	for _, s := range v.Stores {
		rows = append(rows, row{fmt.Sprintf("store[%d]", s.StoreID), storeLine(s, now, loc)})
	}
	for i, c := range v.Corrupt {
		rows = append(rows, row{fmt.Sprintf("corrupt[%d]", i+1), fmt.Sprintf("○ %s: %s", c.Key, c.Error)})
	}
	for i, c := range v.Conflicts {
		rows = append(rows, row{fmt.Sprintf("conflict[%d]", i+1), "○ " + c})
	}
	for i, h := range v.RecentHistory {
		rows = append(rows, row{fmt.Sprintf("history[-%d]", len(v.RecentHistory)-i), h})
	}
	for _, e := range v.LastErrors {
		happen := ComposeTS(time.UnixMilli(int64(e.LastError.HappenAt))) // happen_at is unix ms
		rows = append(rows,
			row{fmt.Sprintf("error[store=%d]", e.StoreID), e.LastError.ErrorCode},
			row{fmt.Sprintf("error-happen-at[store=%d]", e.StoreID), at(happen)},
			row{fmt.Sprintf("error-message[store=%d]", e.StoreID), e.LastError.ErrorMessage})
	}
	return rows
}

// writeRows right-aligns the keys, like BR's key/value table.
func writeRows(b *strings.Builder, rows []row) {
	width := 0
	for _, r := range rows {
		width = max(width, len(r.key))
	}
	for _, r := range rows {
		fmt.Fprintf(b, "%*s: %s\n", width, r.key, r.value)
	}
}

// autoRecoveryLine says what automatic recovery does for the task.
func autoRecoveryLine(r *meta.RecoveryState, now time.Time, loc *time.Location) string {
	deps := strings.Join(r.Dependencies, "+")
	at := func(t time.Time) string { return t.In(loc).Format(time.RFC3339) }
	switch r.Phase {
	case meta.RecoveryResumed:
		return fmt.Sprintf("resumed at %s after a healthy %s probe, %d resumes attempted; the resume holds once the checkpoint passes it",
			at(r.LastResumeAt), deps, r.ResumesAttempted)
	case meta.RecoveryGaveUp:
		return fmt.Sprintf("○ gave up: %d of %d resumes failed again after a healthy %s probe; a person decides (fix the cause, then resume --clear-error)",
			r.FailedResumes, r.MaxFailedResumes, deps)
	}
	s := fmt.Sprintf("probing %s every %s", deps, r.ProbeInterval())
	if r.LastProbeAt.IsZero() {
		s += ", no probe yet"
	} else {
		result := "ok"
		if !r.LastProbeOK {
			result = "failed"
		}
		s += fmt.Sprintf(", last probe %s at %s", result, at(r.LastProbeAt))
	}
	s += fmt.Sprintf(", %d resumes attempted", r.ResumesAttempted)
	if r.FailedResumes > 0 {
		s += fmt.Sprintf(" (%d of %d allowed failed again)", r.FailedResumes, r.MaxFailedResumes)
	}
	if r.NextResumeAt.After(now) {
		s += fmt.Sprintf("; no resume before %s (backoff after a failed resume)", at(r.NextResumeAt))
	}
	return s
}

// pdStoreLine says why a store PD lists holds the task back.
func pdStoreLine(s PDStoreView) string {
	var why []string
	if s.NoAgent {
		why = append(why, fmt.Sprintf("no agent (it leads %d of the task's regions; the checkpoint cannot advance until an agent runs beside it)", s.LeaderRegions))
	}
	if s.Disconnected {
		if s.LastHeartbeat.IsZero() {
			why = append(why, "disconnected (PD never had a heartbeat from it)")
		} else {
			why = append(why, fmt.Sprintf("disconnected (PD last heard from it %s ago)", time.Duration(s.SilentSeconds*float64(time.Second)).Round(time.Second)))
		}
	}
	return fmt.Sprintf("○ store %d (%s): %s", s.StoreID, s.Address, strings.Join(why, "; "))
}

// storeLine renders one store's state for people.
func storeLine(s StoreState, now time.Time, loc *time.Location) string {
	glyph := "●"
	switch s.State {
	case StoreErrored, StoreNoAgent, meta.StateRetrying:
		glyph = "○"
	}
	line := glyph + " " + s.State
	if !s.Since.IsZero() {
		line += fmt.Sprintf(" for %s", now.Sub(s.Since).Round(time.Second))
	}
	switch s.State {
	case meta.StateInitializing:
		line += fmt.Sprintf("; initial scans of %d of %d regions running", s.Scanning, s.ObservedRegions)
	case meta.StateHealthy:
		line += fmt.Sprintf("; %d regions; %.0f rows/s, %.2f MB/s", s.ObservedRegions, s.RowsPerSec, s.BytesPerSec/1e6)
	case meta.StateRetrying:
		line += fmt.Sprintf("; %d failed attempts, last: %s", s.Attempts, s.LastError)
	case StoreErrored:
		line += ": " + s.LastError
	}
	return line
}

// loadStores fills the stores' states: the agents' own reports while the
// task runs, PAUSED or ERROR while it is paused.
func loadStores(ctx context.Context, env *Env, v *TaskView, t *meta.TaskStatus, lastErrors map[uint64]*brpb.StreamBackupError) error {
	v.Stores = []StoreState{}
	reports, err := env.Meta.Progresses(ctx, v.Name, t.Incarnation)
	if err != nil {
		return fmt.Errorf("read agent reports of %q: %w", v.Name, err)
	}
	live := map[uint64]bool{}
	for _, a := range v.Agents {
		live[a.StoreID] = true
	}
	stores := map[uint64]bool{}
	for s := range reports {
		stores[s] = true
	}
	for s := range lastErrors {
		stores[s] = true
	}
	for _, s := range v.StoresWithoutAgent {
		stores[s] = true
	}
	now := env.now()
	for s := range stores {
		st := StoreState{StoreID: s}
		r := reports[s]
		fresh := r != nil && live[s] && now.Sub(time.UnixMilli(r.UpdatedUnixMs)) < staleProgress
		switch {
		case lastErrors[s] != nil:
			st.State, st.LastError = StoreErrored, lastErrors[s].ErrorCode
			st.Since = time.UnixMilli(int64(lastErrors[s].HappenAt))
		case t.Pause.Paused:
			st.State = StorePaused
			if t.Pause.V2 != nil {
				st.Since = t.Pause.V2.OperationTime
			}
		case !fresh:
			st.State = StoreNoAgent
		default:
			st.State, st.Since = r.State, time.UnixMilli(r.SinceUnixMs)
			st.ObservedRegions, st.Scanning = r.ObservedRegions, r.Scanning
			st.RowsPerSec, st.BytesPerSec = r.RowsPerSec, r.BytesPerSec
			st.LastError, st.Attempts = r.LastError, r.Attempts
			v.EstimateQPS += r.RowsPerSec
		}
		v.Stores = append(v.Stores, st)
	}
	sort.Slice(v.Stores, func(i, j int) bool { return v.Stores[i].StoreID < v.Stores[j].StoreID })
	return nil
}
