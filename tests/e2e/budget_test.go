package e2e

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/storage"
	"logbackup/streamagent"
	"logbackup/tests/eventually"
	"logbackup/tests/s3test"
	"logbackup/tests/simcluster"
)

// TestRetryBudgetSurvivesRestarts: storage fails every upload while the
// store's agent is restarted again and again, each run shorter than the
// budget. The budget carries over from run to run (through the store's
// progress report), so the outage is still reported: LastError and an
// ERROR pause once it is spent. (Failed before: each run started a fresh
// budget, so the outage never became a LastError — the playground's
// nemesis found it under agent churn.)
func TestRetryBudgetSurvivesRestarts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv := s3test.Start(t, "bk")
	h := newHarness(t, ctx, simcluster.Config{Stores: 1}, srv.URL("bk", "log"), 0)
	budget := streamagent.RetryBudget{Attempts: 100000, Duration: 3 * time.Second}
	mod := func(c *streamagent.Config) {
		// One attempt per request: each failed flush reaches the budget
		// at once, not after the storage's own retries.
		c.OpenStorage = func(ctx context.Context, be *brpb.StorageBackend) (storage.Storage, error) {
			return storage.OpenBackend(ctx, be, storage.WithRetryPolicy(storage.RetryPolicy{MaxAttempts: 1}))
		}
		c.RetryBudget = budget
		c.FinalFlushTimeout = 200 * time.Millisecond
		c.AutoResume.MaxAttempts = 1
		c.AutoResume.ProbeInterval = time.Hour // no automatic resume while the test looks
	}
	if _, err := h.c.Put(ctx, []byte("t1"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	srv.SetFault(s3test.Fault{Status: 503, Remaining: -1, Match: func(r *http.Request) bool { return r.Method == http.MethodPut }})
	eventually.True(t, 90*time.Second, func() bool {
		_, stop := h.agent(1, nil, mod)
		// Time is the subject: each run is shorter than the budget, so
		// only the budget carried across restarts can run out.
		time.Sleep(budget.Duration / 2)
		stop()
		le, err := h.m.LastErrors(ctx, "pitr")
		if err != nil {
			t.Fatal(err)
		}
		e := le[1]
		if e != nil && !strings.Contains(e.ErrorMessage, "retry budget exhausted") {
			t.Fatalf("LastError %q does not say the budget was spent", e.ErrorMessage)
		}
		return e != nil
	}, "an outage under agent restarts to spend the retry budget (a LastError)")
}
