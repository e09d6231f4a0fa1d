package streamagent

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
)

// lifetime is one Run's goroutines. Every goroutine the agent starts —
// its loops, a task's runner, a start being retried, a fatal report, a
// recovery prober — is started through spawn and so joined by wait: Run
// returns only once each of them has ended, so nothing of a stopped agent
// still writes to etcd, PD or storage, or logs, after Run returned (a
// caller may close the etcd client and the PD client right away, or start
// another Run). Each goroutine ends with the context it was given: Run's,
// or one derived from it.
//
// Goroutines that join themselves before their starter returns (a task's
// receivers, stopAll's stops) need not go through here.
type lifetime struct {
	g errgroup.Group
	// live counts the goroutines started and not yet ended (tests).
	live atomic.Int64
	// waiting is closed when wait begins: a test's fake dependency that
	// answers only after Run's context ended holds its goroutine up to
	// this point, so a goroutine Run did not wait for is certain to
	// outlive Run (TestRunJoinsItsGoroutines).
	waiting     chan struct{}
	waitingOnce sync.Once
}

func newLifetime() *lifetime { return &lifetime{waiting: make(chan struct{})} }

// spawn runs f on a goroutine of the lifetime and returns a channel
// closed when f returns. It is called by Run before it waits, or by a
// goroutine of the lifetime itself, so no spawn can come after wait has
// seen the group empty.
func (l *lifetime) spawn(f func()) <-chan struct{} {
	done := make(chan struct{})
	l.live.Add(1)
	l.g.Go(func() error {
		defer l.live.Add(-1)
		defer close(done)
		f()
		return nil
	})
	return done
}

// wait returns once every goroutine spawned has ended.
func (l *lifetime) wait() {
	l.waitingOnce.Do(func() { close(l.waiting) })
	_ = l.g.Wait()
}
