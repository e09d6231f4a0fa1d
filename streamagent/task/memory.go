package task

import (
	"context"
	"math"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// The Go runtime's soft memory limit is the agent process's to set
// (agentrun: --memory-limit, less the file pages the process maps). Past
// it the collector runs back to back, but Go caps it at half the CPU and
// lets the heap pass the limit rather than stall the program: under a
// burst of ten times the memory quota, a limit of 96 MiB held 108 MiB of
// heap (BenchmarkBurstRSS). So a task does its part to stay inside it:
// near the limit its builder spills at once, whatever the quota says, and
// past it the receiver gives the collector time before it takes the next
// message.
// Without a limit (tests, embedders that set none) none of this happens.

// memGauge reads the runtime's memory against its soft limit. One per
// goroutine: metrics.Read is not safe on a shared sample slice.
type memGauge struct{ s [4]metrics.Sample }

func newMemGauge() *memGauge {
	g := &memGauge{}
	for i, name := range []string{"/memory/classes/total:bytes", "/memory/classes/heap/released:bytes", "/gc/heap/live:bytes", "/gc/cycles/total:gc-cycles"} {
		g.s[i].Name = name
	}
	return g
}

// memUse is the runtime's memory against its limit: used is what the limit
// is compared with (all the runtime mapped, less what it gave back), live
// the heap the last collection found live.
type memUse struct {
	used, live, limit int64
	cycles            uint64 // collections completed
}

func (g *memGauge) read() memUse {
	limit := debug.SetMemoryLimit(-1)
	if limit == math.MaxInt64 {
		return memUse{} // no limit: nothing to keep to
	}
	metrics.Read(g.s[:])
	v := func(i int) int64 { return int64(g.s[i].Value.Uint64()) }
	return memUse{used: v(0) - v(1), live: v(2), limit: limit, cycles: g.s[3].Value.Uint64()}
}

// over reports whether the runtime holds more than its limit.
func (u memUse) over() bool { return u.limit > 0 && u.used > u.limit }

// near reports whether the runtime holds more than its limit less margin.
func (u memUse) near(margin int64) bool { return u.limit > 0 && u.used > u.limit-margin }

// collectable reports whether what is over the limit is garbage: the live
// heap is well under the limit, so the collector (and the runtime's
// returning freed memory to the system) brings the process back under.
func (u memUse) collectable() bool { return u.over() && u.live < u.limit-u.limit/8 }

// The receiver waits before the next message while the process is over
// its limit, polling every memoryPoll. While what is over is garbage it
// waits until the process is back under the limit, for at most
// maxGarbageWait or two collections (memory the collector freed twice over
// and that still counts is not garbage: fragments the runtime cannot give
// back). While the live heap itself is near the limit it waits one
// collection at most, and maxLiveWait: that lets the loop's spill take
// effect, and a limit the process cannot keep slows intake (TiKV then
// batches more rows into each message) but never stops it.
const (
	memoryPoll     = time.Millisecond
	maxGarbageWait = time.Second
	maxLiveWait    = 20 * time.Millisecond
)

// waitForCollector holds the receiver while the process is over its
// limit, as above; it returns how long it waited.
func (g *memGauge) waitForCollector(ctx context.Context) time.Duration {
	u := g.read()
	if !u.over() {
		return 0
	}
	start, most, cycles := u.cycles, maxGarbageWait, uint64(2)
	if !u.collectable() {
		most, cycles = maxLiveWait, 1
	}
	var waited time.Duration
	for {
		t := time.NewTimer(memoryPoll)
		began := time.Now()
		select {
		case <-ctx.Done():
			t.Stop()
			return waited + time.Since(began)
		case <-t.C:
		}
		waited += time.Since(began)
		if u := g.read(); !u.over() || waited >= most || u.cycles-start >= cycles {
			return waited
		}
	}
}

// pressureSpill is the least a builder spills when the process is near its
// memory limit below the quota: smaller spills would free too little to
// pay for their writes.
const pressureSpill = 1 << 20

// spillMargin is how far under the memory limit builders start to spill:
// room for what the intake window may still bring in. Spilling only once
// over the limit left the collector to hold the line, back to back: ~1.8x
// the CPU a row under a burst, and a peak 4–11 MiB over the limit; from
// the margin the collector rarely has to (BenchmarkBurstRSS at 96 MiB: the
// peak 93–97 MiB, CPU a row as before it).
const spillMargin = intakeWindow
