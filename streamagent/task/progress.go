package task

import (
	"context"
	"sync/atomic"
	"time"

	"logbackup/meta"
	"logbackup/storage"
)

// progressInterval is how often a store reports its state for a task.
const progressInterval = time.Second

// progress is the loop's side of the store's report: what it counts
// between reports and the state it was last in.
type progress struct {
	state      string
	since      time.Time
	rows, byts int64 // changes received since the last report
	last       time.Time
	rowsPerSec float64
	bytesPerS  float64
	lastErr    string // the latest retryable flush failure, redacted
	out        chan *meta.Progress
}

// received counts one change taken into the builder.
func (p *progress) received(bytes int) {
	p.rows++
	p.byts += int64(bytes)
}

// report builds the store's report from the loop's state and hands it to
// the publisher; the previous one, if still unsent, is replaced.
func (t *Runner) report(now time.Time) {
	p := &t.progress
	scanning := int64(t.scanning)
	state := meta.StateHealthy
	switch {
	case t.budget.Failures > 0:
		state = meta.StateRetrying
	case len(t.subs) == 0 && len(t.pending) == 0:
		state = meta.StateIdle
	case scanning > 0 || len(t.pending) > 0:
		state = meta.StateInitializing
	}
	if state != p.state {
		p.state, p.since = state, now
	}
	if !p.last.IsZero() {
		// An average over a few reports: steadier than one second.
		secs := now.Sub(p.last).Seconds()
		p.rowsPerSec = 0.5*p.rowsPerSec + 0.5*float64(p.rows)/secs
		p.bytesPerS = 0.5*p.bytesPerS + 0.5*float64(p.byts)/secs
	}
	p.rows, p.byts, p.last = 0, 0, now
	r := &meta.Progress{StoreID: t.env.Settings.StoreID, State: state, SinceUnixMs: p.since.UnixMilli(), UpdatedUnixMs: now.UnixMilli(),
		ObservedRegions: int64(len(t.subs)), Scanning: scanning, PendingRanges: int64(len(t.pending)),
		StoreCheckpoint: t.stats.StoreCheckpoint.Load(), LastFlushUnixMs: t.stats.LastFlushUnixMs.Load(),
		RowsPerSec: p.rowsPerSec, BytesPerSec: p.bytesPerS}
	if state == meta.StateRetrying {
		r.LastError, r.Attempts = p.lastErr, t.budget.Failures
	}
	// A global checkpoint the coordinator (this agent) cannot advance is
	// reported here too: the store flushes fine, yet the task is stuck.
	if f, ok := t.env.CoordFailure(); ok && state != meta.StateRetrying {
		if p.state != meta.StateRetrying {
			p.state, p.since = meta.StateRetrying, f.Since
		}
		r.State, r.SinceUnixMs, r.LastError, r.Attempts = meta.StateRetrying, p.since.UnixMilli(), f.Msg, f.Failures
	}
	t.stats.Report.Store(&Report{State: r.State, LastErr: r.LastError, Attempts: int(r.Attempts)})
	select {
	case <-p.out: // drop the unsent one: only the newest matters
	default:
	}
	p.out <- r
}

// publishProgress writes the loop's reports until ctx ends. A slow or
// unreachable etcd delays reports, never the loop.
func (t *Runner) publishProgress(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-t.progress.out:
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if err := t.env.Meta.PutProgress(pctx, t.name, t.inc, r); err != nil && ctx.Err() == nil {
				t.log.Debug("cannot report progress", "err", storage.Redact(err.Error()))
			}
			cancel()
		}
	}
}

// Stats are written by a task's loop and read by /status.
type Stats struct {
	ObservedRegions atomic.Int64
	BufferedBytes   atomic.Int64
	MemoryBytes     atomic.Int64
	LastFlushUnixMs atomic.Int64
	StoreCheckpoint atomic.Uint64
	PendingRanges   atomic.Int64
	Scanning        atomic.Int64
	// Report is the latest state the loop reported.
	Report atomic.Pointer[Report]
}

// Report is the part of a task's progress report /status shows.
type Report struct {
	State, LastErr string
	Attempts       int
}
