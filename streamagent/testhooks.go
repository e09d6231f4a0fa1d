package streamagent

import (
	"context"
	"errors"
	"fmt"
)

// Testing returns the agent's test hooks. They exist for the end-to-end
// tests (tests/e2e) and are no part of running an agent: an agent does its
// own flushing and never crashes on request.
//
// Why an accessor rather than methods on Agent or a Config field: methods
// on Agent sit beside Run and Status, where a production caller would
// reach FlushNow as if it were a shutdown hook (it is not: it writes more
// than a scheduled flush). A Config field would keep them away as well,
// but every test that builds an agent would have to thread the hooks
// through its helpers. Behind Testing() a caller has to name test
// support to reach them, and TestTestHooksOnlyInTests holds every caller
// to a _test.go file.
func (a *Agent) Testing() TestHooks { return TestHooks{a: a} }

// TestHooks drive an agent from a test. See Agent.Testing.
type TestHooks struct{ a *Agent }

// Crash stops every task without its final flush, as a killed process
// would, and returns once they have stopped; Run then returns when its
// context ends. For crash tests: whatever was buffered is lost and must be
// rescanned by whoever observes those ranges next.
func (h TestHooks) Crash() {
	a := h.a
	a.mu.Lock()
	hs := make([]*runnerHandle, 0, len(a.runners))
	for _, h := range a.runners {
		h.flushOnExit.Store(false)
		hs = append(hs, h)
	}
	a.mu.Unlock()
	for _, h := range hs {
		h.cancel()
		<-h.done
	}
}

// FlushWithAllRegionCheckpoints flushes every running task now and waits
// for the outcome. Such a flush differs from a scheduled one in what it
// writes: like a final flush it rewrites every flushed region's
// checkpoint, where a scheduled flush writes only the regions that have
// none yet until Config.RegionCheckpointInterval has passed. A test that
// reads the region checkpoints right after it sees them all.
func (h TestHooks) FlushWithAllRegionCheckpoints(ctx context.Context) error {
	a := h.a
	a.mu.Lock()
	hs := make([]*runnerHandle, 0, len(a.runners))
	for _, h := range a.runners {
		hs = append(hs, h)
	}
	a.mu.Unlock()
	var errs []error
	for _, h := range hs {
		if err := h.r.FlushWithAllRegionCheckpoints(ctx); err != nil {
			errs = append(errs, fmt.Errorf("task %s: %w", h.r.Name(), err))
		}
	}
	return errors.Join(errs...)
}

// Tasks lists the tasks the agent runs now.
func (h TestHooks) Tasks() []string {
	a := h.a
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]string, 0, len(a.runners))
	for n := range a.runners {
		out = append(out, n)
	}
	return out
}
