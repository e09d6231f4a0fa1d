package storage

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"syscall"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"gocloud.dev/gcerrors"
)

// RetryPolicy bounds how transient failures are retried.
type RetryPolicy struct {
	MaxAttempts    int           // total tries, including the first
	AttemptTimeout time.Duration // each try's deadline (catches stalled bodies)
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
}

// DefaultRetryPolicy: a few quick retries; a persistent failure is returned
// within about 5×30 s at worst, and the agent's own retry budget decides
// what happens next.
var DefaultRetryPolicy = RetryPolicy{MaxAttempts: 5, AttemptTimeout: 30 * time.Second, InitialBackoff: 100 * time.Millisecond, MaxBackoff: 3 * time.Second}

type options struct {
	retry   RetryPolicy
	onRetry func(op string, attempt int, err error)
}

func defaultOptions() options { return options{retry: DefaultRetryPolicy} }

// Option configures a Storage.
type Option func(*options)

// WithRetryPolicy replaces the retry policy.
func WithRetryPolicy(p RetryPolicy) Option {
	return func(o *options) {
		if p.MaxAttempts < 1 {
			p.MaxAttempts = 1
		}
		if p.AttemptTimeout <= 0 {
			p.AttemptTimeout = DefaultRetryPolicy.AttemptTimeout
		}
		o.retry = p
	}
}

// WithRetryObserver is called before each retry with the failed attempt's
// number (1-based) and error, so callers can count retries by cause.
func WithRetryObserver(fn func(op string, attempt int, err error)) Option {
	return func(o *options) { o.onRetry = fn }
}

// retry runs fn until it succeeds, fails permanently, or the policy is
// spent. Each attempt has its own deadline under ctx.
func (s *blobStorage) retry(ctx context.Context, op string, fn func(context.Context) error) error {
	p := s.opts.retry
	backoff := p.InitialBackoff
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, p.AttemptTimeout)
		err := fn(actx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || attempt >= p.MaxAttempts || !Retryable(err) {
			return err
		}
		if s.opts.onRetry != nil {
			s.opts.onRetry(op, attempt, err)
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		backoff = min(backoff*2, p.MaxBackoff)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return err
		}
	}
}

// Retryable reports whether a storage error is transient: server errors,
// throttling, timeouts, connection failures. Access denied, a missing
// bucket or object, and bad requests are not.
func Retryable(err error) bool {
	if err == nil {
		return false
	}
	var re *awshttp.ResponseError
	if errors.As(err, &re) && re.HTTPStatusCode() != 0 {
		c := re.HTTPStatusCode()
		return c >= 500 || c == 429 || c == 408
	}
	switch gcerrors.Code(err) {
	case gcerrors.NotFound, gcerrors.PermissionDenied, gcerrors.InvalidArgument,
		gcerrors.FailedPrecondition, gcerrors.AlreadyExists, gcerrors.Unimplemented:
		return false
	case gcerrors.Internal, gcerrors.ResourceExhausted, gcerrors.DeadlineExceeded, gcerrors.Canceled:
		return true
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	// gocloud's Unknown for a remote backend (a 5xx without a parsed
	// status, a dropped connection): transient until proven otherwise; the
	// attempt bound keeps it finite.
	return gcerrors.Code(err) == gcerrors.Unknown
}
