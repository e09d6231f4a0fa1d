package streamagent

import (
	"fmt"
	"time"

	"logbackup/streamagent/errs"
)

// RetryBudget bounds how long a retryable error may persist.
type RetryBudget struct {
	Attempts int
	Duration time.Duration
}

// budget is a retry budget in use: how many retryable failures in a row,
// since when. A plain value with no IO, owned by whoever retries.
type budget struct {
	limit    RetryBudget
	failures int
	since    time.Time
}

// fail records a failure classified as info at now and returns the fatal
// error that ends the retrying: at once for a fatal class, or once the
// budget is spent. The LastError then keeps the code of what failed (as
// TiKV keeps Io after its flush-failure threshold); the budget goes in the
// text.
func (b *budget) fail(now time.Time, info errs.Info, err error) *fatalError {
	if info.Class == errs.Fatal {
		return &fatalError{info: info, err: err}
	}
	if b.since.IsZero() {
		b.since = now
	}
	b.failures++
	if b.failures <= b.limit.Attempts && now.Sub(b.since) <= b.limit.Duration {
		return nil
	}
	info.Class = errs.Fatal
	return &fatalError{info: info, err: fmt.Errorf("retry budget exhausted (%d failures over %s; the budget is %d attempts or %s): %w",
		b.failures, now.Sub(b.since).Round(time.Second), b.limit.Attempts, b.limit.Duration, err)}
}

// succeed resets the budget after a healthy attempt.
func (b *budget) succeed() { b.failures, b.since = 0, time.Time{} }
