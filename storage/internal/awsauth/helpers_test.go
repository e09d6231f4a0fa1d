package awsauth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Secrets the tests hand out: none may appear in any error.
const (
	srcKeyID    = "AKIDSOURCE"
	srcSecret   = "source/SECRET/key+0123456789abcdef"
	srcToken    = "source-SESSION-token-0123456789"
	extID       = "external-ID-secret-4242"
	webToken    = "eyJhbGciOi.web-identity-TOKEN.sig"
	imdsToken   = "IMDS-session-TOKEN-abcdef"
	ecsToken    = "ECS-authorization-TOKEN-xyz"
	roleSecret  = "ROLE/secret/key/9876543210"
	roleToken   = "ROLE-session-token-9876543210"
	testRoleARN = "arn:aws:iam::123456789012:role/backup"
)

var allSecrets = []string{srcSecret, srcToken, extID, webToken, imdsToken, ecsToken, roleSecret, roleToken}

// noSecrets fails the test if err's text holds a secret or is not one line.
func noSecrets(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		t.Fatal("expected an error")
	}
	msg := err.Error()
	for _, s := range allSecrets {
		if strings.Contains(msg, s) {
			t.Errorf("error holds secret %q: %s", s, msg)
		}
	}
	if strings.ContainsAny(msg, "\r\n") {
		t.Errorf("error is not one line: %q", msg)
	}
	if !strings.HasPrefix(msg, "aws credentials: ") {
		t.Errorf("error does not say it is about aws credentials: %s", msg)
	}
}

// testEnv is an environment with its own empty HOME, the instance
// metadata service off (no test may wait on 169.254.169.254), and kv.
func testEnv(t *testing.T, kv ...string) map[string]string {
	t.Helper()
	env := map[string]string{"HOME": t.TempDir(), "AWS_EC2_METADATA_DISABLED": "true"}
	for i := 0; i+1 < len(kv); i += 2 {
		env[kv[i]] = kv[i+1]
	}
	return env
}

func envFunc(env map[string]string) func(string) string {
	return func(k string) string { return env[k] }
}

// writeAWSFile writes HOME/.aws/name.
func writeAWSFile(t *testing.T, env map[string]string, name, content string) string {
	t.Helper()
	dir := filepath.Join(env["HOME"], ".aws")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustResolve(t *testing.T, cfg Config) (Provider, string) {
	t.Helper()
	p, region, err := Resolve(cfg)
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	return p, region
}

func mustRetrieve(t *testing.T, p Provider) Credentials {
	t.Helper()
	c, err := p.Retrieve(ctxT(t))
	if err != nil {
		t.Fatalf("Retrieve: %v", err)
	}
	return c
}

// stsRequest is what the fake STS saw.
type stsRequest struct {
	form        url.Values
	auth        string
	token       string // X-Amz-Security-Token
	signatureOK bool   // the signature verifies with the keys the test expects
}

// fakeSTS answers AssumeRole and AssumeRoleWithWebIdentity. status and
// answer (XML) may be set to make it fail.
type fakeSTS struct {
	*httptest.Server
	signer Credentials // the keys requests should be signed with
	region string

	mu       sync.Mutex
	requests []stsRequest
	status   int
	answer   string
	expires  time.Time
}

func newFakeSTS(t *testing.T, signer Credentials, region string) *fakeSTS {
	s := &fakeSTS{signer: signer, region: region, expires: time.Now().Add(time.Hour)}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *fakeSTS) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	form, _ := url.ParseQuery(string(body))
	got := stsRequest{form: form, auth: r.Header.Get("Authorization"), token: r.Header.Get("X-Amz-Security-Token")}
	got.signatureOK = s.verify(r, body)
	s.mu.Lock()
	s.requests = append(s.requests, got)
	status, answer, expires := s.status, s.answer, s.expires
	s.mu.Unlock()
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/x-www-form-urlencoded; charset=utf-8" ||
		form.Get("Version") != "2011-06-15" {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	if status != 0 {
		w.WriteHeader(status)
		io.WriteString(w, answer)
		return
	}
	action := form.Get("Action")
	fmt.Fprintf(w, `<%sResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><%sResult>
  <Credentials>
    <AccessKeyId>AKIDROLE%d</AccessKeyId>
    <SecretAccessKey>%s</SecretAccessKey>
    <SessionToken>%s</SessionToken>
    <Expiration>%s</Expiration>
  </Credentials>
</%sResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></%sResponse>`,
		action, action, s.count(), roleSecret, roleToken, expires.UTC().Format(time.RFC3339), action, action)
}

// verify re-signs what arrived with the expected keys at the time the
// request names: the signature matches only if it covered this body,
// this host and path, with these keys.
func (s *fakeSTS) verify(r *http.Request, body []byte) bool {
	when, err := time.Parse(amzDateFormat, r.Header.Get("X-Amz-Date"))
	if err != nil {
		return false
	}
	again, _ := http.NewRequest(r.Method, "http://"+r.Host+r.URL.RequestURI(), nil)
	again.Header.Set("Content-Type", r.Header.Get("Content-Type"))
	Sign(again, s.signer, "sts", s.region, PayloadHash(body), when)
	return again.Header.Get("Authorization") == r.Header.Get("Authorization") &&
		r.Header.Get("X-Amz-Content-Sha256") == PayloadHash(body)
}

func (s *fakeSTS) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.requests)
}

func (s *fakeSTS) last(t *testing.T) stsRequest {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.requests) == 0 {
		t.Fatal("STS got no request")
	}
	return s.requests[len(s.requests)-1]
}

func (s *fakeSTS) fail(status int, answer string) {
	s.mu.Lock()
	s.status, s.answer = status, answer
	s.mu.Unlock()
}

// isDeadline says whether err is a context deadline, as callers test it.
func isDeadline(err error) bool { return errors.Is(err, context.DeadlineExceeded) }

func writeFileAt(path, content string) error { return os.WriteFile(path, []byte(content), 0o600) }

func errorsAs(err error, target any) bool { return errors.As(err, target) }
