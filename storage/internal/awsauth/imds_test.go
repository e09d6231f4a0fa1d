package awsauth

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeIMDS is the instance metadata service of an instance with role
// "backup-role". tokenStatus, when set, is its answer to the token PUT
// (an IMDSv1-only service); then it refuses any token header.
type fakeIMDS struct {
	*httptest.Server
	tokenStatus int
	credStatus  int // when set, the answer to the credentials GET

	mu    sync.Mutex
	calls []string // "PUT /latest/api/token ttl=21600", "GET /path token=…"
}

func newFakeIMDS(t *testing.T, tokenStatus int) *fakeIMDS {
	f := &fakeIMDS{tokenStatus: tokenStatus}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeIMDS) serve(w http.ResponseWriter, r *http.Request) {
	tok := r.Header.Get("X-aws-ec2-metadata-token")
	f.mu.Lock()
	if r.Method == http.MethodPut {
		f.calls = append(f.calls, r.Method+" "+r.URL.Path+" ttl="+r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds"))
	} else {
		f.calls = append(f.calls, r.Method+" "+r.URL.Path+" token="+tok)
	}
	f.mu.Unlock()
	switch {
	case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token":
		if f.tokenStatus != 0 {
			w.WriteHeader(f.tokenStatus)
			return
		}
		if r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds") == "" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		fmt.Fprint(w, imdsToken)
		return
	case r.Method != http.MethodGet:
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	case f.tokenStatus == 0 && tok != imdsToken:
		w.WriteHeader(http.StatusUnauthorized)
		return
	case f.tokenStatus != 0 && tok != "":
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	switch r.URL.Path {
	case "/latest/meta-data/iam/security-credentials/":
		fmt.Fprint(w, "backup-role\n")
	case "/latest/meta-data/iam/security-credentials/backup-role":
		if f.credStatus != 0 {
			w.WriteHeader(f.credStatus)
			fmt.Fprint(w, "echo "+imdsToken+" "+roleSecret)
			return
		}
		fmt.Fprintf(w, `{"Code":"Success","LastUpdated":"2024-01-01T00:00:00Z","Type":"AWS-HMAC","AccessKeyId":"AKIDIMDS",`+
			`"SecretAccessKey":%q,"Token":%q,"Expiration":%q}`, roleSecret, roleToken, time.Now().Add(6*time.Hour).UTC().Format(time.RFC3339))
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}

func (f *fakeIMDS) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func imdsEnv(t *testing.T, endpoint string, kv ...string) map[string]string {
	env := testEnv(t)
	delete(env, "AWS_EC2_METADATA_DISABLED")
	return testEnvWith(env, append([]string{"AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint}, kv...)...)
}

func TestIMDSv2(t *testing.T) {
	f := newFakeIMDS(t, 0)
	p, _ := mustResolve(t, Config{Env: envFunc(imdsEnv(t, f.URL+"/"))})
	c := mustRetrieve(t, p)
	if c.AccessKeyID != "AKIDIMDS" || c.SecretAccessKey != roleSecret || c.SessionToken != roleToken ||
		c.Expires.IsZero() || !strings.Contains(c.Source, "backup-role") {
		t.Errorf("got %+v", c)
	}
	want := []string{
		"PUT /latest/api/token ttl=21600",
		"GET /latest/meta-data/iam/security-credentials/ token=" + imdsToken,
		"GET /latest/meta-data/iam/security-credentials/backup-role token=" + imdsToken,
	}
	if got := f.seen(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Cached for hours: no more calls.
	mustRetrieve(t, p)
	if n := len(f.seen()); n != 3 {
		t.Errorf("%d calls after a second Retrieve, want 3", n)
	}
}

func TestIMDSv1Fallback(t *testing.T) {
	for _, status := range []int{http.StatusForbidden, http.StatusNotFound, http.StatusMethodNotAllowed} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			f := newFakeIMDS(t, status)
			p, _ := mustResolve(t, Config{Env: envFunc(imdsEnv(t, f.URL))})
			if c := mustRetrieve(t, p); c.AccessKeyID != "AKIDIMDS" {
				t.Errorf("got %+v", c)
			}
			if got := f.seen(); len(got) != 3 || !strings.HasSuffix(got[1], "token=") || !strings.HasSuffix(got[2], "token=") {
				t.Errorf("calls %q, want the GETs without a token", got)
			}
		})
	}
	t.Run("not when IMDSv1 is disabled", func(t *testing.T) {
		f := newFakeIMDS(t, http.StatusForbidden)
		p, _ := mustResolve(t, Config{Env: envFunc(imdsEnv(t, f.URL, "AWS_EC2_METADATA_V1_DISABLED", "true"))})
		_, err := p.Retrieve(ctxT(t))
		noSecrets(t, err)
		if !strings.Contains(err.Error(), "PUT /latest/api/token: 403") || len(f.seen()) != 1 {
			t.Errorf("err = %v after calls %q", err, f.seen())
		}
	})
	t.Run("not on a 400", func(t *testing.T) {
		f := newFakeIMDS(t, http.StatusBadRequest)
		p, _ := mustResolve(t, Config{Env: envFunc(imdsEnv(t, f.URL))})
		_, err := p.Retrieve(ctxT(t))
		noSecrets(t, err)
		if len(f.seen()) != 1 {
			t.Errorf("calls %q after a 400 to the token PUT", f.seen())
		}
	})
}

func TestIMDSDisabled(t *testing.T) {
	f := newFakeIMDS(t, 0)
	p, _ := mustResolve(t, Config{Env: envFunc(imdsEnv(t, f.URL, "AWS_EC2_METADATA_DISABLED", "TRUE"))})
	_, err := p.Retrieve(ctxT(t))
	noSecrets(t, err)
	if !strings.Contains(err.Error(), "not tried (AWS_EC2_METADATA_DISABLED=true)") || len(f.seen()) != 0 {
		t.Errorf("err = %v after calls %q", err, f.seen())
	}
}

func TestIMDSErrors(t *testing.T) {
	t.Run("no role", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPut {
				fmt.Fprint(w, imdsToken)
				return
			}
			w.WriteHeader(http.StatusNotFound)
		}))
		defer srv.Close()
		p, _ := mustResolve(t, Config{Env: envFunc(imdsEnv(t, srv.URL))})
		_, err := p.Retrieve(ctxT(t))
		noSecrets(t, err)
		if !strings.Contains(err.Error(), "the instance has no IAM role") || !strings.Contains(err.Error(), "no credentials found") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("credentials GET fails", func(t *testing.T) {
		f := newFakeIMDS(t, 0)
		f.credStatus = http.StatusInternalServerError
		p, _ := mustResolve(t, Config{Env: envFunc(imdsEnv(t, f.URL))})
		_, err := p.Retrieve(ctxT(t))
		noSecrets(t, err)
		if !strings.Contains(err.Error(), "GET /latest/meta-data/iam/security-credentials/backup-role: 500") {
			t.Errorf("err = %v", err)
		}
	})
}

// blackHole accepts connections and never answers.
func blackHole(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + ln.Addr().String()
}

// Off EC2 the chain must fail fast. The test runs with a shorter bound
// than the real one, to stay quick; the real one keeps the whole
// attempt (token PUT, then the IMDSv1 GET it falls back to) under 5 s.
func TestIMDSBlackHoleFailsFast(t *testing.T) {
	if total := 2 * imdsTimeout; total > 4*time.Second {
		t.Fatalf("a black-hole endpoint would take %v with the default bound", total)
	}
	opts := defaultOptions()
	opts.imdsTimeout = 200 * time.Millisecond
	p, _, err := resolve(Config{Env: envFunc(imdsEnv(t, blackHole(t)))}, opts)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = p.Retrieve(context.Background())
	elapsed := time.Since(start)
	noSecrets(t, err)
	if !isDeadline(err) || elapsed > 2*opts.imdsTimeout+time.Second {
		t.Errorf("err = %v after %v", err, elapsed)
	}
	// The caller's own deadline is honoured too, and ends the attempt (no
	// IMDSv1 fallback after it).
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = p.Retrieve(ctx)
	if !isDeadline(err) || time.Since(start) > opts.imdsTimeout {
		t.Errorf("with a 50ms ctx: err = %v after %v", err, time.Since(start))
	}
}

// A token PUT that gets no answer in time (a container behind a hop
// limit of 1, whose PUT answers are dropped) falls back to IMDSv1, as
// the SDK does.
func TestIMDSv1FallbackAfterTokenTimeout(t *testing.T) {
	stop := make(chan struct{})
	v1 := newFakeIMDS(t, http.StatusForbidden)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			select {
			case <-stop:
			case <-r.Context().Done():
			}
			return
		}
		v1.serve(w, r)
	}))
	defer srv.Close()
	defer close(stop)
	opts := defaultOptions()
	opts.imdsTimeout = 100 * time.Millisecond
	p, _, err := resolve(Config{Env: envFunc(imdsEnv(t, srv.URL))}, opts)
	if err != nil {
		t.Fatal(err)
	}
	if c := mustRetrieve(t, p); c.AccessKeyID != "AKIDIMDS" {
		t.Errorf("got %+v", c)
	}
}
