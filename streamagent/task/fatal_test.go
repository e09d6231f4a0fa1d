package task

import (
	"fmt"
	"io/fs"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"

	"logbackup/storage"
	"logbackup/streamagent/errs"
	"logbackup/streamagent/retry"
)

// TestFatalStopsRunner: a runner meeting an error it may not retry
// further — the flush retry budget spent by attempts, by duration (on the
// task's clock), or a fatal class at its first failure — stops by itself
// with Fatal() of the failure's code, class fatal and (for a spent budget)
// saying so; its EventFeed stream (the store's observers of the task) and
// the connection under it are closed, its subscriptions and its per-task
// series are gone, and every failure was counted under its code, the
// retried ones as retries too. What the agent does with Fatal() is the
// root package's TestFatalFromRunner.
func TestFatalStopsRunner(t *testing.T) {
	retryable := fmt.Errorf("PUT s3://bucket/log: %w", syscall.ECONNRESET)
	denied := &storage.OpError{Op: "write", Err: &fs.PathError{Op: "open", Path: "/b/x", Err: syscall.EACCES}}
	cases := []struct {
		name     string
		budget   retry.Budget
		err      error
		code     errs.Code
		failures int           // upload attempts, all failing
		gap      time.Duration // the task's clock moves this much more before each retry
		text     string        // in the fatal error
	}{
		{"attempts spent", retry.Budget{Attempts: 2, Duration: time.Hour}, retryable, errs.CodeNetwork, 3, 0, "retry budget exhausted (3 failures"},
		{"duration spent", retry.Budget{Attempts: 1000, Duration: time.Minute}, retryable, errs.CodeNetwork, 2, 2 * time.Minute, "retry budget exhausted (2 failures over 2m"},
		{"fatal class", retry.Budget{Attempts: 1000, Duration: time.Hour}, denied, errs.CodeStorageAccessDenied, 1, 0, "permission denied"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, func(s *Settings) {
				s.FlushInterval = time.Hour
				s.RetryBudget = c.budget
			})
			// The store's EventFeed stream, as intake opened it: closing it
			// ends every observer TiKV holds for the task's regions. The
			// connection never dials (passthrough, no call made).
			conn, err := grpc.NewClient("passthrough:///fatal-test", grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			var streamCancelled atomic.Bool
			h.fs.conn, h.fs.cancel, h.fs.stream = conn, func() { streamCancelled.Store(true) }, &fakeFeed{}
			h.r.feed.stream = h.fs
			h.st.set(nil, c.err)

			h.start()
			h.initialized(0)
			h.put(1, "a", "1")
			h.settle()
			if got, _ := h.metric("logbackup_agent_observed_regions", "task", "t"); got != 1 {
				t.Fatalf("observed regions %v before the failure, want 1", got)
			}
			h.clk.advance(time.Hour)
			for i := 1; i < c.failures; i++ { // within the budget: retried
				h.upload()
				h.clk.advance(h.retryArmed() + c.gap)
			}
			h.upload() // the failure that ends it
			select {
			case <-h.done:
			case <-time.After(10 * time.Second):
				t.Fatalf("the runner did not stop after %d failures", c.failures)
			}

			f := h.r.Fatal()
			if f == nil || f.Info.Code != c.code || f.Info.Class != errs.Fatal {
				t.Fatalf("the runner stopped with %v, want a fatal %s", f, c.code)
			}
			if !strings.Contains(f.Err.Error(), c.text) {
				t.Errorf("fatal error %q, want it saying %q", f.Err, c.text)
			}
			if !streamCancelled.Load() || conn.GetState() != connectivity.Shutdown || h.r.feed.stream != nil {
				t.Errorf("the EventFeed stream was not closed (cancelled %v, conn %v)", streamCancelled.Load(), conn.GetState())
			}
			if h.r.regions.subs != nil || h.r.regions.byRegion != nil {
				t.Errorf("subscriptions left: %v", h.r.regions.subs)
			}
			for _, name := range []string{"logbackup_agent_observed_regions", "logbackup_agent_buffered_bytes"} {
				if v, ok := h.metric(name, "task", "t"); ok {
					t.Errorf("%s{task=t} = %v after the stop, want the series gone", name, v)
				}
			}
			code := string(c.code)
			if got, _ := h.metric("logbackup_agent_errors_total", "code", code); got != float64(c.failures) {
				t.Errorf("errors_total{%s} = %v, want %d (every failure)", code, got, c.failures)
			}
			if got, _ := h.metric("tikv_log_backup_errors", "type", code); got != float64(c.failures) {
				t.Errorf("tikv_log_backup_errors{%s} = %v, want %d", code, got, c.failures)
			}
			if got, _ := h.metric("logbackup_agent_retries_total", "code", code); got != float64(c.failures-1) {
				t.Errorf("retries_total{%s} = %v, want %d (the failures within the budget)", code, got, c.failures-1)
			}
			if got := h.r.env.Counters.Retries.Load(); got != int64(c.failures-1) {
				t.Errorf("%d retries counted for /status, want %d", got, c.failures-1)
			}
			// Counting it as fatal is the agent's, once it reports it.
			if got, _ := h.metric("logbackup_agent_fatal_errors_total", "code", code); got != 0 {
				t.Errorf("fatal_errors_total{%s} = %v from the runner, want 0", code, got)
			}
		})
	}
}
