package eventually

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fatalTB records a Fatalf instead of ending the test, so a failing wait
// can be checked.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatalf(format string, args ...any) { f.msg = fmt.Sprintf(format, args...) }

func TestTrueReturnsOnceTheConditionHolds(t *testing.T) {
	var polls atomic.Int32
	began := time.Now()
	True(t, 10*time.Second, func() bool { return polls.Add(1) >= 5 }, "the fifth poll")
	if n := polls.Load(); n != 5 {
		t.Fatalf("polled %d times, want 5 (no poll after it held)", n)
	}
	// 5+10+20+40 ms of intervals, far below a second even on a busy machine.
	if d := time.Since(began); d > 2*time.Second {
		t.Fatalf("took %s for four short intervals", d)
	}
}

func TestTrueFailsNamingWhatItWaitedFor(t *testing.T) {
	tb := &fatalTB{TB: t}
	began := time.Now()
	True(tb, 200*time.Millisecond, func() bool { return false }, "store %d to lead", 3)
	if d := time.Since(began); d < 200*time.Millisecond || d > 5*time.Second {
		t.Fatalf("gave up after %s, want its 200ms timeout", d)
	}
	if tb.msg != "waited 200ms for store 3 to lead" {
		t.Fatalf("failure %q", tb.msg)
	}
}

func TestNoErrorReportsTheLastError(t *testing.T) {
	tb := &fatalTB{TB: t}
	var n atomic.Int32
	NoError(tb, 200*time.Millisecond, func(context.Context) error {
		return fmt.Errorf("checkpoint %d, want 10", n.Add(1))
	}, "the checkpoint")
	if !strings.HasPrefix(tb.msg, "waited 200ms for the checkpoint (last: checkpoint ") || !strings.HasSuffix(tb.msg, fmt.Sprintf("checkpoint %d, want 10)", n.Load())) {
		t.Fatalf("failure %q does not carry the last error", tb.msg)
	}
}

// A condition that blocks is cut off by the context it is given: the wait
// ends at its timeout, not when the condition would have returned.
func TestWaitNeverHangsPastItsTimeout(t *testing.T) {
	began := time.Now()
	err := Wait(context.Background(), 100*time.Millisecond, func(ctx context.Context) error {
		<-ctx.Done()
		return fmt.Errorf("read cut short: %w", ctx.Err())
	}, "a blocked read")
	if d := time.Since(began); d > 5*time.Second {
		t.Fatalf("returned after %s", d)
	}
	if err == nil || !strings.Contains(err.Error(), "waited 100ms for a blocked read (last: read cut short: context deadline exceeded)") {
		t.Fatalf("error %v", err)
	}
}

func TestWaitEndsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Wait(ctx, time.Hour, func(context.Context) error { return errors.New("no leader") }, "a leader")
	if err == nil || !strings.Contains(err.Error(), "no leader; then the wait's context ended: context canceled") {
		t.Fatalf("error %v", err)
	}
}

func TestTrueEveryKeepsItsInterval(t *testing.T) {
	var polls atomic.Int32
	began := time.Now()
	TrueEvery(t, 10*time.Second, time.Millisecond, func() bool { return polls.Add(1) >= 50 }, "the fiftieth poll")
	// 49 intervals of 1 ms; backed off, they would take over 4 s.
	if d := time.Since(began); d > 2*time.Second {
		t.Fatalf("took %s for 49 intervals of 1 ms", d)
	}
}
