// Package eventually waits in tests for something the code under test will
// make true, instead of sleeping for a guessed time or writing a deadline
// loop by hand.
//
// A wait polls its condition at a short interval that backs off (from
// firstInterval to maxInterval), so a cheap condition is seen within a few
// milliseconds and an expensive one (a CLI run, an etcd read) does not load
// the machine. It never waits past its timeout: the context given to a
// func(ctx) error condition ends at the deadline, and on timeout the test
// fails naming what it waited for and the condition's last error.
//
// True and NoError fail the test with t.Fatalf, so, like t.Fatal, they
// belong on the test's own goroutine. Elsewhere (a goroutine the test
// starts, a caller that handles the timeout itself) use Wait, which
// returns the failure as an error. TrueEvery polls at a fixed interval,
// for benchmarks that time the event they wait for.
package eventually

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

const (
	firstInterval = 5 * time.Millisecond
	maxInterval   = 100 * time.Millisecond
)

// True polls cond until it returns true. If timeout passes first, it fails
// the test with "waited <timeout> for <what>". cond must return promptly;
// a condition that does I/O should take the context NoError passes.
func True(t testing.TB, timeout time.Duration, cond func() bool, what string, args ...any) {
	t.Helper()
	if err := wait(t.Context(), timeout, boolCond(cond)); err != nil {
		t.Fatalf("%s", failure(timeout, what, args, err))
	}
}

// TrueEvery is True polling at a fixed interval, for a benchmark that
// times the event: it returns within every of cond holding, where True's
// backed-off interval would add up to 100 ms to the measurement.
func TrueEvery(t testing.TB, timeout, every time.Duration, cond func() bool, what string, args ...any) {
	t.Helper()
	if err := waitEvery(t.Context(), timeout, every, every, boolCond(cond)); err != nil {
		t.Fatalf("%s", failure(timeout, what, args, err))
	}
}

// NoError polls f until it returns nil. If timeout passes first, it fails
// the test naming what it waited for and f's last error. f's context ends
// at the deadline (or when the test ends), so an I/O condition cannot hold
// the wait past its timeout.
func NoError(t testing.TB, timeout time.Duration, f func(ctx context.Context) error, what string, args ...any) {
	t.Helper()
	if err := wait(t.Context(), timeout, f); err != nil {
		t.Fatalf("%s", failure(timeout, what, args, err))
	}
}

// Wait polls f until it returns nil and returns nil, or returns an error
// naming what it waited for and f's last error once timeout passes or ctx
// ends. It is the form for goroutines other than the test's.
func Wait(ctx context.Context, timeout time.Duration, f func(ctx context.Context) error, what string, args ...any) error {
	if err := wait(ctx, timeout, f); err != nil {
		return errors.New(failure(timeout, what, args, err))
	}
	return nil
}

// errNotYet is the last error of a bool condition that never held; it is
// not reported, as it says nothing more than the description.
var errNotYet = errors.New("not yet")

func boolCond(cond func() bool) func(context.Context) error {
	return func(context.Context) error {
		if cond() {
			return nil
		}
		return errNotYet
	}
}

func wait(ctx context.Context, timeout time.Duration, f func(ctx context.Context) error) error {
	return waitEvery(ctx, timeout, firstInterval, maxInterval, f)
}

// errTimedOut tells a wait that ran out of time from one whose caller's
// context ended first.
var errTimedOut = errors.New("timed out")

func waitEvery(ctx context.Context, timeout, interval, maxInterval time.Duration, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeoutCause(ctx, timeout, errTimedOut)
	defer cancel()
	timer := time.NewTimer(interval)
	defer timer.Stop()
	for {
		// A condition the deadline cut short keeps its own error as the
		// last one: it says more than "context deadline exceeded".
		last := f(ctx)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			if cause := context.Cause(ctx); !errors.Is(cause, errTimedOut) {
				return fmt.Errorf("%w; then the wait's context ended: %w", last, cause)
			}
			return last
		case <-timer.C:
		}
		interval = min(2*interval, maxInterval)
		timer.Reset(interval)
	}
}

func failure(timeout time.Duration, what string, args []any, last error) string {
	if len(args) > 0 {
		what = fmt.Sprintf(what, args...)
	}
	msg := fmt.Sprintf("waited %s for %s", timeout, what)
	if last != nil && last != errNotYet {
		msg += fmt.Sprintf(" (last: %v)", last)
	}
	return msg
}
