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

// progress is the store's report of the task: the loop hands it what it
// counted each progressInterval (report), and its publisher goroutine
// writes the newest report to etcd (publish). The two share only out.
type progress struct {
	env   *Env
	task  taskIdent
	stats *Stats

	// The loop's side.
	state      string
	since      time.Time
	last       time.Time
	rowsPerSec float64
	bytesPerS  float64
	lastErr    string // the latest retryable failure, redacted
	out        chan *meta.Progress
}

func newProgress(env *Env, task taskIdent, stats *Stats) *progress {
	return &progress{env: env, task: task, stats: stats, out: make(chan *meta.Progress, 1)}
}

// loopState is what the loop reports of itself.
type loopState struct {
	observed, scanning, pending int
	failures                    int   // of the retry budget
	rows, byts                  int64 // changes taken since the last report
}

// report builds the store's report from the loop's state and hands it to
// the publisher; the previous one, if still unsent, is replaced.
func (p *progress) report(now time.Time, s loopState) {
	state := meta.StateHealthy
	switch {
	case s.failures > 0:
		state = meta.StateRetrying
	case s.observed == 0 && s.pending == 0:
		state = meta.StateIdle
	case s.scanning > 0 || s.pending > 0:
		state = meta.StateInitializing
	}
	if state != p.state {
		p.state, p.since = state, now
	}
	if !p.last.IsZero() {
		// An average over a few reports: steadier than one second.
		secs := now.Sub(p.last).Seconds()
		p.rowsPerSec = 0.5*p.rowsPerSec + 0.5*float64(s.rows)/secs
		p.bytesPerS = 0.5*p.bytesPerS + 0.5*float64(s.byts)/secs
	}
	p.last = now
	r := &meta.Progress{StoreID: p.env.Settings.StoreID, State: state, SinceUnixMs: p.since.UnixMilli(), UpdatedUnixMs: now.UnixMilli(),
		ObservedRegions: int64(s.observed), Scanning: int64(s.scanning), PendingRanges: int64(s.pending),
		StoreCheckpoint: p.stats.StoreCheckpoint.Load(), LastFlushUnixMs: p.stats.LastFlushUnixMs.Load(),
		RowsPerSec: p.rowsPerSec, BytesPerSec: p.bytesPerS}
	if state == meta.StateRetrying {
		r.LastError, r.Attempts = p.lastErr, s.failures
	}
	// A global checkpoint the coordinator (this agent) cannot advance is
	// reported here too: the store flushes fine, yet the task is stuck.
	if f, ok := p.env.CoordFailure(); ok && state != meta.StateRetrying {
		if p.state != meta.StateRetrying {
			p.state, p.since = meta.StateRetrying, f.Since
		}
		r.State, r.SinceUnixMs, r.LastError, r.Attempts = meta.StateRetrying, p.since.UnixMilli(), f.Msg, f.Failures
	}
	p.stats.Report.Store(&Report{State: r.State, LastErr: r.LastError, Attempts: int(r.Attempts)})
	select {
	case <-p.out: // drop the unsent one: only the newest matters
	default:
	}
	p.out <- r
}

// publish writes the loop's reports until ctx ends. A slow or unreachable
// etcd delays reports, never the loop.
func (p *progress) publish(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-p.out:
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if err := p.env.Meta.PutProgress(pctx, p.task.name, p.task.inc, r); err != nil && ctx.Err() == nil {
				p.env.Log.Debug("cannot report progress", "err", storage.Redact(err.Error()))
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
