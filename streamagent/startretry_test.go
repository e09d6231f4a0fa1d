package streamagent

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/storage"
)

// TestStartRetriesStayFrequent: a task whose start keeps failing on a
// retryable error (storage out while a resume starts it) is tried again
// within startRetryMax (±50% jitter) of each failure, however many came
// before, so the task starts within seconds of storage coming back rather
// than after a wait that grew with the outage. (A 12-minute nemesis run
// saw a 4-minute storage outage recover 39.7 s after it healed: a resume
// during the outage had its start retried with waits grown to 30 s.)
// Five failures are enough to tell: with waits doubling from 1 s, the
// fifth is already 8–24 s.
func TestStartRetriesStayFrequent(t *testing.T) {
	t.Parallel() // mostly waiting
	ctx := context.Background()
	cfg := runConfig(t, "retried")
	starts := make(chan time.Time, 100)
	open := func(octx context.Context, _ *brpb.StorageBackend) (storage.Storage, error) {
		if _, ok := octx.Deadline(); !ok {
			// A start of the task, not the coordinator's neighbour check
			// (bounded by a timeout).
			starts <- time.Now()
		}
		return nil, fmt.Errorf("injected: %w", syscall.ECONNREFUSED)
	}
	cfg.RetryBudget = RetryBudget{Attempts: 1000, Duration: time.Hour} // never spent here
	cfg.OpenStorage = open
	a, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(runCtx) }()
	defer func() {
		cancel()
		if err := <-runErr; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	}()

	limit := startRetryMax*3/2 + time.Second // the cap, its jitter, and the attempt itself
	last := <-starts
	for i := 1; i <= 5; i++ {
		select {
		case at := <-starts:
			t.Logf("retry %d after %s", i, at.Sub(last).Round(time.Millisecond))
			last = at
		case <-time.After(limit):
			t.Fatalf("failure %d of the start was not retried within %s", i, limit)
		}
	}
}
