// Package s3test runs an S3-compatible server (gofakes3, in memory) on a
// loopback port for tests, with a fault-injecting front: status codes,
// access denied, stalled bodies.
package s3test

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// Test credentials the fixture URLs carry. gofakes3 does not check them;
// they exist so tests can prove credentials never leak.
const (
	AccessKey = "AKIATESTLOGBACKUP"
	SecretKey = "s3cr3t-Do-Not-Print-Me"
)

// Fault makes the server misbehave for matching requests.
type Fault struct {
	// Status answers with this HTTP status and an S3 error body
	// (403 → AccessDenied, 503 → SlowDown, 500 → InternalError, …).
	Status int
	// SlowBody sends a normal answer's headers, then stalls this long
	// before the body (a body that times out on the client).
	SlowBody time.Duration
	// Remaining is how many matching requests fail; -1 = all of them.
	Remaining int
	// Match selects requests; nil = every request.
	Match func(*http.Request) bool
}

// Server is a running fake S3.
type Server struct {
	backend  *s3mem.Backend
	endpoint string
	srv      *http.Server

	mu       sync.Mutex
	fault    *Fault
	requests atomic.Int64
	faults   atomic.Int64
}

// Start serves on 127.0.0.1 with the given buckets created; it stops when
// the test ends.
func Start(t testing.TB, buckets ...string) *Server {
	t.Helper()
	s := &Server{backend: s3mem.New()}
	for _, b := range buckets {
		if err := s.backend.CreateBucket(b); err != nil {
			t.Fatalf("create bucket %s: %v", b, err)
		}
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	fake := gofakes3.New(s.backend).Server()
	s.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		if f := s.takeFault(r); f != nil {
			s.faults.Add(1)
			if f.Status != 0 {
				writeS3Error(w, f.Status)
				return
			}
			if f.SlowBody > 0 {
				fake.ServeHTTP(&stallingWriter{ResponseWriter: w, delay: f.SlowBody, ctx: r}, r)
				return
			}
		}
		fake.ServeHTTP(w, r)
	})}
	s.endpoint = "http://" + lis.Addr().String()
	go s.srv.Serve(lis)
	t.Cleanup(func() { s.srv.Close() })
	return s
}

func (s *Server) takeFault(r *http.Request) *Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.fault
	if f == nil || (f.Match != nil && !f.Match(r)) {
		return nil
	}
	if f.Remaining == 0 {
		return nil
	}
	if f.Remaining > 0 {
		f.Remaining--
	}
	cp := *f
	return &cp
}

// Endpoint is "http://127.0.0.1:port".
func (s *Server) Endpoint() string { return s.endpoint }

// URL is a BR-style s3:// URL for bucket/prefix with the endpoint, region,
// path style and the test credentials.
func (s *Server) URL(bucket, prefix string) string {
	q := url.Values{}
	q.Set("endpoint", s.endpoint)
	q.Set("region", "us-east-1")
	q.Set("force-path-style", "true")
	q.Set("access-key", AccessKey)
	q.Set("secret-access-key", SecretKey)
	return fmt.Sprintf("s3://%s/%s?%s", bucket, prefix, q.Encode())
}

// CreateBucket adds a bucket.
func (s *Server) CreateBucket(t testing.TB, name string) {
	if err := s.backend.CreateBucket(name); err != nil {
		t.Fatalf("create bucket %s: %v", name, err)
	}
}

// SetFault installs a fault (replacing any previous one).
func (s *Server) SetFault(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = &f
}

// ClearFault removes the fault.
func (s *Server) ClearFault() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = nil
}

// Requests counts every request served; Faults counts the faulted ones.
func (s *Server) Requests() int64 { return s.requests.Load() }
func (s *Server) Faults() int64   { return s.faults.Load() }

func writeS3Error(w http.ResponseWriter, status int) {
	code := map[int]string{403: "AccessDenied", 404: "NoSuchBucket", 500: "InternalError", 503: "SlowDown", 429: "SlowDown"}[status]
	if code == "" {
		code = "InternalError"
	}
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>injected by s3test</Message><RequestId>s3test</RequestId></Error>`, code)
}

// stallingWriter sends headers, then waits before the first body byte.
type stallingWriter struct {
	http.ResponseWriter
	delay   time.Duration
	ctx     *http.Request
	stalled bool
}

func (w *stallingWriter) Write(b []byte) (int, error) {
	if !w.stalled {
		w.stalled = true
		if f, ok := w.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		select {
		case <-time.After(w.delay):
		case <-w.ctx.Context().Done():
			return 0, w.ctx.Context().Err()
		}
	}
	return w.ResponseWriter.Write(b)
}
