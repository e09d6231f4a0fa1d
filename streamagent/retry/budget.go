package retry

import (
	"fmt"
	"time"

	"logbackup/streamagent/errs"
)

// Budget bounds how long a retryable error may persist.
type Budget struct {
	Attempts int
	Duration time.Duration
}

// Counter is a retry Counter in use: how many retryable failures in a row,
// since when. A plain value with no IO, owned by whoever retries.
type Counter struct {
	Limit    Budget
	Failures int
	Since    time.Time
}

// Fail records a failure classified as info at now and returns the fatal
// error that ends the retrying: at once for a fatal class, or once the
// budget is spent. The LastError then keeps the code of what failed (as
// TiKV keeps Io after its flush-failure threshold); the budget goes in the
// text.
func (b *Counter) Fail(now time.Time, info errs.Info, err error) *Fatal {
	if info.Class == errs.Fatal {
		return &Fatal{Info: info, Err: err}
	}
	if b.Since.IsZero() {
		b.Since = now
	}
	b.Failures++
	if b.Failures <= b.Limit.Attempts && now.Sub(b.Since) <= b.Limit.Duration {
		return nil
	}
	info.Class = errs.Fatal
	return &Fatal{Info: info, Err: fmt.Errorf("retry budget exhausted (%d failures over %s; the budget is %d attempts or %s): %w",
		b.Failures, now.Sub(b.Since).Round(time.Second), b.Limit.Attempts, b.Limit.Duration, err)}
}

// Succeed resets the budget after a healthy attempt.
func (b *Counter) Succeed() { b.Failures, b.Since = 0, time.Time{} }

// Fatal is what ends the retrying and stops a task: a classified error,
// fatal by its class or because the budget is spent.
type Fatal struct {
	Info errs.Info
	Err  error
}

func (f *Fatal) Error() string { return fmt.Sprintf("[%s] %v", f.Info.Code, f.Err) }
