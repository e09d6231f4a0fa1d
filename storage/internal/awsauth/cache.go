package awsauth

import (
	"context"
	"sync"
	"time"
)

// refreshWindow is how long before they expire credentials are replaced,
// so that a request signed with them does not outlive them. For short
// lived credentials it is 10% of their lifetime instead.
const refreshWindow = 5 * time.Minute

// cachedProvider keeps another provider's credentials until they near
// their expiry. One refresh runs at a time; callers arriving meanwhile
// wait for it (or for their own ctx). A failure is not kept: the next
// call tries again.
type cachedProvider struct {
	p   Provider
	now func() time.Time

	mu       sync.Mutex
	creds    Credentials
	fetched  time.Time // when creds were fetched; zero = none yet
	inflight *refresh  // the refresh running, if any
}

// refresh is one call of the wrapped provider, shared by its waiters.
type refresh struct {
	done  chan struct{}
	creds Credentials
	err   error
	// abandoned: it failed because its caller's ctx ended, which says
	// nothing about the other waiters': they try again themselves.
	abandoned bool
}

func newCache(p Provider) *cachedProvider {
	return &cachedProvider{p: p, now: time.Now}
}

func (c *cachedProvider) Retrieve(ctx context.Context) (Credentials, error) {
	for {
		c.mu.Lock()
		if !c.fetched.IsZero() && c.fresh() {
			creds := c.creds
			c.mu.Unlock()
			return creds, nil
		}
		if r := c.inflight; r != nil {
			c.mu.Unlock()
			select {
			case <-r.done:
				if r.abandoned {
					continue
				}
				return r.creds, r.err
			case <-ctx.Done():
				return Credentials{}, &Error{Op: "waiting for a credentials refresh", Err: ctx.Err()}
			}
		}
		r := &refresh{done: make(chan struct{})}
		c.inflight = r
		c.mu.Unlock()
		return c.run(ctx, r)
	}
}

// run calls the wrapped provider for r, publishes the outcome and wakes
// r's waiters, even if the provider panics.
func (c *cachedProvider) run(ctx context.Context, r *refresh) (Credentials, error) {
	r.abandoned = true // until the provider returns
	defer func() {
		c.mu.Lock()
		if r.err == nil && !r.abandoned {
			c.creds, c.fetched = r.creds, c.now()
		}
		c.inflight = nil
		c.mu.Unlock()
		close(r.done)
	}()
	r.creds, r.err = c.p.Retrieve(ctx)
	r.abandoned = r.err != nil && ctx.Err() != nil
	return r.creds, r.err
}

// fresh says whether the cached credentials are still good to hand out.
// Called with c.mu held.
func (c *cachedProvider) fresh() bool {
	if c.creds.Expires.IsZero() {
		return true
	}
	window := refreshWindow
	if tenth := c.creds.Expires.Sub(c.fetched) / 10; tenth < window {
		window = max(tenth, 0)
	}
	return c.now().Before(c.creds.Expires.Add(-window))
}
