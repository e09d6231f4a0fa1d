// Package s3test runs an S3-compatible server (gofakes3, in memory) on a
// loopback port for tests, behind a fault-injecting front: error statuses
// with proper S3 error bodies, dropped connections and stalled answers.
package s3test

import (
	"context"
	"fmt"
	"io"
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
	Region    = "us-east-1"
)

// Fault makes the server misbehave for matching requests.
type Fault struct {
	// Status answers with this HTTP status and an S3 error body:
	// 403 AccessDenied, 404 NoSuchBucket, 429/503 SlowDown, 500
	// InternalError, anything else InternalError; Code, if set, replaces
	// that error code (e.g. 403 QuotaExceeded as Ceph answers, 400
	// EntityTooLarge).
	Status int
	Code   string
	// Statuses, if set, answers the n-th faulted request with
	// Statuses[n % len(Statuses)] instead of Status (e.g. 500 then 503).
	Statuses []int
	// Drop closes the connection without an answer (a reset), after
	// reading the request.
	Drop bool
	// SlowBody serves the real answer but stalls this long before its
	// body (or, for answers without a body, before the headers), unless
	// the client gives up first.
	SlowBody time.Duration
	// Remaining is how many matching requests fail; -1 = all of them,
	// 0 = none (the fault is spent).
	Remaining int
	// Match selects requests; nil = every request. It runs under the
	// server's fault lock, so it must not call the Server.
	Match func(*http.Request) bool
}

// Server is a running fake S3.
type Server struct {
	backend  *s3mem.Backend
	endpoint string
	srv      *http.Server
	fake     http.Handler

	mu       sync.Mutex
	fault    *Fault
	nth      int // faulted requests so far under the current fault
	log      []Request
	requests atomic.Int64
	faults   atomic.Int64
}

// Request is what the server recorded of one request, S3 or STS.
type Request struct {
	Method string
	Path   string // escaped, as sent
	Query  url.Values
	Header http.Header
	// Form holds an STS request's parameters (Action, RoleArn, …).
	Form    url.Values
	Faulted bool
}

// Start serves on 127.0.0.1 with the given buckets created; it stops when
// the test ends.
func Start(t testing.TB, buckets ...string) *Server {
	t.Helper()
	s := &Server{backend: s3mem.New()}
	for _, b := range buckets {
		s.CreateBucket(t, b)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("s3test: listen: %v", err)
	}
	s.fake = gofakes3.New(s.backend).Server()
	s.endpoint = "http://" + lis.Addr().String()
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serve), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.srv.Serve(lis) // returns http.ErrServerClosed on Close
	}()
	t.Cleanup(func() {
		_ = s.srv.Close()
		<-done
	})
	return s
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	rec := Request{Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.Query(), Header: r.Header.Clone()}
	if isSTS(r) {
		s.serveSTS(w, r, rec)
		return
	}
	f, status := s.takeFault(r)
	rec.Faulted = f != nil
	s.record(rec)
	if f == nil {
		s.fake.ServeHTTP(w, r)
		return
	}
	s.faults.Add(1)
	switch {
	case f.Drop:
		drop(w, r)
	case status != 0:
		// Read the request first, as S3 does for a body it refuses: an
		// answer before it leaves net/http's server lingering on the
		// connection half a second after the test has ended.
		_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 64<<20))
		writeS3Error(w, r, status, f.Code)
	case f.SlowBody > 0:
		sw := &stallingWriter{ResponseWriter: w, delay: f.SlowBody, ctx: r.Context()}
		s.fake.ServeHTTP(sw, r)
		sw.finish()
	default:
		s.fake.ServeHTTP(w, r)
	}
}

// takeFault decides, under the lock, whether r is faulted and with which
// status.
func (s *Server) takeFault(r *http.Request) (*Fault, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.fault
	if f == nil || f.Remaining == 0 || (f.Match != nil && !f.Match(r)) {
		return nil, 0
	}
	if f.Remaining > 0 {
		f.Remaining--
	}
	status := f.Status
	if len(f.Statuses) > 0 {
		status = f.Statuses[s.nth%len(f.Statuses)]
	}
	s.nth++
	cp := *f
	return &cp, status
}

// Endpoint is "http://127.0.0.1:port".
func (s *Server) Endpoint() string { return s.endpoint }

// URL is a BR-style s3:// URL for bucket/prefix with the endpoint, region,
// path style and the static test credentials as parameters.
func (s *Server) URL(bucket, prefix string) string {
	q := url.Values{}
	q.Set("endpoint", s.endpoint)
	q.Set("region", Region)
	q.Set("force-path-style", "true")
	q.Set("access-key", AccessKey)
	q.Set("secret-access-key", SecretKey)
	u := url.URL{Scheme: "s3", Host: bucket, Path: "/" + prefix, RawQuery: q.Encode()}
	if prefix == "" {
		u.Path = ""
	}
	return u.String()
}

// CreateBucket adds a bucket.
func (s *Server) CreateBucket(t testing.TB, name string) {
	t.Helper()
	if err := s.backend.CreateBucket(name); err != nil {
		t.Fatalf("s3test: create bucket %s: %v", name, err)
	}
}

// SetFault installs a fault, replacing any previous one.
func (s *Server) SetFault(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault, s.nth = &f, 0
}

// ClearFault removes the fault.
func (s *Server) ClearFault() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault, s.nth = nil, 0
}

// Requests counts every request received; Faults counts those faulted.
func (s *Server) Requests() int64 { return s.requests.Load() }

// Log returns a copy of every request recorded so far, headers included.
func (s *Server) Log() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.log...)
}

// ResetLog forgets the recorded requests.
func (s *Server) ResetLog() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log = nil
}

func (s *Server) record(r Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log = append(s.log, r)
}

// Faults counts the requests a fault was applied to.
func (s *Server) Faults() int64 { return s.faults.Load() }

var s3ErrorCodes = map[int]string{
	http.StatusForbidden:          "AccessDenied",
	http.StatusNotFound:           "NoSuchBucket",
	http.StatusTooManyRequests:    "SlowDown",
	http.StatusServiceUnavailable: "SlowDown",
}

// writeS3Error answers as S3 does, so the SDK parses the code (gocloud
// maps AccessDenied to PermissionDenied). HEAD answers carry no body.
func writeS3Error(w http.ResponseWriter, r *http.Request, status int, code string) {
	if code == "" {
		code = s3ErrorCodes[status]
	}
	if code == "" {
		code = "InternalError"
	}
	body := fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>`+
		`<Error><Code>%s</Code><Message>injected by s3test</Message><Resource>%s</Resource><RequestId>s3test</RequestId></Error>`,
		code, r.URL.Path)
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("x-amz-request-id", "s3test")
	if status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "0")
	}
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte(body))
	}
}

// drop reads the request, then closes the connection with a reset and no
// answer: what a crashed proxy or a network fault looks like.
func drop(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	hj, ok := w.(http.Hijacker)
	if !ok { // not with net/http's HTTP/1 server; answer something still
		writeS3Error(w, r, http.StatusInternalServerError, "")
		return
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // RST instead of FIN
	}
	_ = conn.Close()
}

// stallingWriter delays the answer: the headers go out, then nothing
// until delay has passed or the client has gone away.
type stallingWriter struct {
	http.ResponseWriter
	delay   time.Duration
	ctx     context.Context
	status  int
	stalled bool
}

func (w *stallingWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

func (w *stallingWriter) Write(b []byte) (int, error) {
	if !w.stalled {
		w.stalled = true
		w.ResponseWriter.WriteHeader(w.statusOrOK())
		if f, ok := w.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		if !w.wait() {
			return 0, w.ctx.Err()
		}
	}
	return w.ResponseWriter.Write(b)
}

// finish stalls an answer that had no body, before its headers.
func (w *stallingWriter) finish() {
	if w.stalled {
		return
	}
	w.stalled = true
	if w.wait() {
		w.ResponseWriter.WriteHeader(w.statusOrOK())
	}
}

func (w *stallingWriter) statusOrOK() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}

func (w *stallingWriter) wait() bool {
	t := time.NewTimer(w.delay)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-w.ctx.Done():
		return false
	}
}
