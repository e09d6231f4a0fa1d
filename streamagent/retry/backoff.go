package retry

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// NewBackoff is the agent's one way to pace retries: exponential from
// first, doubling, capped at most, each wait randomised by ±50 % so agents
// retrying the same dependency do not arrive together.
func NewBackoff(first, most time.Duration) *backoff.ExponentialBackOff {
	b := &backoff.ExponentialBackOff{InitialInterval: first, RandomizationFactor: 0.5, Multiplier: 2, MaxInterval: most}
	b.Reset()
	return b
}

// Sleep waits d or until ctx ends, and reports whether ctx is still live.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
