package realstorage

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"logbackup/storage"
	"logbackup/storage/storagetest"
)

// retries is fast for failure cases and generous per attempt for the
// suite's 17 MiB uploads under -race on a loaded machine.
var retries = storage.WithRetryPolicy(storage.RetryPolicy{
	MaxAttempts: 4, AttemptTimeout: 60 * time.Second, InitialBackoff: 5 * time.Millisecond,
	MaxBackoff: 20 * time.Millisecond, MaxElapsed: 3 * time.Minute,
})

// outageRetries is quick to give up on a stopped server.
var outageRetries = storage.WithRetryPolicy(storage.RetryPolicy{
	MaxAttempts: 4, AttemptTimeout: 5 * time.Second, InitialBackoff: 5 * time.Millisecond,
	MaxBackoff: 20 * time.Millisecond, MaxElapsed: 30 * time.Second,
})

// observed counts the storage's retries.
type observed struct {
	mu    sync.Mutex
	calls []string
}

func (o *observed) observe(op string, attempt int, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls = append(o.calls, fmt.Sprintf("%s#%d", op, attempt))
}

func (o *observed) take() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := strings.Join(o.calls, " ")
	o.calls = nil
	return s
}

func openURL(t *testing.T, u string, opts ...storage.Option) storage.Storage {
	t.Helper()
	s, err := storage.OpenURL(context.Background(), u, append([]storage.Option{retries}, opts...)...)
	if err != nil {
		t.Fatalf("open %s: %v", storage.Redact(u), err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// conformance runs the whole suite, each case in a fresh bucket.
func conformance(t *testing.T, create func(t testing.TB, bucket string), url func(bucket, prefix string) string) {
	n := 0
	storagetest.Run(t, func(t *testing.T) storage.Storage {
		n++
		b := fmt.Sprintf("conformance-%02d", n)
		create(t, b)
		return openURL(t, url(b, "log/prefix"))
	})
}

// wantFailure checks one failed operation: its kind, whether the storage
// retried it, and that no credential is in its text.
func wantFailure(t *testing.T, what string, err error, kind storage.ErrorKind, retried bool, log *observed, secrets []string) bool {
	t.Helper()
	got := log.take()
	if err == nil {
		t.Errorf("%s: succeeded", what)
		return false
	}
	t.Logf("%s: %v", what, err)
	ok := true
	if k := storage.KindOf(err); k != kind {
		t.Errorf("%s: kind %s, want %s: %v", what, k, kind, err)
		ok = false
	}
	if storage.Retryable(err) != retried {
		t.Errorf("%s: retryable %v, want %v: %v", what, storage.Retryable(err), retried, err)
		ok = false
	}
	if (got != "") != retried {
		t.Errorf("%s: retries observed %q, want retried=%v", what, got, retried)
		ok = false
	}
	// One line naming the storage (the Azure SDK's own error spans a
	// dozen lines with the request and response).
	if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, "://") {
		t.Errorf("%s: not one line naming the storage: %q", what, msg)
		ok = false
	}
	NoSecret(t, what, err.Error(), secrets...)
	NoSecret(t, what, fmt.Sprintf("%+v %#v", err, err), secrets...)
	return ok
}

// op is one storage operation.
type op struct {
	name string
	run  func(ctx context.Context, s storage.Storage) error
}

// every storage operation, in a fixed order.
var every = []op{
	{"write", func(ctx context.Context, s storage.Storage) error { return s.WriteFile(ctx, "v1/x.log", []byte("x")) }},
	{"stream", func(ctx context.Context, s storage.Storage) error {
		src := &storagetest.Source{Data: []byte("streamed")}
		return s.WriteFrom(ctx, "v1/y.log", int64(len(src.Data)), src.Open)
	}},
	{"read", func(ctx context.Context, s storage.Storage) error { _, err := s.ReadFile(ctx, "v1/x.log"); return err }},
	{"range", func(ctx context.Context, s storage.Storage) error {
		_, err := s.ReadRange(ctx, "v1/x.log", 0, 1)
		return err
	}},
	{"exists", func(ctx context.Context, s storage.Storage) error { _, err := s.Exists(ctx, "v1/x.log"); return err }},
	{"list", func(ctx context.Context, s storage.Storage) error {
		return s.List(ctx, "", func(storage.ObjectInfo) error { return nil })
	}},
	{"delete", func(ctx context.Context, s storage.Storage) error { return s.Delete(ctx, "v1/x.log") }},
	{"check", func(ctx context.Context, s storage.Storage) error { return storage.CheckWritable(ctx, s) }},
}

// missingBucket: every operation on a bucket that does not exist fails
// as not-found, at once, and says the bucket is missing.
func missingBucket(t *testing.T, u string, secrets []string, skip ...string) {
	var log observed
	s := openURL(t, u, storage.WithRetryObserver(log.observe))
	for _, o := range every {
		err := o.run(context.Background(), s)
		if contains(skip, o.name) {
			t.Logf("%s on a missing bucket (not checked): %v", o.name, err)
			log.take()
			continue
		}
		if wantFailure(t, o.name+" on a missing bucket", err, storage.KindNotFound, false, &log, secrets) && !storage.IsBucketMissing(err) {
			t.Errorf("%s on a missing bucket: not recognised as a missing bucket: %v", o.name, err)
		}
	}
}

// outage: with the server stopped, every operation is retried, then
// fails as transient within the policy.
func outage(t *testing.T, srv *Server, u string, secrets []string) {
	var log observed
	s := openURL(t, u, outageRetries, storage.WithRetryObserver(log.observe))
	srv.Stop()
	for _, o := range every {
		err := o.run(context.Background(), s)
		if wantFailure(t, o.name+" with the server stopped", err, storage.KindTransient, true, &log, secrets) &&
			errors.Is(err, context.DeadlineExceeded) {
			// The refused connection is what the operator must see; a
			// client retrying on its own until our attempt's deadline
			// hides it and multiplies the time to report.
			t.Errorf("%s with the server stopped: reported as a timeout, not the refused connection: %v", o.name, err)
		}
	}
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

// denied: every operation fails as access denied at once.
func denied(t *testing.T, what, u string, secrets []string) {
	var log observed
	s := openURL(t, u, storage.WithRetryObserver(log.observe))
	for _, o := range every {
		err := o.run(context.Background(), s)
		if wantFailure(t, o.name+" with "+what, err, storage.KindAccessDenied, false, &log, secrets) && !errors.Is(err, storage.ErrAccessDenied) {
			t.Errorf("%s with %s: not ErrAccessDenied: %v", o.name, what, err)
		}
	}
}

func TestMinIO(t *testing.T) {
	m := StartMinIO(t)
	t.Run("Conformance", func(t *testing.T) { conformance(t, m.CreateBucket, m.URL) })
	t.Run("NoPutObject", func(t *testing.T) {
		// A user whose policy lacks s3:PutObject: reads work, every
		// write is refused at once.
		m.CreateBucket(t, "readonly")
		root := openURL(t, m.URL("readonly", "p"))
		if err := root.WriteFile(context.Background(), "v1/old.log", []byte("old")); err != nil {
			t.Fatal(err)
		}
		ak, sk, tok := m.NoPutCredentials(t, "readonly")
		secrets := append(m.Secrets(), sk, tok)
		var log observed
		s := openURL(t, m.URLWith("readonly", "p", ak, sk, tok), storage.WithRetryObserver(log.observe))
		ctx := context.Background()
		if b, err := s.ReadFile(ctx, "v1/old.log"); err != nil || string(b) != "old" {
			t.Fatalf("read with the read-only user: %q, %v", b, err)
		}
		wantFailure(t, "write without PutObject", s.WriteFile(ctx, "v1/new.log", []byte("x")), storage.KindAccessDenied, false, &log, secrets)
		src := &storagetest.Source{Data: make([]byte, 17<<20)} // multipart
		wantFailure(t, "multipart stream without PutObject", s.WriteFrom(ctx, "v1/big.log", int64(len(src.Data)), src.Open),
			storage.KindAccessDenied, false, &log, secrets)
		wantFailure(t, "check writable without PutObject", storage.CheckWritable(ctx, s), storage.KindAccessDenied, false, &log, secrets)
		if ok, err := s.Exists(ctx, "v1/new.log"); ok || err != nil {
			t.Fatalf("refused write left an object: %v %v", ok, err)
		}
	})
	t.Run("WrongSecret", func(t *testing.T) {
		m.CreateBucket(t, "wrongsecret")
		denied(t, "a wrong secret key", m.URLWith("wrongsecret", "p", m.RootUser, "not-"+m.RootPassword, ""), m.Secrets())
	})
	t.Run("UnknownAccessKey", func(t *testing.T) {
		m.CreateBucket(t, "unknownkey")
		denied(t, "an unknown access key", m.URLWith("unknownkey", "p", "nosuchuser", m.RootPassword, ""), m.Secrets())
	})
	t.Run("MissingBucket", func(t *testing.T) {
		// S3 answers HEAD with a bare 404 (no body, so no NoSuchBucket):
		// Exists says false; a delete of nothing succeeds.
		missingBucket(t, m.URL("nosuchbucket", "p"), m.Secrets(), "exists", "delete")
	})
	t.Run("Outage", func(t *testing.T) {
		m.CreateBucket(t, "outage")
		outage(t, m.Server, m.URL("outage", "p"), m.Secrets())
	})
}

// TestMinIOThrottles: MinIO allowed one request at a time and holding it
// answers the storage's requests 429 TooManyRequests; each is retried as
// throttled until the slot frees, and the operation then succeeds.
func TestMinIOThrottles(t *testing.T) {
	m := StartMinIO(t, "MINIO_API_REQUESTS_MAX=1")
	m.CreateBucket(t, "throttled")
	ctx := context.Background()
	for _, o := range []op{every[0], every[2], every[5]} { // write, read, list
		release := m.HoldRequest(t, "throttled")
		var mu sync.Mutex
		var kinds []storage.ErrorKind
		s := openURL(t, m.URL("throttled", "p"), storage.WithRetryPolicy(storage.RetryPolicy{
			MaxAttempts: 8, AttemptTimeout: 10 * time.Second, InitialBackoff: 100 * time.Millisecond,
			MaxBackoff: 500 * time.Millisecond, MaxElapsed: time.Minute,
		}), storage.WithRetryObserver(func(_ string, attempt int, err error) {
			mu.Lock()
			kinds = append(kinds, storage.KindOf(err))
			mu.Unlock()
			t.Logf("%s attempt %d: %v", o.name, attempt, err)
			release() // the throttle lifts once seen
		}))
		if err := o.run(ctx, s); err != nil {
			t.Fatalf("%s through a throttle: %v", o.name, err)
		}
		mu.Lock()
		if len(kinds) == 0 || kinds[0] != storage.KindThrottled {
			t.Fatalf("%s: retries of kinds %v, want throttled first", o.name, kinds)
		}
		mu.Unlock()
	}
}

func TestAzurite(t *testing.T) {
	a := StartAzurite(t)
	t.Run("Conformance", func(t *testing.T) { conformance(t, a.CreateContainer, a.URL) })
	t.Run("SAS", func(t *testing.T) {
		a.CreateContainer(t, "sas")
		sas := a.SAS(t, time.Now().Add(time.Hour))
		s := openURL(t, a.URLWith("sas", "p", "sas-token", sas))
		ctx := context.Background()
		if err := s.WriteFile(ctx, "v1/a.log", []byte("through a SAS")); err != nil {
			t.Fatalf("write with a valid SAS: %v", err)
		}
		if b, err := s.ReadFile(ctx, "v1/a.log"); err != nil || string(b) != "through a SAS" {
			t.Fatalf("read with a valid SAS: %q %v", b, err)
		}
	})
	t.Run("ExpiredSAS", func(t *testing.T) {
		a.CreateContainer(t, "expired")
		sas := a.SAS(t, time.Now().Add(-time.Hour))
		_, sig, _ := strings.Cut(sas, "sig=")
		sig, _, _ = strings.Cut(sig, "&")
		plain, _ := url.QueryUnescape(sig)
		denied(t, "an expired SAS", a.URLWith("expired", "p", "sas-token", sas), append(a.Secrets(), sig, plain))
	})
	t.Run("WrongKey", func(t *testing.T) {
		a.CreateContainer(t, "wrongkey")
		wrong := strings.Repeat("A", 86) + "=="
		denied(t, "a wrong account key", a.URLWith("wrongkey", "p", "account-key", wrong), append(a.Secrets(), wrong))
	})
	t.Run("MissingContainer", func(t *testing.T) {
		// A delete of nothing succeeds, whether or not the container exists.
		missingBucket(t, a.URL("nosuchcontainer", "p"), a.Secrets(), "delete")
	})
	t.Run("Outage", func(t *testing.T) {
		a.CreateContainer(t, "outage")
		outage(t, a.Server, a.URL("outage", "p"), a.Secrets())
	})
}

func TestFakeGCS(t *testing.T) {
	g := StartFakeGCS(t)
	t.Run("Conformance", func(t *testing.T) { conformance(t, g.CreateBucket, g.URL) })
	t.Run("EndpointSpellings", func(t *testing.T) {
		// The JSON API base as BR users write it, with or without the
		// slash, and the address alone: lists and deletes (resolved
		// against it) must work with each.
		g.CreateBucket(t, "spellings")
		ctx := context.Background()
		for i, ep := range []string{g.Endpoint(), g.Endpoint() + "/", g.Endpoint() + "/storage/v1", g.Endpoint() + "/storage/v1/"} {
			s := openURL(t, g.URLWithEndpoint("spellings", fmt.Sprint(i), ep))
			if err := s.WriteFile(ctx, "a.log", []byte("a")); err != nil {
				t.Fatalf("endpoint %s: write: %v", ep, err)
			}
			var names []string
			if err := s.List(ctx, "", func(o storage.ObjectInfo) error { names = append(names, o.Name); return nil }); err != nil || len(names) != 1 {
				t.Fatalf("endpoint %s: list %v, %v", ep, names, err)
			}
			if err := s.Delete(ctx, "a.log"); err != nil {
				t.Fatalf("endpoint %s: delete: %v", ep, err)
			}
			if ok, err := s.Exists(ctx, "a.log"); ok || err != nil {
				t.Fatalf("endpoint %s: exists after delete: %v %v", ep, ok, err)
			}
		}
	})
	t.Run("MissingBucket", func(t *testing.T) {
		// The GCS client answers any 404 to a read as "object doesn't
		// exist", Exists as false, and a delete of nothing succeeds:
		// only writes and lists can tell a missing bucket.
		missingBucket(t, g.URL("nosuchbucket", "p"), nil, "read", "range", "exists", "delete")
	})
	t.Run("Outage", func(t *testing.T) {
		g.CreateBucket(t, "outage")
		outage(t, g.Server, g.URL("outage", "p"), nil)
	})
}
