package task

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"logbackup/meta"
	"logbackup/streamagent/errs"
	"logbackup/streamagent/logfile"
	"logbackup/streamagent/retry"
)

// The flush pipeline of one task (task.go, flush.go) on fakes: the loop
// and the flusher run for real; etcd, PD, storage and time are fakes.

// A flush happens on the flush tick, not before, and writes exactly what
// was received; the next tick flushes what came since.
func TestFlushOnTick(t *testing.T) {
	h := newHarness(t, func(s *Settings) { s.FlushInterval = time.Minute })
	h.start()
	h.initialized(0)
	want := h.put(1, "a1", "v1", "b1", "v2")
	h.settle()
	h.noFlush()
	h.clk.advance(time.Minute - 3*progressInterval)
	h.settle() // a second before the tick
	h.noFlush()
	h.clk.advance(progressInterval)
	sc := h.flushed()
	h.noFlush()
	if got, _ := h.stored(); len(got) != len(want) {
		t.Fatalf("first tick: %d changes stored, want %d", len(got), len(want))
	}
	if sc.StoreId != testStore {
		t.Fatalf("span checkpoints of store %d, want %d", sc.StoreId, testStore)
	}

	// Nothing flushes between ticks.
	want = append(want, h.put(10, "c1", "v3")...)
	h.settle()
	h.noFlush()
	h.clk.advance(time.Minute)
	h.flushed()
	got, metas := h.stored()
	sameChanges(t, got, want)
	if metas != 2 {
		t.Fatalf("%d meta files, want 2 (one per tick)", metas)
	}
}

// A builder at the file size limit flushes at once, without a tick.
func TestFlushOnSize(t *testing.T) {
	h := newHarness(t, func(s *Settings) { s.FileSizeLimit = 1 << 10 })
	h.start()
	h.initialized(0)
	want := h.put(1, "small", "v")
	h.settle()
	h.noFlush()
	want = append(want, h.put(2, "big", strings.Repeat("x", 2<<10))...)
	h.flushed()
	got, metas := h.stored()
	sameChanges(t, got, want)
	if metas != 1 {
		t.Fatalf("%d meta files, want 1", metas)
	}
}

// With a flush in flight and the builder full, the loop stops taking
// events (TiKV is then slowed by gRPC flow control); once the flush is
// done it takes them again.
func TestBackpressure(t *testing.T) {
	h := newHarness(t, func(s *Settings) { s.FileSizeLimit = 1 << 10 })
	gate := make(chan struct{})
	h.st.set(gate, nil)
	h.start()
	h.initialized(0)
	big := strings.Repeat("x", 2<<10)
	want := h.put(1, "k1", big) // fills the builder: a flush starts and is held
	h.upload()
	want = append(want, h.put(2, "k2", big)...) // fills the next builder
	h.waitFor("the second event to be taken", func() bool { return len(h.r.feed.events) == 0 })
	want = append(want, h.put(3, "k3", "v3")...) // must wait
	// Each explicit flush request is a turn of the loop in which the
	// event, were it readable, would be picked half of the time.
	for i := range 64 {
		done := make(chan error, 1)
		h.r.flushCh <- done
		if n := len(h.r.feed.events); n != 1 {
			t.Fatalf("turn %d: %d events waiting, want 1: the loop read events with a flush in flight and the builder full", i, n)
		}
	}
	close(gate)
	h.flushed()
	h.flushed() // the full builder's flush, asked for meanwhile
	h.waitFor("the held event to be taken", func() bool { return len(h.r.feed.events) == 0 })
	h.stop()
	got, _ := h.stored()
	sameChanges(t, got, want)
}

// A failed upload is retried after a backoff, and the flush then writes
// everything once.
func TestFlushRetriesUpload(t *testing.T) {
	h := newHarness(t, func(s *Settings) { s.FlushInterval = time.Minute })
	h.st.set(nil, fmt.Errorf("injected: %w", syscall.ECONNRESET))
	h.start()
	h.initialized(0)
	want := h.put(1, "a", "1", "b", "2")
	h.settle()
	h.clk.advance(time.Minute)
	for i := range 3 {
		h.upload()
		wait := h.retryArmed()
		if wait <= 0 || wait > time.Minute {
			t.Fatalf("retry in %s, want a backoff within the flush interval", wait)
		}
		if i == 2 {
			h.st.set(nil, nil) // the next attempt succeeds
		}
		h.noFlush()
		h.clk.advance(wait)
	}
	h.upload()
	h.flushed()
	got, metas := h.stored()
	sameChanges(t, got, want)
	if metas != 1 {
		t.Fatalf("%d meta files, want 1", metas)
	}
	if n := h.r.env.Counters.Retries.Load(); n != 3 {
		t.Fatalf("%d retries counted, want 3", n)
	}
}

// Failures past the retry budget stop the task with a fatal error that
// keeps the failure's code and says the budget is spent.
func TestFlushRetryBudgetIsFatal(t *testing.T) {
	h := newHarness(t, func(s *Settings) {
		s.FlushInterval = time.Minute
		s.RetryBudget = retry.Budget{Attempts: 2, Duration: time.Hour}
	})
	h.st.set(nil, fmt.Errorf("injected: %w", syscall.ECONNRESET))
	h.start()
	h.initialized(0)
	h.put(1, "a", "1")
	h.settle()
	h.clk.advance(time.Minute)
	for range 2 { // within the budget: retried
		h.upload()
		h.clk.advance(h.retryArmed())
	}
	h.upload() // the third failure spends it
	select {
	case <-h.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the loop did not stop on a spent retry budget")
	}
	f := h.r.fatal
	if f == nil {
		t.Fatal("no fatal error")
	}
	if f.Info.Class != errs.Fatal || f.Info.Code != errs.CodeNetwork || !strings.Contains(f.Err.Error(), "retry budget exhausted (3 failures") {
		t.Fatalf("fatal error %v (class %v), want a spent budget of Network failures", f, f.Info.Class)
	}
	if _, metas := h.stored(); metas != 0 {
		t.Fatalf("%d meta files written by failing uploads", metas)
	}
}

// A stop with flushOnExit flushes what is buffered; one without (a crash,
// a delete) writes nothing.
func TestFinalFlush(t *testing.T) {
	for _, flush := range []bool{true, false} {
		t.Run(fmt.Sprint("flushOnExit=", flush), func(t *testing.T) {
			h := newHarness(t, nil)
			h.start()
			h.initialized(0)
			want := h.put(1, "a", "1", "b", "2")
			h.settle()
			h.noFlush()
			h.flushOnExit.Store(flush)
			h.stop()
			got, metas := h.stored()
			if !flush {
				if metas != 0 || len(got) != 0 {
					t.Fatalf("%d meta files, %d changes written without a final flush", metas, len(got))
				}
				return
			}
			sameChanges(t, got, want)
			if metas != 1 {
				t.Fatalf("%d meta files, want 1", metas)
			}
			// The final flush writes every region checkpoint.
			if w := h.meta.regionWrites(); len(w) != 1 || len(w[0]) != 1 || w[0][0].RegionID != 10 {
				t.Fatalf("region checkpoint writes %v, want region 10 once", w)
			}
		})
	}
}

// A flush publishes what it made durable: the span checkpoints, the store
// checkpoint (the region's resolved ts), the flush GC safepoint, and the
// region checkpoint — all of them at most once per
// RegionCheckpointInterval, only new regions in between.
func TestCheckpointPublishing(t *testing.T) {
	h := newHarness(t, func(s *Settings) {
		s.FlushInterval = time.Minute
		s.RegionCheckpointInterval = 5 * time.Minute
	})
	h.start()
	h.initialized(0)
	h.put(1, "a", "1")
	h.resolve(5)
	h.settle()
	h.clk.advance(time.Minute)
	sc := h.flushed()
	if len(sc.Spans) == 0 || sc.Spans[0].Ts != h.ts(5) {
		t.Fatalf("span checkpoints %v, want the region's resolved ts %d", sc.Spans, h.ts(5))
	}
	h.waitFor("the store checkpoint", func() bool { return h.r.stats.StoreCheckpoint.Load() == h.ts(5) })
	h.waitFor("the flush safepoint at the checkpoint", func() bool {
		sp, ok := h.pd.safePoints.Load(meta.FlushSafePointID("t", testStore))
		return ok && sp.(uint64) == h.ts(5)-1
	})
	if w := h.meta.regionWrites(); len(w) != 1 || w[0][0].TS != h.ts(5) || w[0][0].EpochVersion != 3 {
		t.Fatalf("region checkpoint writes %v, want one at %d", w, h.ts(5))
	}

	// The next flush within the interval: no region write.
	h.resolve(9)
	h.settle()
	h.clk.advance(time.Minute)
	if sc := h.flushed(); sc.Spans[0].Ts != h.ts(9) {
		t.Fatalf("second flush published %d, want %d", sc.Spans[0].Ts, h.ts(9))
	}
	h.waitFor("the store checkpoint", func() bool { return h.r.stats.StoreCheckpoint.Load() == h.ts(9) })
	if w := h.meta.regionWrites(); len(w) != 1 {
		t.Fatalf("%d region checkpoint writes within the interval, want 1", len(w))
	}

	// Past the interval: every region again.
	h.resolve(12)
	h.settle()
	h.clk.advance(5 * time.Minute)
	h.flushed()
	h.waitFor("the store checkpoint", func() bool { return h.r.stats.StoreCheckpoint.Load() == h.ts(12) })
	if w := h.meta.regionWrites(); len(w) != 2 || w[1][0].TS != h.ts(12) {
		t.Fatalf("region checkpoint writes %v, want a second full one at %d", w, h.ts(12))
	}
}

// The flush's meta file is what restore reads: it carries the flush's
// resolved ts and the store.
func TestFlushMetaFile(t *testing.T) {
	h := newHarness(t, nil)
	h.start()
	h.initialized(0)
	h.put(1, "a", "1")
	h.resolve(4)
	h.settle()
	h.stop()
	metas, err := logfile.ReadMetas(t.Context(), h.st.Storage)
	if err != nil {
		t.Fatal(err)
	}
	if len(metas) != 1 {
		t.Fatalf("%d meta files, want 1", len(metas))
	}
	md := metas[0].Metadata
	if md.StoreId != int64(testStore) || md.ResolvedTs != h.ts(4) {
		t.Fatalf("meta file of store %d resolved %d, want store %d resolved %d", md.StoreId, md.ResolvedTs, testStore, h.ts(4))
	}
	if len(md.FileGroups) == 0 {
		t.Fatal("the meta file lists no data")
	}
}
