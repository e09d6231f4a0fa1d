package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/cenkalti/backoff/v5"
	"gocloud.dev/gcerrors"
	"google.golang.org/api/googleapi"

	"logbackup/storage/internal/s3driver"
)

// RetryPolicy bounds how transient failures are retried inside the
// storage. Zero fields take the default's value.
type RetryPolicy struct {
	MaxAttempts    int           // total tries, including the first
	AttemptTimeout time.Duration // each try's deadline; catches a stalled body
	InitialBackoff time.Duration // first wait; doubles per retry, with jitter
	MaxBackoff     time.Duration // cap on one wait
	MaxElapsed     time.Duration // cap on the whole operation, waits included
}

// DefaultRetryPolicy rides out a short outage (a few seconds of 503s, a
// stalled connection) and returns a persistent failure within MaxElapsed;
// the agent's own retry budget decides what happens after that.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{
		MaxAttempts:    5,
		AttemptTimeout: 30 * time.Second,
		InitialBackoff: 200 * time.Millisecond,
		MaxBackoff:     5 * time.Second,
		MaxElapsed:     2 * time.Minute,
	}
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	d := DefaultRetryPolicy()
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = d.MaxAttempts
	}
	if p.AttemptTimeout <= 0 {
		p.AttemptTimeout = d.AttemptTimeout
	}
	if p.InitialBackoff <= 0 {
		p.InitialBackoff = d.InitialBackoff
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = d.MaxBackoff
	}
	p.MaxBackoff = max(p.MaxBackoff, p.InitialBackoff)
	if p.MaxElapsed <= 0 {
		p.MaxElapsed = d.MaxElapsed
	}
	return p
}

type options struct {
	retry   RetryPolicy
	onRetry func(op string, attempt int, err error)
}

func defaultOptions() options { return options{retry: DefaultRetryPolicy()} }

// Option configures a Storage.
type Option func(*options)

// WithRetryPolicy replaces the retry policy; zero fields keep the default.
func WithRetryPolicy(p RetryPolicy) Option {
	return func(o *options) { o.retry = p.withDefaults() }
}

// WithRetryObserver registers fn, called before each retry with the
// operation ("write", "read", "list", "delete", "exists"), the number of
// the attempt that failed (1-based) and its error, so the agent can count
// retries by cause. fn runs on the caller's goroutine and must be quick.
func WithRetryObserver(fn func(op string, attempt int, err error)) Option {
	return func(o *options) { o.onRetry = fn }
}

// retry runs fn until it succeeds, fails permanently, or the policy is
// spent. Each attempt has its own deadline, and the whole operation one
// more, both under ctx.
func retry(ctx context.Context, o options, op string, fn func(context.Context) error) error {
	p := o.retry
	ctx, cancel := context.WithTimeout(ctx, p.MaxElapsed)
	defer cancel()
	bo := &backoff.ExponentialBackOff{InitialInterval: p.InitialBackoff, RandomizationFactor: 0.5, Multiplier: 2, MaxInterval: p.MaxBackoff}
	bo.Reset()
	for attempt := 1; ; attempt++ {
		actx, acancel := context.WithTimeout(ctx, p.AttemptTimeout)
		err := fn(actx)
		acancel()
		if err == nil {
			return nil
		}
		if !Retryable(err) {
			return err
		}
		if attempt >= p.MaxAttempts || ctx.Err() != nil {
			return giveUp(err, attempt)
		}
		wait := min(bo.NextBackOff(), p.MaxBackoff)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			// Sleeping past the budget would only delay the same answer.
			return giveUp(err, attempt)
		}
		if o.onRetry != nil {
			o.onRetry(op, attempt, err)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return giveUp(err, attempt)
		}
	}
}

// giveUp notes how many attempts a transient error survived; the cause
// stays reachable for errors.Is/As, gcerrors.Code and Retryable.
func giveUp(err error, attempts int) error {
	if attempts <= 1 {
		return err
	}
	return fmt.Errorf("gave up after %d attempts: %w", attempts, err)
}

// ErrCredentials marks a failure to obtain credentials (none configured,
// an unreadable key file, a metadata service that does not answer). It is
// not retried: waiting does not make a missing credential appear.
var ErrCredentials = errors.New("storage: no usable credentials")

// Retryable reports whether a storage error is transient: server errors,
// throttling, timeouts, dropped or refused connections. Access denied
// (on any backend: a 403, EACCES, a read-only filesystem, no
// credentials), out of space or quota, a missing bucket or object, bad
// requests and a cancelled context are not.
func Retryable(err error) bool {
	switch kindOf(err) {
	case KindThrottled, KindTransient:
		return true
	}
	return false
}

// transient is the part of Retryable left once denials, quotas and
// missing things are ruled out.
func transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if c := httpStatus(err); c != 0 {
		return c >= 500 || c == http.StatusTooManyRequests || c == http.StatusRequestTimeout
	}
	var s3e *s3driver.Error
	if errors.As(err, &s3e) {
		switch s3e.Code {
		case "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
			"InternalError", "ServiceUnavailable":
			return true
		}
	}
	switch gcerrors.Code(err) {
	case gcerrors.NotFound, gcerrors.PermissionDenied, gcerrors.InvalidArgument,
		gcerrors.FailedPrecondition, gcerrors.AlreadyExists, gcerrors.Unimplemented, gcerrors.Canceled:
		return false
	case gcerrors.Internal, gcerrors.ResourceExhausted, gcerrors.DeadlineExceeded:
		return true
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	// The S3 driver wraps every failure to send a request or read its
	// answer (connection dropped, reset, EOF mid-response) in this.
	var se *s3driver.SendError
	if errors.As(err, &se) {
		return true
	}
	// Not any net.Error: syscall.Errno satisfies that interface too, and a
	// local ENOTDIR is no reason to retry.
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return dns.IsTimeout || dns.IsTemporary // not a name that does not exist
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	// What is left is local (a full disk, a permission on a directory) or
	// unknown: retrying cannot help the first, and an unknown error is
	// better reported than retried blindly.
	return false
}

// httpStatus is the HTTP status of a failed cloud request, or 0.
func httpStatus(err error) int {
	var re *s3driver.Error
	if errors.As(err, &re) {
		return re.Status
	}
	var ge *googleapi.Error
	if errors.As(err, &ge) {
		return ge.Code
	}
	var ze *azcore.ResponseError
	if errors.As(err, &ze) {
		return ze.StatusCode
	}
	return 0
}
