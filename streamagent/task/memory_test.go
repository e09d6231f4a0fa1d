package task

import (
	"context"
	"fmt"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"logbackup/streamagent/logfile"
)

// withMemoryLimit sets the process's soft memory limit for the rest of the
// test (the task reads the runtime's own; no test here runs in parallel).
func withMemoryLimit(t *testing.T, limit int64) {
	prev := debug.SetMemoryLimit(limit)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
}

// putMiB feeds about n MiB of 1 KiB rows, from key prefix p at ts i.
func (h *harness) putMiB(p string, i, n int) []logfile.Change {
	var want []logfile.Change
	value := strings.Repeat("v", 1024)
	for b := 0; b < n*8; b++ { // messages of 128 rows
		kvs := make([]string, 0, 256)
		for r := 0; r < 128; r++ {
			kvs = append(kvs, fmt.Sprintf("%s%06d", p, b*128+r), value)
		}
		want = append(want, h.put(i+b*128, kvs...)...)
	}
	return want
}

// TestSpillOverMemoryLimit: below its quota a builder keeps its changes in
// memory, but with the process near or over its memory limit it spills
// them, so the limit is kept whatever the quota allows; nothing spilled is
// lost.
func TestSpillOverMemoryLimit(t *testing.T) {
	h := newHarness(t, func(s *Settings) { s.FlushInterval = time.Hour })
	h.start()
	h.initialized(0)
	want := h.putMiB("a", 1, 2)
	h.settle()
	if n := h.r.env.Counters.Spills.Load(); n != 0 {
		t.Fatalf("%d spills of 2 MiB under a 256 MiB quota and no memory limit", n)
	}
	withMemoryLimit(t, 1) // everything the process holds is over it
	want = append(want, h.putMiB("b", 100000, 2)...)
	h.settle()
	if n := h.r.env.Counters.Spills.Load(); n == 0 {
		t.Fatalf("no spill with the process over its memory limit (builder holds %d bytes, quota %d)", h.r.builder.Memory(), h.r.env.Settings.MemoryQuota)
	}
	if m := h.r.builder.Memory(); m >= pressureSpill+64<<10 {
		t.Fatalf("builder holds %d bytes over the limit, want under %d", m, pressureSpill)
	}
	debug.SetMemoryLimit(-1)
	h.clk.advance(time.Hour)
	h.flushed()
	got, _ := h.stored()
	sameChanges(t, got, want)
}

// TestWaitForCollector: the receiver waits only while the process is
// over its limit; with the live heap itself over it, briefly (one
// collection, maxLiveWait), so intake slows without stopping.
func TestWaitForCollector(t *testing.T) {
	g := newMemGauge()
	if w := g.waitForCollector(context.Background()); w != 0 {
		t.Fatalf("waited %s with no memory limit", w)
	}
	withMemoryLimit(t, 1) // the live heap alone is over it
	if u := g.read(); !u.over() || u.collectable() {
		t.Fatalf("%+v: a 1-byte limit must be over, and not with garbage", u)
	}
	// Generous bounds: a wait of one poll to maxLiveWait, scheduling aside.
	if w := g.waitForCollector(context.Background()); w == 0 || w >= maxGarbageWait/4 {
		t.Fatalf("waited %s with the live heap over the limit, want a brief wait (%s at most)", w, maxLiveWait)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if w := g.waitForCollector(ctx); w >= maxLiveWait {
		t.Fatalf("waited %s with the context done", w)
	}
	if u := (memUse{used: 90, limit: 96}); u.over() || !u.near(8) || u.near(4) {
		t.Fatalf("%+v: under the limit, within 8 of it, not within 4", u)
	}
	if u := (memUse{used: 100, live: 40, limit: 96}); !u.collectable() {
		t.Fatalf("%+v: garbage over the limit is collectable", u)
	}
	for _, u := range []memUse{
		{used: 100, live: 90, limit: 96}, // the live heap near the limit
		{used: 90, live: 40, limit: 96},  // under the limit
		{used: 100, live: 40},            // no limit
	} {
		if u.collectable() {
			t.Fatalf("%+v: not collectable", u)
		}
	}
}
