package playground

import (
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"logbackup/meta"
)

// faultRecord is one injected fault: when it began, when the nemesis
// healed it, and when the backup had caught up with that moment (the
// global checkpoint passed the cluster's time at the heal).
type faultRecord struct {
	kind      string
	detail    string
	start     time.Time
	healed    time.Time
	healTS    uint64
	recovered time.Time
	epoch     *fatalEpoch // fatal faults
}

// fatalEpoch follows one fatal storage fault: when each store's agent first
// got the fatal answer, and when each store's LastError appeared.
type fatalEpoch struct {
	code           string // the LastError code the fault must produce
	opened, closed time.Time
	meets          map[uint64]time.Time // first fatal answer by store (0: not attributable)
	reports        map[uint64]time.Time // first LastError with code, by store
	other          map[string]int       // LastErrors with other codes meanwhile
	unreportable   int                  // fatal answers to final flushes and probes of a paused task
}

// firstMeet is when any agent first met the fault.
func (e *fatalEpoch) firstMeet() (time.Time, bool) {
	var first time.Time
	for _, t := range e.meets {
		if first.IsZero() || t.Before(first) {
			first = t
		}
	}
	return first, !first.IsZero()
}

// surfaced is when the first LastError with the right code appeared.
func (e *fatalEpoch) surfaced() (time.Time, bool) {
	var first time.Time
	for _, t := range e.reports {
		if first.IsZero() || t.Before(first) {
			first = t
		}
	}
	return first, !first.IsZero()
}

// latencies pairs each store's report with its meeting of the fault (or
// the first meeting of any agent, when its own was not attributable).
func (e *fatalEpoch) latencies() map[uint64]time.Duration {
	out := map[uint64]time.Duration{}
	first, _ := e.firstMeet()
	for s, r := range e.reports {
		m, ok := e.meets[s]
		if !ok {
			m = first
		}
		if m.IsZero() {
			continue
		}
		out[s] = max(0, r.Sub(m))
	}
	return out
}

// openEpoch starts following a fatal fault that must surface as code.
func (o *oracle) openEpoch(code string) *fatalEpoch {
	e := &fatalEpoch{code: code, opened: time.Now(), meets: map[uint64]time.Time{}, reports: map[uint64]time.Time{}, other: map[string]int{}}
	o.mu.Lock()
	o.epochs = append(o.epochs, e)
	o.mu.Unlock()
	return e
}

func (o *oracle) closeEpoch(e *fatalEpoch) {
	o.mu.Lock()
	e.closed = time.Now()
	o.mu.Unlock()
}

// epochState reads an epoch under the oracle's lock.
func (o *oracle) epochState(e *fatalEpoch) (met, surfaced bool, firstMeet time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	firstMeet, met = e.firstMeet()
	_, surfaced = e.surfaced()
	return met, surfaced, firstMeet
}

// openEpochLocked is the epoch being injected now, if any.
func (o *oracle) openEpochLocked() *fatalEpoch {
	if n := len(o.epochs); n > 0 && o.epochs[n-1].closed.IsZero() {
		return o.epochs[n-1]
	}
	return nil
}

// metUnreportable counts a fatal answer that no LastError is due for.
func (o *oracle) metUnreportable() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if e := o.openEpochLocked(); e != nil {
		e.unreportable++
	}
}

// paused reports whether the task is paused now, as the watch saw it.
func (o *oracle) paused() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.isPaused
}

// met records an agent's first fatal answer of the epoch.
func (o *oracle) met(store uint64, _ int, at time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if e := o.openEpochLocked(); e != nil {
		if _, ok := e.meets[store]; !ok {
			e.meets[store] = at
		}
	}
}

// lastError records a LastError written by a store's agent.
func (o *oracle) lastError(store uint64, code string, at time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.lastErrors = append(o.lastErrors, lastErrorSeen{at: at, store: store, code: code})
	e := o.openEpochLocked()
	if e == nil {
		return
	}
	if code != e.code {
		e.other[code]++
		return
	}
	if _, ok := e.reports[store]; !ok {
		e.reports[store] = at
	}
}

// pause follows error pauses from their write to their removal.
func (o *oracle) pause(typ mvccpb.Event_EventType, key string, value []byte, at time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var open *errorPause
	if n := len(o.errorPauses); n > 0 && o.errorPauses[n-1].resumed.IsZero() {
		open = o.errorPauses[n-1]
	}
	if typ == clientv3.EventTypeDelete {
		o.isPaused = false
		if open != nil {
			open.resumed = at
			// The watch reports the removal a little after the command
			// returns: a resume the nemesis began after the pause counts.
			open.byNemesis = o.nemesisResume.After(open.at) && !o.nemesisResume.After(at)
		}
		return
	}
	o.isPaused = true
	p, err := meta.DecodePause(key, value)
	if err != nil || !p.IsError() || open != nil {
		return
	}
	code := "(no payload)"
	if e, err := p.ErrorPayload(); err == nil && e != nil {
		code = e.ErrorCode
	}
	o.errorPauses = append(o.errorPauses, &errorPause{at: at, code: code})
}

// resumingNow records that the nemesis begins its own `resume
// --clear-error`, so the error pause it ends is not taken for an automatic
// recovery.
func (o *oracle) resumingNow() {
	o.mu.Lock()
	o.nemesisResume = time.Now()
	o.mu.Unlock()
}
