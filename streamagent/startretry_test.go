package streamagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"syscall"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/client-go/v2/oracle"

	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent/internal/etcdfixture"
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
	_, cli := etcdfixture.StartEtcd(t)
	mc := meta.NewClient(cli)
	ctx := context.Background()
	info := &brpb.StreamBackupTaskInfo{Name: "retried", StartTs: oracle.GoTimeToTS(time.Now()),
		Storage: &brpb.StorageBackend{Backend: &brpb.StorageBackend_Local{Local: &brpb.Local{Path: t.TempDir()}}}}
	if err := mc.PutTask(ctx, info, []meta.Range{{StartKey: []byte("a"), EndKey: []byte("z")}}); err != nil {
		t.Fatal(err)
	}
	starts := make(chan time.Time, 100)
	open := func(octx context.Context, _ *brpb.StorageBackend) (storage.Storage, error) {
		if _, ok := octx.Deadline(); !ok {
			// A start of the task, not the coordinator's neighbour check
			// (bounded by a timeout).
			starts <- time.Now()
		}
		return nil, fmt.Errorf("injected: %w", syscall.ECONNREFUSED)
	}
	cfg := Config{StoreID: 1, PD: &runPD{store: &metapb.Store{Id: 1, Address: "127.0.0.1:1", State: metapb.StoreState_Up}},
		Meta: mc, TempDir: t.TempDir(), CoordinatorInterval: time.Hour, ReconcileInterval: time.Hour,
		RetryBudget: RetryBudget{Attempts: 1000, Duration: time.Hour}, // never spent here
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)), OpenStorage: open}
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
