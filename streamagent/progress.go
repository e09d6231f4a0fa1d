package streamagent

import (
	"context"
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
func (t *taskRunner) report(now time.Time) {
	p := &t.progress
	scanning := int64(0)
	for _, sub := range t.subs {
		if !sub.m.Initialized() {
			scanning++
		}
	}
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
	r := &meta.Progress{StoreID: t.env.settings.storeID, State: state, SinceUnixMs: p.since.UnixMilli(), UpdatedUnixMs: now.UnixMilli(),
		ObservedRegions: int64(len(t.subs)), Scanning: scanning, PendingRanges: int64(len(t.pending)),
		StoreCheckpoint: t.stats.storeCheckpoint.Load(), LastFlushUnixMs: t.stats.lastFlushUnixMs.Load(),
		RowsPerSec: p.rowsPerSec, BytesPerSec: p.bytesPerS}
	if state == meta.StateRetrying {
		r.LastError, r.Attempts = p.lastErr, t.budget.Failures
	}
	// A global checkpoint the coordinator (this agent) cannot advance is
	// reported here too: the store flushes fine, yet the task is stuck.
	if f, ok := t.env.coordFailure(); ok && state != meta.StateRetrying {
		if p.state != meta.StateRetrying {
			p.state, p.since = meta.StateRetrying, f.since
		}
		r.State, r.SinceUnixMs, r.LastError, r.Attempts = meta.StateRetrying, p.since.UnixMilli(), f.msg, f.failures
	}
	t.stats.report.Store(&taskReport{state: r.State, lastErr: r.LastError, attempts: int(r.Attempts)})
	select {
	case <-p.out: // drop the unsent one: only the newest matters
	default:
	}
	p.out <- r
}

// publishProgress writes the loop's reports until ctx ends. A slow or
// unreachable etcd delays reports, never the loop.
func (t *taskRunner) publishProgress(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-t.progress.out:
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if err := t.env.meta.PutProgress(pctx, t.name, t.inc, r); err != nil && ctx.Err() == nil {
				t.log.Debug("cannot report progress", "err", storage.Redact(err.Error()))
			}
			cancel()
		}
	}
}
