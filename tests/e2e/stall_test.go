package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"logbackup/streamagent"
	"logbackup/tests/simcluster"
)

// TestStallPastBudgetPauses: a global checkpoint that stands while every
// flush and advance succeeds (store 2 leads a region and has no agent) was
// reported RETRYING with a growing lag, but nothing more until the 48 h
// lag limit. Past the retry budget's duration it becomes a LastError
// (CheckpointStalled, naming store 2) and an ERROR pause; once store 2's
// agent runs, `resume --clear-error` backs up everything, nothing lost.
func TestStallPastBudgetPauses(t *testing.T) {
	t.Parallel() // mostly waiting: run beside the other long tests (README's test command stays under 10 minutes)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	url := "local://" + filepath.Join(t.TempDir(), "b")
	h := newHarness(t, ctx, simcluster.Config{Stores: 2}, url, 0)
	ids := h.c.StoreIDs()
	region, err := h.c.Split([]byte("t5"))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.c.TransferLeader(region, ids[1]); err != nil {
		t.Fatal(err)
	}
	budget := func(c *streamagent.Config) {
		c.RetryBudget = streamagent.RetryBudget{Attempts: 30, Duration: 40 * time.Second}
	}
	_, stop := h.agent(ids[0], nil, budget)
	defer stop()
	// Rows on both sides of the split keep flushes non-empty.
	writes, stopWrites := context.WithCancel(ctx)
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		for i := 0; writes.Err() == nil; i++ {
			_, _ = h.c.Put(writes, []byte(fmt.Sprintf("t%d-%d", i%9, i)), []byte("v"))
			select {
			case <-writes.Done():
			case <-time.After(20 * time.Millisecond): // a gentle, steady write rate
			}
		}
	}()
	le := waitLastErrorWithin(t, h.m, 2*time.Minute)
	stopWrites()
	<-wrote
	if le.ErrorCode != "KV:LogBackup:CheckpointStalled" || le.StoreId != ids[0] ||
		!strings.Contains(le.ErrorMessage, fmt.Sprintf("stores with no checkpoint for this task (is their agent running?): %d", ids[1])) ||
		!strings.Contains(le.ErrorMessage, "retry budget") {
		t.Fatalf("LastError %s from store %d: %s", le.ErrorCode, le.StoreId, le.ErrorMessage)
	}
	_, stop2 := h.agent(ids[1], nil, budget)
	defer stop2()
	h.brRun().ok("stream", "resume", "--task-name", "pitr", "--clear-error")
	end, err := h.c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h.waitGlobal(end)
	assertBackedUp(t, ctx, url, h.c, h.startTS, end)
}
