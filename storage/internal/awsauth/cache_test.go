package awsauth

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// stubProvider counts its calls; each call announces itself on entered
// (if set), waits for release (if set), then returns next(n).
type stubProvider struct {
	calls   atomic.Int32
	entered chan struct{}
	release chan struct{}
	next    func(n int) (Credentials, error)
}

func (s *stubProvider) Retrieve(ctx context.Context) (Credentials, error) {
	n := int(s.calls.Add(1))
	if s.entered != nil {
		s.entered <- struct{}{}
	}
	if s.release != nil {
		select {
		case <-s.release:
		case <-ctx.Done():
			return Credentials{}, ctx.Err()
		}
	}
	return s.next(n)
}

// watchedCtx tells (on waiting) when Retrieve first selects on its Done
// channel: a caller that waits for another's refresh does so at once, so
// the tests know it is waiting without sleeping.
type watchedCtx struct {
	context.Context
	once    sync.Once
	waiting chan struct{}
}

func watched(ctx context.Context) *watchedCtx {
	return &watchedCtx{Context: ctx, waiting: make(chan struct{})}
}

func (w *watchedCtx) Done() <-chan struct{} {
	w.once.Do(func() { close(w.waiting) })
	return w.Context.Done()
}

// noCall fails the test if the stub was entered.
func noCall(t *testing.T, stub *stubProvider) {
	t.Helper()
	select {
	case <-stub.entered:
		t.Fatal("a second call reached the provider while the first ran")
	default:
	}
}

// recv waits for ch, failing the test rather than hanging if the code
// under test is wrong.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(2 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
	var zero T
	return zero
}

// fakeClock is a settable time.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

func expiringAt(t time.Time) func(int) (Credentials, error) {
	return func(n int) (Credentials, error) {
		return Credentials{AccessKeyID: string(rune('A' + n - 1)), SecretAccessKey: "s", Expires: t}, nil
	}
}

func TestCacheRefreshesBeforeExpiry(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name      string
		lifetime  time.Duration
		fresh     time.Duration // still cached at t0+fresh
		refreshed time.Duration // refreshed at t0+refreshed
	}{
		{"one hour: 5 minutes before", time.Hour, 54 * time.Minute, 55 * time.Minute},
		{"15 minutes: 10% before", 15 * time.Minute, 13*time.Minute + 29*time.Second, 13*time.Minute + 30*time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := &fakeClock{t: t0}
			stub := &stubProvider{next: expiringAt(t0.Add(tc.lifetime))}
			c := newCache(stub)
			c.now = clock.now
			get := func() string { return mustRetrieve(t, c).AccessKeyID }
			if get() != "A" || get() != "A" || stub.calls.Load() != 1 {
				t.Fatalf("second Retrieve called the provider: %d calls", stub.calls.Load())
			}
			clock.set(t0.Add(tc.fresh))
			if get() != "A" {
				t.Errorf("refreshed too early, at %v", tc.fresh)
			}
			clock.set(t0.Add(tc.refreshed))
			if get() != "B" || stub.calls.Load() != 2 {
				t.Errorf("not refreshed at %v: %d calls", tc.refreshed, stub.calls.Load())
			}
		})
	}
}

func TestCacheKeepsCredentialsThatDoNotExpire(t *testing.T) {
	clock := &fakeClock{t: time.Now()}
	stub := &stubProvider{next: expiringAt(time.Time{})}
	c := newCache(stub)
	c.now = clock.now
	mustRetrieve(t, c)
	clock.set(clock.now().Add(1000 * time.Hour))
	mustRetrieve(t, c)
	if n := stub.calls.Load(); n != 1 {
		t.Errorf("%d calls, want 1", n)
	}
}

func TestCacheDoesNotKeepFailures(t *testing.T) {
	boom := errors.New("boom")
	stub := &stubProvider{next: func(n int) (Credentials, error) {
		if n == 1 {
			return Credentials{}, boom
		}
		return Credentials{AccessKeyID: "A", Expires: time.Now().Add(time.Hour)}, nil
	}}
	c := newCache(stub)
	if _, err := c.Retrieve(ctxT(t)); !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	if got := mustRetrieve(t, c); got.AccessKeyID != "A" || stub.calls.Load() != 2 {
		t.Errorf("got %+v after %d calls", got, stub.calls.Load())
	}
}

// Concurrent callers share one refresh.
func TestCacheOneRefreshAtATime(t *testing.T) {
	stub := &stubProvider{entered: make(chan struct{}, 100), release: make(chan struct{}),
		next: expiringAt(time.Now().Add(time.Hour))}
	c := newCache(stub)
	const callers = 20
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	ctxs := make([]*watchedCtx, callers)
	for i := range callers {
		ctxs[i] = watched(ctxT(t))
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := c.Retrieve(ctxs[i])
			if err == nil && got.AccessKeyID != "A" {
				err = errors.New("wrong credentials " + got.AccessKeyID)
			}
			errs <- err
		}()
	}
	// Every caller is either in the provider (one) or waiting for it.
	for _, ctx := range ctxs {
		recv(t, ctx.waiting, "a caller to wait")
	}
	recv(t, stub.entered, "the first call")
	noCall(t, stub)
	close(stub.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if n := stub.calls.Load(); n != 1 {
		t.Errorf("%d calls, want 1", n)
	}
}

// A waiter gives up with its own ctx; when the caller running the
// refresh gives up with its, a waiter runs the refresh itself.
func TestCacheWaitersHonourTheirContext(t *testing.T) {
	stub := &stubProvider{entered: make(chan struct{}, 10), release: make(chan struct{}),
		next: expiringAt(time.Now().Add(time.Hour))}
	c := newCache(stub)

	leaderCtx, cancelLeader := context.WithCancel(context.Background())
	leaderDone := make(chan error, 1)
	go func() { _, err := c.Retrieve(leaderCtx); leaderDone <- err }()
	recv(t, stub.entered, "the first call")

	// A waiter whose ctx ends returns, though the refresh goes on.
	shortCtx, cancelShort := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelShort()
	if _, err := c.Retrieve(shortCtx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waiter err = %v", err)
	}

	// A waiter with time left takes over when the leader gives up.
	waiterCtx := watched(ctxT(t))
	waiterDone := make(chan Credentials, 1)
	go func() { got, _ := c.Retrieve(waiterCtx); waiterDone <- got }()
	recv(t, waiterCtx.waiting, "the waiter to wait")
	noCall(t, stub)
	cancelLeader()
	if err := recv(t, leaderDone, "the leader"); !errors.Is(err, context.Canceled) {
		t.Errorf("leader err = %v", err)
	}
	recv(t, stub.entered, "the waiter's own refresh")
	close(stub.release)
	if got := recv(t, waiterDone, "the waiter"); got.AccessKeyID != "B" {
		t.Errorf("waiter got %+v", got)
	}
}

// A real failure is shared with the waiters, not retried by each.
func TestCacheSharesAFailure(t *testing.T) {
	boom := errors.New("boom")
	stub := &stubProvider{entered: make(chan struct{}, 10), release: make(chan struct{}),
		next: func(int) (Credentials, error) { return Credentials{}, boom }}
	c := newCache(stub)
	done := make(chan error, 2)
	go func() { _, err := c.Retrieve(ctxT(t)); done <- err }()
	recv(t, stub.entered, "the first call")
	waiter := watched(ctxT(t))
	go func() { _, err := c.Retrieve(waiter); done <- err }()
	recv(t, waiter.waiting, "the waiter to wait")
	noCall(t, stub)
	close(stub.release)
	for range 2 {
		if err := recv(t, done, "a caller"); !errors.Is(err, boom) {
			t.Errorf("err = %v", err)
		}
	}
	if n := stub.calls.Load(); n != 1 {
		t.Errorf("%d calls, want 1", n)
	}
}
