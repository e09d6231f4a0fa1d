package storage_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"gocloud.dev/gcerrors"

	"logbackup/storage"
	"logbackup/storage/storagetest"
	"logbackup/tests/s3test"
)

// retryLog records the retry observer's calls.
type retryLog struct {
	mu    sync.Mutex
	calls []string
}

func (l *retryLog) observe(op string, attempt int, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, fmt.Sprintf("%s#%d", op, attempt))
}

func (l *retryLog) take() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := strings.Join(l.calls, " ")
	l.calls = nil
	return s
}

func isMethod(m string) func(*http.Request) bool {
	return func(r *http.Request) bool { return r.Method == m }
}

// Hand-written fault: 500, 503, 429, a reset connection and stalled bodies on chosen requests: MinIO
// produces none of them on cue.
func TestS3RetriesTransientFailures(t *testing.T) {
	srv := s3test.Start(t, "bk")
	var log retryLog
	s := open(t, srv.URL("bk", "p"), fastRetry, storage.WithRetryObserver(log.observe))
	ctx := context.Background()
	data := bytes.Repeat([]byte("payload-"), 4000)

	// 500, then 503, then through. Every attempt must carry the same bytes.
	var mu sync.Mutex
	var digests [][32]byte
	srv.SetFault(s3test.Fault{Statuses: []int{500, 503}, Remaining: 2, Match: func(r *http.Request) bool {
		if r.Method != http.MethodPut {
			return false
		}
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		mu.Lock()
		digests = append(digests, sha256.Sum256(body))
		mu.Unlock()
		return true
	}})
	if err := s.WriteFile(ctx, "obj", data); err != nil {
		t.Fatalf("write through 500 and 503: %v", err)
	}
	if got := log.take(); got != "write#1 write#2" {
		t.Fatalf("retries observed %q, want write#1 write#2", got)
	}
	mu.Lock()
	// The third attempt is not faulted, so not recorded; it is read back.
	if len(digests) != 2 || digests[0] != sha256.Sum256(data) || digests[1] != digests[0] {
		t.Fatalf("%d failed attempts; bodies identical to the data: %v", len(digests), len(digests) == 2 && digests[0] == sha256.Sum256(data))
	}
	mu.Unlock()
	mustRead(t, s, "obj", data)

	for _, c := range []struct {
		name  string
		fault s3test.Fault
		op    func() error
		want  string
	}{
		{"read through 503s", s3test.Fault{Status: 503, Remaining: 2, Match: isMethod(http.MethodGet)},
			func() error { return readEqual(s, "obj", data) }, "read#1 read#2"},
		{"write through a reset connection", s3test.Fault{Drop: true, Remaining: 1, Match: isMethod(http.MethodPut)},
			func() error { return s.WriteFile(ctx, "obj2", data) }, "write#1"},
		{"read through a stalled body", s3test.Fault{SlowBody: time.Minute, Remaining: 1, Match: isMethod(http.MethodGet)},
			func() error { return readEqual(s, "obj", data) }, "read#1"},
		{"write through a stalled answer", s3test.Fault{SlowBody: time.Minute, Remaining: 1, Match: isMethod(http.MethodPut)},
			func() error { return s.WriteFile(ctx, "obj3", data) }, "write#1"},
		{"list through a throttle", s3test.Fault{Status: 429, Remaining: 1, Match: isMethod(http.MethodGet)},
			func() error { return s.List(ctx, "", func(storage.ObjectInfo) error { return nil }) }, "list#1"},
		// (Not a reset: net/http itself resends an idempotent request
		// whose reused connection was dropped.)
		{"exists through a 503", s3test.Fault{Status: 503, Remaining: 1, Match: isMethod(http.MethodHead)},
			func() error { _, err := s.Exists(ctx, "obj"); return err }, "exists#1"},
		{"delete through a 500", s3test.Fault{Status: 500, Remaining: 1, Match: isMethod(http.MethodDelete)},
			func() error { return s.Delete(ctx, "obj3") }, "delete#1"},
	} {
		srv.SetFault(c.fault)
		before := srv.Faults()
		if err := c.op(); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := log.take(); got != c.want {
			t.Fatalf("%s: retries observed %q, want %q", c.name, got, c.want)
		}
		if n := srv.Faults() - before; n == 0 {
			t.Fatalf("%s: the fault never fired", c.name)
		}
	}
	srv.ClearFault()
	mustRead(t, s, "obj2", data)
	if ok, err := s.Exists(ctx, "obj3"); ok || err != nil {
		t.Fatalf("obj3 after retried delete: %v %v", ok, err)
	}
}

// TestS3MultipartRetriedWhole: a part upload fails once; the whole object
// is sent again and arrives intact.
//
// Hand-written fault: a 503 on the second part of a multipart upload only: no server fails one part on cue.
func TestS3MultipartRetriedWhole(t *testing.T) {
	srv := s3test.Start(t, "bk")
	var log retryLog
	s := open(t, srv.URL("bk", "p"), bigRetry, storage.WithRetryObserver(log.observe))
	// Over the transfer manager's 16 MiB multipart threshold.
	big := bytes.Repeat([]byte("0123456789abcdef"), 17<<20/16+77)
	srv.SetFault(s3test.Fault{Status: 503, Remaining: 1, Match: func(r *http.Request) bool {
		return r.Method == http.MethodPut && r.URL.Query().Get("partNumber") == "2"
	}})
	if err := s.WriteFile(context.Background(), "big", big); err != nil {
		t.Fatalf("multipart through a failed part: %v", err)
	}
	if got := log.take(); srv.Faults() != 1 || got != "write#1" {
		t.Fatalf("faults %d, retries %q; want one failed part, retried once", srv.Faults(), got)
	}
	mustRead(t, s, "big", big)
}

// Hand-written fault: 503 on every request while the server is up (a stopped MinIO gives refused
// connections, covered in tests/realstorage): no server answers 503 on cue.
func TestS3PersistentFailureIsBounded(t *testing.T) {
	srv := s3test.Start(t, "bk")
	var log retryLog
	s := open(t, srv.URL("bk", "p"), fastRetry, storage.WithRetryObserver(log.observe))
	srv.SetFault(s3test.Fault{Status: 503, Remaining: -1})
	began := time.Now()
	err := s.WriteFile(context.Background(), "obj", []byte("x"))
	if err == nil || !storage.Retryable(err) || !strings.Contains(err.Error(), "gave up after 4 attempts") {
		t.Fatalf("persistent 503: %v", err)
	}
	if srv.Faults() != 4 || log.take() != "write#1 write#2 write#3" {
		t.Fatalf("%d attempts, want the policy's 4", srv.Faults())
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Fatalf("persistent failure took %s", took)
	}
}

// TestS3StalledServerIsBoundedByTotalTime: every answer stalls; many
// attempts are allowed, but the whole operation has a time budget.
//
// Hand-written fault: every answer stalls: no server stalls on cue.
func TestS3StalledServerIsBoundedByTotalTime(t *testing.T) {
	srv := s3test.Start(t, "bk")
	s := open(t, srv.URL("bk", "p"), storage.WithRetryPolicy(storage.RetryPolicy{
		MaxAttempts: 1000, AttemptTimeout: 400 * time.Millisecond, InitialBackoff: 10 * time.Millisecond,
		MaxBackoff: 50 * time.Millisecond, MaxElapsed: 1500 * time.Millisecond,
	}))
	srv.SetFault(s3test.Fault{SlowBody: time.Hour, Remaining: -1})
	began := time.Now()
	err := s.WriteFile(context.Background(), "obj", []byte("x"))
	took := time.Since(began)
	if err == nil || gcerrors.Code(err) != gcerrors.DeadlineExceeded {
		t.Fatalf("stalled server: code %v, %v", gcerrors.Code(err), err)
	}
	if took < time.Second || took > 4*time.Second {
		t.Fatalf("stalled server returned after %s, want about the 1.5 s budget", took)
	}
	if n := srv.Faults(); n < 2 || n > 6 {
		t.Fatalf("%d attempts in the budget", n)
	}
}

// Hand-written fault: 503 on every request, to see the caller's cancel end the retries: no server
// answers 503 on cue.
func TestS3CallerCancelStopsRetrying(t *testing.T) {
	srv := s3test.Start(t, "bk")
	s := open(t, srv.URL("bk", "p"), storage.WithRetryPolicy(storage.RetryPolicy{
		MaxAttempts: 1000, AttemptTimeout: time.Minute, InitialBackoff: time.Second, MaxElapsed: time.Hour,
	}))
	first := make(chan struct{})
	var once sync.Once
	srv.SetFault(s3test.Fault{Status: 503, Remaining: -1, Match: func(*http.Request) bool {
		once.Do(func() { close(first) })
		return true
	}})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.WriteFile(ctx, "obj", []byte("x")) }()
	select { // the first attempt has failed: cancel during the backoff
	case <-first:
	case <-time.After(10 * time.Second):
		t.Fatal("first attempt never arrived")
	}
	cancel()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("cancelled write succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled write did not return")
	}
}

func TestS3MissingBucket(t *testing.T) {
	srv := s3test.Start(t)
	var log retryLog
	s := open(t, srv.URL("missing", "p"), fastRetry, storage.WithRetryObserver(log.observe))
	err := storage.CheckWritable(context.Background(), s)
	if gcerrors.Code(err) != gcerrors.NotFound || storage.Retryable(err) || log.take() != "" {
		t.Fatalf("missing bucket: %v (code %v)", err, gcerrors.Code(err))
	}
	if !strings.Contains(err.Error(), "not writable") {
		t.Fatalf("CheckWritable error does not say what failed: %v", err)
	}
}

// TestS3WriteOptionsAreSent: storage class, ACL and SSE from the URL reach
// the server as the S3 headers.
//
// Hand-written fault: what each request carried (storage class, ACL, SSE headers): MinIO does not report it,
// and refuses SSE-KMS without a KMS.
func TestS3WriteOptionsAreSent(t *testing.T) {
	srv := s3test.Start(t, "bk")
	var mu sync.Mutex
	seen := map[string]string{}
	srv.SetFault(s3test.Fault{Remaining: -1, Match: func(r *http.Request) bool {
		if r.Method == http.MethodPut {
			mu.Lock()
			for _, h := range []string{"X-Amz-Storage-Class", "X-Amz-Acl", "X-Amz-Server-Side-Encryption"} {
				seen[h] = r.Header.Get(h)
			}
			mu.Unlock()
		}
		return false
	}})
	s := open(t, srv.URL("bk", "p")+"&storage-class=STANDARD_IA&acl=bucket-owner-full-control&sse=AES256")
	want := map[string]string{"X-Amz-Storage-Class": "STANDARD_IA", "X-Amz-Acl": "bucket-owner-full-control", "X-Amz-Server-Side-Encryption": "AES256"}
	src := &storagetest.Source{Data: []byte("streamed")}
	for _, write := range []func() error{
		func() error { return s.WriteFile(context.Background(), "obj", []byte("x")) },
		func() error { return s.WriteFrom(context.Background(), "streamed", int64(len(src.Data)), src.Open) },
	} {
		mu.Lock()
		clear(seen)
		mu.Unlock()
		if err := write(); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		got := fmt.Sprint(seen)
		mu.Unlock()
		if got != fmt.Sprint(want) {
			t.Fatalf("headers sent %v, want %v", got, want)
		}
	}
}

// TestS3MissingCredentialsDoNotHang: no credentials anywhere and an
// instance-metadata endpoint that accepts connections but never answers.
// The operation fails at once with ErrCredentials, within one attempt's
// deadline, and nothing unsigned reaches the server.
func TestS3MissingCredentialsDoNotHang(t *testing.T) {
	hole, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns sync.WaitGroup
	t.Cleanup(func() { hole.Close(); conns.Wait() })
	conns.Add(1)
	go func() {
		defer conns.Done()
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := hole.Accept()
			if err != nil {
				return
			}
			held = append(held, c) // read nothing, answer nothing
		}
	}()
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "", "AWS_PROFILE": "",
		"AWS_CONFIG_FILE": "/nonexistent/config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
		"AWS_WEB_IDENTITY_TOKEN_FILE": "", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "", "AWS_CONTAINER_CREDENTIALS_FULL_URI": "",
		"AWS_EC2_METADATA_DISABLED": "false", "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://" + hole.Addr().String(),
	} {
		t.Setenv(k, v)
	}
	srv := s3test.Start(t, "bk")
	u := fmt.Sprintf("s3://bk/p?endpoint=%s&region=us-east-1", srv.Endpoint())
	s := open(t, u, storage.WithRetryPolicy(storage.RetryPolicy{MaxAttempts: 5, AttemptTimeout: 1500 * time.Millisecond}))
	began := time.Now()
	err = s.WriteFile(context.Background(), "obj", []byte("x"))
	took := time.Since(began)
	if !errors.Is(err, storage.ErrCredentials) || storage.Retryable(err) {
		t.Fatalf("no credentials: %v", err)
	}
	if took > 5*time.Second {
		t.Fatalf("no credentials took %s", took)
	}
	if n := srv.Requests(); n != 0 {
		t.Fatalf("%d requests reached S3 without credentials", n)
	}
}

// TestS3CredentialsFromEnvironment: without credentials in the URL the
// AWS default chain (environment) is used.
func TestS3CredentialsFromEnvironment(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "envkey")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	if auth := writeSignedBy(t, ""); !strings.Contains(auth, "Credential=envkey/") {
		t.Fatalf("request not signed with the environment's key: %q", auth)
	}
}

// writeSignedBy writes one object through a loopback S3 whose URL adds
// params to its endpoint, and returns the write's Authorization header.
func writeSignedBy(t *testing.T, params string) string {
	t.Helper()
	var mu sync.Mutex
	var auth string
	srv := s3test.Start(t, "bk")
	srv.SetFault(s3test.Fault{Remaining: -1, Match: func(r *http.Request) bool {
		mu.Lock()
		defer mu.Unlock()
		auth = r.Header.Get("Authorization")
		return false
	}})
	s := open(t, fmt.Sprintf("s3://bk/p?endpoint=%s%s", srv.Endpoint(), params), fastRetry)
	if err := s.WriteFile(context.Background(), "obj", []byte("x")); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	return auth
}

// Hand-written fault: a persistent 500 with a session token in the URL: no server answers
// 500 on cue (tests/realstorage checks the real servers' refusals and outages the same way).
func TestSecretsNotInOperationErrors(t *testing.T) {
	srv := s3test.Start(t, "bk")
	loc, err := storage.ParseURL(srv.URL("bk", "p") + "&session-token=TOKEN-" + s3test.SecretKey)
	if err != nil {
		t.Fatal(err)
	}
	s, err := storage.Open(context.Background(), loc, fastRetry)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	srv.SetFault(s3test.Fault{Status: 500, Remaining: -1})
	err = s.WriteFile(context.Background(), "obj", []byte("x"))
	if err == nil {
		t.Fatal("write through persistent 500 succeeded")
	}
	for _, text := range []string{err.Error(), fmt.Sprintf("%v", err), fmt.Sprintf("%+v", err), s.String(), fmt.Sprint(s), loc.String(), fmt.Sprintf("%#v", loc)} {
		if strings.Contains(text, s3test.SecretKey) || strings.Contains(text, "TOKEN-") {
			t.Fatalf("secret in %q", text)
		}
	}
}

func mustRead(t *testing.T, s storage.Storage, name string, want []byte) {
	t.Helper()
	if err := readEqual(s, name, want); err != nil {
		t.Fatal(err)
	}
}

func readEqual(s storage.Storage, name string, want []byte) error {
	got, err := s.ReadFile(context.Background(), name)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%s: read %d bytes that differ from the %d written", name, len(got), len(want))
	}
	return nil
}

// TestS3StreamMultipart: a 22 MiB stream is a multipart upload of 5 MiB
// parts. A part refused once by the server makes the whole stream start
// again from a new reader; a source failing past the multipart threshold
// aborts the upload: no object, no multipart upload left open.
//
// Hand-written fault: a 503 to one part, and the part sizes seen per request: MinIO
// fails no part on cue and does not report them.
func TestS3StreamMultipart(t *testing.T) {
	srv := s3test.Start(t, "bk")
	var log retryLog
	s := open(t, srv.URL("bk", "p"), bigRetry, storage.WithRetryObserver(log.observe))
	ctx := context.Background()
	data := bytes.Repeat([]byte("0123456789abcdef"), 22<<20/16+5)

	srv.ResetLog()
	srv.SetFault(s3test.Fault{Status: 503, Remaining: 1, Match: func(r *http.Request) bool {
		return r.Method == http.MethodPut && r.URL.Query().Get("partNumber") == "2"
	}})
	src := &storagetest.Source{Data: data}
	if err := s.WriteFrom(ctx, "big", int64(len(data)), src.Open); err != nil {
		t.Fatalf("multipart stream through a failed part: %v", err)
	}
	if got := log.take(); srv.Faults() != 1 || got != "write#1" || src.Opens() != 2 || src.Closes() != 2 {
		t.Fatalf("faults %d, retries %q, readers %d/%d; want one failed part, one retry from a new reader", srv.Faults(), got, src.Opens(), src.Closes())
	}
	parts := 0
	for _, r := range srv.Log() {
		if r.Method == http.MethodPut && r.Query.Get("partNumber") != "" && !r.Faulted {
			parts++
		}
	}
	if parts < 5 {
		t.Fatalf("%d parts uploaded for 22 MiB; want 5 MiB parts", parts)
	}
	mustRead(t, s, "big", data)

	gone := errors.New("temp file unreadable")
	src = &storagetest.Source{Data: data, FailAt: 20 << 20, FailErr: gone, FailOpens: 1}
	if err := s.WriteFrom(ctx, "broken", int64(len(data)), src.Open); !errors.Is(err, gone) {
		t.Fatalf("source failing at 20 MiB: %v", err)
	}
	if ok, err := s.Exists(ctx, "broken"); ok || err != nil {
		t.Fatalf("a failed multipart stream left an object (%v)", err)
	}
	resp, err := http.Get(srv.Endpoint() + "/bk?uploads")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || bytes.Contains(body, []byte("<Upload>")) {
		t.Fatalf("multipart uploads after the failed stream (%d): %s", resp.StatusCode, body)
	}
}

// TestS3CredentialsFromProfile: profile= in the URL picks that profile of
// the shared credentials file, over the environment's keys, and its
// region signs the requests.
func TestS3CredentialsFromProfile(t *testing.T) {
	dir := t.TempDir()
	creds, conf := dir+"/credentials", dir+"/config"
	if err := os.WriteFile(creds, []byte("[default]\naws_access_key_id = defaultkey\naws_secret_access_key = ds\n\n"+
		"[prod]\naws_access_key_id = prodkey\naws_secret_access_key = ps\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte("[profile prod]\nregion = eu-west-3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", creds)
	t.Setenv("AWS_CONFIG_FILE", conf)
	t.Setenv("AWS_ACCESS_KEY_ID", "envkey")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	if auth := writeSignedBy(t, "&profile=prod"); !strings.Contains(auth, "Credential=prodkey/") || !strings.Contains(auth, "/eu-west-3/s3/aws4_request") {
		t.Fatalf("request not signed with the profile's key and region: %q", auth)
	}
}
