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
	starts := runRefusingStarts(t, runConfig(t, "retried"))

	limit := startRetryMax*3/2 + time.Second // the cap, its jitter, and the attempt itself
	last := (<-starts).at
	for i := 1; i <= 5; i++ {
		select {
		case try := <-starts:
			t.Logf("retry %d after %s", i, try.at.Sub(last).Round(time.Millisecond))
			last = try.at
		case <-time.After(limit):
			t.Fatalf("failure %d of the start was not retried within %s", i, limit)
		}
	}
}

// startTry is one start of a task, refused by its storage.
type startTry struct {
	at   time.Time
	path string // the task's local storage
}

// runRefusingStarts runs an agent of cfg whose task storages refuse every
// start with a retryable error, with a retry budget never spent here, and
// reports each start tried; the agent stops with the test.
func runRefusingStarts(t *testing.T, cfg Config) <-chan startTry {
	t.Helper()
	starts := make(chan startTry, 100)
	cfg.OpenStorage = func(octx context.Context, b *brpb.StorageBackend) (storage.Storage, error) {
		if _, ok := octx.Deadline(); !ok { // a start of the task, not the coordinator's neighbour check (bounded by a timeout)
			select {
			case starts <- startTry{at: time.Now(), path: b.GetLocal().GetPath()}:
			default: // more than a test reads: never block the agent
			}
		}
		return nil, fmt.Errorf("injected: %w", syscall.ECONNREFUSED)
	}
	cfg.RetryBudget = RetryBudget{Attempts: 1000, Duration: time.Hour}
	a, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-runErr; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	})
	return starts
}
