// Package recovery is the coordinator's automatic recovery of tasks paused
// by a recoverable error: while such a task is paused, a prober checks the
// dependency its error names, and the first healthy probe resumes it; the
// coordinator's tick judges each resume (held once the global checkpoint
// passes it) and gives up after too many that did not hold. It reaches the
// agent only through Deps.
package recovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/tikv/client-go/v2/oracle"

	"logbackup/meta"
	"logbackup/proto/lbpb"
	"logbackup/storage"
	"logbackup/streamagent/checkpoint"
	"logbackup/streamagent/errs"
	"logbackup/streamagent/metrics"
)

// AutoResume says whether and how the coordinator recovers tasks paused by
// a recoverable error. Detecting that the cause cleared is separate from
// resuming: while such a task is paused, the dependency its error names is
// probed every few seconds for as long as the pause lasts, and the first
// healthy probe resumes it. What is bounded is resumes the task does not
// hold (it pauses again before its checkpoint passes the resume): a long
// clean outage spends nothing. A task a person paused is never resumed.
type AutoResume struct {
	Disabled bool
	// ProbeInterval is the base gap between two probes of one task; each
	// gap is jittered by ±20% and never longer than 10 s (default 5 s).
	ProbeInterval time.Duration
	// ProbeTimeout bounds one probe (default 5 s).
	ProbeTimeout time.Duration
	// MaxAttempts bounds the resumes that fail again after a healthy
	// probe; reaching it leaves the task in ERROR for a person (default 5).
	MaxAttempts int
	// Backoff is the least wait after a failed resume before the next
	// one, healthy probes or not; it doubles per failed resume, capped at
	// 30 min (default 30 s).
	Backoff time.Duration
}

// The defaults of AutoResume's bounds (the agent's Config documents them).
const (
	DefaultMaxAttempts = 5
	DefaultBackoff     = 30 * time.Second
)

func (c AutoResume) withDefaults() AutoResume {
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.Backoff <= 0 {
		c.Backoff = DefaultBackoff
	}
	return c
}

// maxProbeGap caps the time between two probes of one paused task, jitter
// included: a healed dependency is seen within it.
const maxProbeGap = 10 * time.Second

func (c AutoResume) probeInterval() time.Duration {
	if c.ProbeInterval <= 0 {
		return 5 * time.Second
	}
	return min(c.ProbeInterval, maxProbeGap)
}

func (c AutoResume) probeTimeout() time.Duration {
	if c.ProbeTimeout <= 0 {
		return 5 * time.Second
	}
	return c.ProbeTimeout
}

// Dependencies a probe checks.
const (
	depStorage = "storage"
	depPD      = "pd"
	depEtcd    = "etcd"
)

// recoverable codes and what to probe for each: the cause can clear by
// itself (storage, PD or etcd back), so resuming once it answers is the
// right call. They are retryable codes, which reach a LastError only
// through the retry budget. Network, deadline and gRPC errors do not say
// which dependency failed, so every one of them must answer.
var recoverable = map[errs.Code][]string{
	errs.CodeStorageUnavailable: {depStorage},
	errs.CodeStorageThrottled:   {depStorage},
	errs.CodeEtcdUnavailable:    {depEtcd},
	errs.CodePD:                 {depPD},
	errs.CodeNetwork:            {depStorage, depPD, depEtcd},
	errs.CodeDeadline:           {depStorage, depPD, depEtcd},
	errs.CodeGRPC:               {depStorage, depPD, depEtcd},
}

// RecoverableCodes lists the codes recovered automatically and the
// dependencies probed for each (for docs and tests).
func RecoverableCodes() map[errs.Code][]string {
	out := make(map[errs.Code][]string, len(recoverable))
	for c, d := range recoverable {
		out[c] = slices.Clone(d)
	}
	return out
}

const gaveUpMarker = meta.RecoveryGaveUpMarker

type PauseClass int

const (
	NotPaused        PauseClass = iota
	ManualPause                 // a person's (or a legacy empty) pause: never touched
	FatalPause                  // an error no probe can clear
	RecoverablePause            // probe, then resume
	GaveUpPause                 // recovery gave up on it
)

// ClassifyPause tells a task's pause apart by type, never by text: the
// pause's severity, the error code of its payload (whoever wrote it:
// TiKV, TiDB or an agent) and the flag a gave-up pause carries.
func ClassifyPause(t *meta.TaskStatus) (PauseClass, *brpb.StreamBackupError) {
	if !t.Pause.Paused {
		return NotPaused, nil
	}
	p := t.Pause.V2
	if !p.IsError() {
		return ManualPause, nil
	}
	e, err := p.ErrorPayload()
	if err != nil || e == nil || recoverable[errs.Code(e.ErrorCode)] == nil {
		return FatalPause, e
	}
	if p.RecoveryGaveUp {
		return GaveUpPause, e
	}
	return RecoverablePause, e
}

// Recovery is the coordinator's automatic recovery. Its map is the
// coordinator goroutine's; each task's state is shared with that task's
// prober goroutine under the task's mutex, and a prober is never stopped
// while that mutex is held.
type Recovery struct {
	d     Deps
	tasks map[string]*taskRecovery // by meta.TaskStatus.IncarnationKey
}

// Deps is what the recovery uses of the agent that runs it.
type Deps struct {
	StoreID uint64
	// Config is the agent's, its defaults applied.
	Config AutoResume
	Meta   *meta.Client
	// GetTS is PD's timestamp call: the PD probe asks for one, as every
	// flush does first.
	GetTS func(ctx context.Context) (physical, logical int64, err error)
	// OpenProbe opens a task's storage for a storage probe: one attempt
	// per request, since the probe's own schedule is the retry.
	OpenProbe func(ctx context.Context, b *brpb.StorageBackend) (storage.Storage, error)
	Metrics   *metrics.Metrics
	Log       *slog.Logger
	// Spawn starts a prober on a goroutine its agent's Run waits for, and
	// returns a channel closed when it ends.
	Spawn func(func()) <-chan struct{}
}

// New builds the recovery of an agent's coordinator.
func New(d Deps) *Recovery {
	d.Config = d.Config.withDefaults()
	return &Recovery{d: d, tasks: map[string]*taskRecovery{}}
}

// taskRecovery is one task incarnation's recovery: the published state
// (nil: no incident) and at most one prober.
type taskRecovery struct {
	task string
	inc  int64
	info *brpb.StreamBackupTaskInfo

	mu    sync.Mutex
	state *meta.RecoveryState
	// what the prober last published, so a short probe interval does not
	// write etcd on every probe
	publishedAt time.Time
	publishedOK bool

	cancel context.CancelFunc // the prober's, coordinator goroutine only
	done   chan struct{}
}

// Observe is called by the coordinator each tick for every task, with the
// global checkpoint of a running one (0 when unknown). It follows the
// task's pause, starts and stops its prober, and judges each resume: held
// once the global checkpoint passes it, failed if the task pauses again
// first.
func (r *Recovery) Observe(ctx context.Context, t *meta.TaskStatus, global uint64) {
	key := t.IncarnationKey()
	tr := r.tasks[key]
	if tr == nil {
		// A coordinator taking over continues the incident where the last
		// one left it: the failed resumes count against the same bound.
		s, err := r.d.Meta.GetRecoveryState(ctx, t.Info.Name, t.Incarnation)
		if err != nil {
			r.d.Log.Warn("cannot read the recovery state; trying next tick", "task", t.Info.Name, "err", err)
			return
		}
		tr = &taskRecovery{task: t.Info.Name, inc: t.Incarnation, info: t.Info, state: s}
		r.tasks[key] = tr
	}
	if r.d.Config.Disabled {
		r.stopProber(tr)
		return
	}
	class, e := ClassifyPause(t)
	if class != RecoverablePause {
		r.stopProber(tr)
	}
	tr.mu.Lock()
	probe := r.step(ctx, tr, t, class, e, global)
	tr.mu.Unlock()
	if probe {
		r.startProber(ctx, tr)
	}
}

// step moves the task's state on what the tick saw; it says whether the
// task wants a prober. tr.mu is held.
func (r *Recovery) step(ctx context.Context, tr *taskRecovery, t *meta.TaskStatus, class PauseClass, e *brpb.StreamBackupError, global uint64) bool {
	a, s := &r.d, tr.state
	switch class {
	case NotPaused:
		if s == nil {
			return false
		}
		if s.Phase != meta.RecoveryResumed {
			// Resumed by someone else: a person, or a coordinator before
			// this one whose state this one has not seen yet.
			fresh, err := a.Meta.GetRecoveryState(ctx, tr.task, tr.inc)
			if err != nil {
				return false
			}
			if fresh != nil && fresh.Phase == meta.RecoveryResumed {
				tr.state = fresh
				return false
			}
			r.endIncident(ctx, tr)
			return false
		}
		if !held(s, global) {
			return false // not judged yet
		}
		r.resumeHeld(ctx, tr)
		r.endIncident(ctx, tr)
		return false

	case ManualPause:
		if s != nil {
			r.endIncident(ctx, tr) // a person took over
		}
		return false

	case FatalPause:
		if s == nil {
			return false
		}
		if s.Phase == meta.RecoveryResumed && t.PauseRevision() > s.ResumeRevision {
			if cp, err := checkpoint.Flushed(ctx, a.Meta, t); err != nil {
				return false // judged next tick
			} else if held(s, cp) {
				r.resumeHeld(ctx, tr) // and this is another incident
				r.endIncident(ctx, tr)
				return false
			}
			a.Metrics.AutoResumes.WithLabelValues("failed").Inc()
			a.history(ctx, tr.task, tr.inc, &lbpb.RecoveryEvent{Kind: lbpb.RecoveryEvent_AUTO_RESUME_FAILED, Actor: lbpb.RecoveryEvent_COORDINATOR,
				ErrorCode: errCode(e), Attempt: uint32(s.ResumesAttempted),
				Message: "the resumed task paused again with an error that is not recovered automatically; a person decides"})
		}
		r.endIncident(ctx, tr)
		return false

	case GaveUpPause:
		if s == nil || s.Phase != meta.RecoveryGaveUp {
			if s == nil {
				s = &meta.RecoveryState{ErrorCode: e.ErrorCode, Dependencies: recoverable[errs.Code(e.ErrorCode)],
					ProbeIntervalMs: a.Config.probeInterval().Milliseconds(), PausedAt: t.Pause.V2.OperationTime,
					MaxFailedResumes: a.Config.MaxAttempts}
				tr.state = s
			}
			s.Phase = meta.RecoveryGaveUp
			r.publish(ctx, tr)
		}
		return false
	}

	// A pause by a recoverable error.
	deps := recoverable[errs.Code(e.ErrorCode)]
	switch {
	case s == nil:
		tr.state = &meta.RecoveryState{Phase: meta.RecoveryProbing, ErrorCode: e.ErrorCode, Dependencies: deps,
			ProbeIntervalMs: a.Config.probeInterval().Milliseconds(), PausedAt: t.Pause.V2.OperationTime,
			MaxFailedResumes: a.Config.MaxAttempts}
		a.Log.Warn("task paused by a recoverable error; probing until it clears", "task", tr.task, "code", e.ErrorCode,
			"probe", strings.Join(deps, "+"), "every", a.Config.probeInterval())
		r.publish(ctx, tr)
	case s.Phase == meta.RecoveryResumed:
		if t.PauseRevision() <= s.ResumeRevision {
			return false // read before the resume
		}
		cp, err := checkpoint.Flushed(ctx, a.Meta, t)
		if err != nil {
			return false // judged next tick
		}
		if held(s, cp) {
			// It held, and then failed anew: a new incident, counted
			// from zero.
			r.resumeHeld(ctx, tr)
			r.endIncident(ctx, tr)
			if tr.state != nil {
				return false // the old state is not deleted yet: next tick
			}
			return r.step(ctx, tr, t, class, e, global)
		}
		// The resumed task failed again before its checkpoint passed the
		// resume, although the probe was healthy: a flapping or partial
		// fault. Bounded, with backoff.
		s.FailedResumes++
		a.Metrics.AutoResumes.WithLabelValues("failed").Inc()
		if s.FailedResumes >= s.MaxFailedResumes {
			r.giveUp(ctx, tr, t, e)
			return false
		}
		wait := backoffFor(a.Config.Backoff, s.FailedResumes-1)
		s.Phase, s.ErrorCode, s.Dependencies = meta.RecoveryProbing, e.ErrorCode, deps
		s.PausedAt, s.Probes, s.NextResumeAt = t.Pause.V2.OperationTime, 0, time.Now().Add(wait)
		a.history(ctx, tr.task, tr.inc, &lbpb.RecoveryEvent{Kind: lbpb.RecoveryEvent_AUTO_RESUME_FAILED, Actor: lbpb.RecoveryEvent_COORDINATOR,
			ErrorCode: e.ErrorCode, Attempt: uint32(s.ResumesAttempted),
			Message: fmt.Sprintf("the resumed task paused again before its checkpoint passed the resume (%d of %d failed resumes); next resume after a healthy probe, not before %s",
				s.FailedResumes, s.MaxFailedResumes, wait.Round(time.Millisecond))})
		a.Log.Warn("automatic resume did not hold", "task", tr.task, "code", e.ErrorCode, "failed", s.FailedResumes, "bound", s.MaxFailedResumes)
		r.publish(ctx, tr)
	case s.Phase == meta.RecoveryGaveUp:
		// The pause does not say so yet (the replacement raced a write):
		// say it again. A person decides.
		r.markGaveUp(ctx, tr, t, e)
		return false
	case s.ErrorCode != e.ErrorCode:
		s.ErrorCode, s.Dependencies = e.ErrorCode, deps
		r.publish(ctx, tr)
	}
	return true
}

// giveUp ends automatic recovery of the incident: the task stays in ERROR
// with a LastError and pause payload that say so. tr.mu is held.
func (r *Recovery) giveUp(ctx context.Context, tr *taskRecovery, t *meta.TaskStatus, e *brpb.StreamBackupError) {
	s := tr.state
	s.Phase = meta.RecoveryGaveUp
	r.publish(ctx, tr)
	r.d.Metrics.AutoResumes.WithLabelValues("gave_up").Inc()
	r.d.history(ctx, tr.task, tr.inc, &lbpb.RecoveryEvent{Kind: lbpb.RecoveryEvent_AUTO_RESUME_FAILED, Actor: lbpb.RecoveryEvent_COORDINATOR,
		ErrorCode: e.ErrorCode, Attempt: uint32(s.ResumesAttempted),
		Message: fmt.Sprintf("%s: %d resumes after a healthy probe did not hold (the bound); a person decides", gaveUpMarker, s.FailedResumes)})
	r.d.Log.Error("automatic recovery gave up; the task stays paused", "task", tr.task, "code", e.ErrorCode, "failed_resumes", s.FailedResumes)
	r.markGaveUp(ctx, tr, t, e)
}

// markGaveUp rewrites the pause payload and writes a LastError saying that
// automatic recovery gave up, conditional on the pause read.
func (r *Recovery) markGaveUp(ctx context.Context, tr *taskRecovery, t *meta.TaskStatus, e *brpb.StreamBackupError) {
	s := tr.state
	deps := strings.Join(s.Dependencies, "+")
	msg := fmt.Sprintf("[store = %d] %s: %d automatic resumes failed again after a healthy %s probe (the bound is %d), so the fault is partial or flapping; "+
		"action: find why the task fails while %s answers, fix it, then `br stream resume --task-name %s --clear-error`; the last error: %s",
		r.d.StoreID, gaveUpMarker, s.FailedResumes, deps, s.MaxFailedResumes, deps, tr.task, e.ErrorMessage)
	le := &brpb.StreamBackupError{HappenAt: uint64(time.Now().UnixMilli()), ErrorCode: e.ErrorCode, ErrorMessage: msg, StoreId: r.d.StoreID}
	host, _ := os.Hostname()
	p := meta.NewErrorPause(host, os.Getpid(), time.Now(), le)
	p.RecoveryGaveUp = true // what ClassifyPause reads; the message's marker is for people
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := r.d.Meta.Incarnation(tr.task, tr.inc).ReplaceErrorPause(wctx, tr.task, t.PauseRevision(), p, le)
	if err != nil && !errors.Is(err, meta.ErrStaleIncarnation) {
		r.d.Log.Warn("cannot mark the pause as given up; trying next tick", "task", tr.task, "err", err)
	}
}

// endIncident forgets the incident and its published state. tr.mu is held.
func (r *Recovery) endIncident(ctx context.Context, tr *taskRecovery) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := r.d.Meta.Incarnation(tr.task, tr.inc).DeleteRecoveryState(dctx, tr.task, tr.inc); err != nil && !errors.Is(err, meta.ErrStaleIncarnation) {
		r.d.Log.Warn("cannot delete the recovery state; trying next tick", "task", tr.task, "err", err)
		return // kept, so the next tick ends it again
	}
	tr.state = nil
}

// publish writes the state where `br stream status` reads it; best effort
// (a lost update is overwritten by the next probe). tr.mu is held.
func (r *Recovery) publish(ctx context.Context, tr *taskRecovery) {
	s := tr.state
	s.CoordinatorStore, s.UpdatedAt = r.d.StoreID, time.Now()
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := r.d.Meta.Incarnation(tr.task, tr.inc).PutRecoveryState(pctx, tr.task, tr.inc, s); err != nil && !errors.Is(err, meta.ErrStaleIncarnation) {
		r.d.Log.Debug("cannot publish the recovery state", "task", tr.task, "err", err)
	}
}

// ForgetExcept stops the probers of tasks no longer live (nil: all, the
// coordinator lost its election). Their published state stays for the
// next coordinator, or is cleaned with the incarnation.
func (r *Recovery) ForgetExcept(live map[string]bool) {
	for k, tr := range r.tasks {
		if !live[k] {
			r.stopProber(tr)
			delete(r.tasks, k)
		}
	}
}

// held reports whether checkpoint ts passed the last resume.
func held(s *meta.RecoveryState, ts uint64) bool {
	return ts > 0 && !oracle.GetTimeFromTS(ts).Before(s.LastResumeAt)
}

// resumeHeld records that the last resume held. tr.mu is held.
func (r *Recovery) resumeHeld(ctx context.Context, tr *taskRecovery) {
	s := tr.state
	r.d.Metrics.AutoResumes.WithLabelValues("held").Inc()
	r.d.history(ctx, tr.task, tr.inc, &lbpb.RecoveryEvent{Kind: lbpb.RecoveryEvent_AUTO_RESUME_SUCCEEDED, Actor: lbpb.RecoveryEvent_COORDINATOR,
		ErrorCode: s.ErrorCode, Attempt: uint32(s.ResumesAttempted),
		Message: fmt.Sprintf("the resume held: the checkpoint passed it (seen %s after it)", time.Since(s.LastResumeAt).Round(time.Second))})
	r.d.Log.Info("automatic resume held", "task", tr.task, "attempt", s.ResumesAttempted)
}

func errCode(e *brpb.StreamBackupError) string {
	if e == nil {
		return ""
	}
	return e.ErrorCode
}

func backoffFor(base time.Duration, attempts int) time.Duration {
	d := base
	for i := 0; i < attempts && d < 30*time.Minute; i++ {
		d *= 2
	}
	return min(d, 30*time.Minute)
}

// history records a recovery event of this agent.
func (d *Deps) history(ctx context.Context, task string, inc int64, ev *lbpb.RecoveryEvent) {
	RecordEvent(ctx, d.Meta, d.StoreID, d.Log, task, inc, ev)
}

// RecordEvent appends ev to the task incarnation's recovery history,
// filling in when, which store (store) and which process; losing one is
// logged, never fatal. The fatal path and the coordinator record theirs
// through it too.
func RecordEvent(ctx context.Context, m *meta.Client, store uint64, log *slog.Logger, task string, inc int64, ev *lbpb.RecoveryEvent) {
	if ev.HappenAtUnixMs == 0 {
		ev.HappenAtUnixMs = time.Now().UnixMilli()
	}
	if ev.StoreId == 0 {
		ev.StoreId = store
	}
	if ev.OperatorHost == "" {
		ev.OperatorHost, _ = os.Hostname()
		ev.OperatorPid = int64(os.Getpid())
	}
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := m.Incarnation(task, inc).AppendHistory(hctx, task, inc, ev); err != nil {
		log.Warn("cannot record recovery history", "task", task, "err", storage.Redact(err.Error()))
	}
}
