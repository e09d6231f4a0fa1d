package s3test

import (
	"context"
	"encoding/xml"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// get sends a plain, unsigned request: gofakes3 does not check
// signatures, and the fault front must not care either.
func get(t *testing.T, method, u string) (int, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func TestFaultSequenceAndCounters(t *testing.T) {
	s := Start(t, "bk")
	obj := s.Endpoint() + "/bk/obj"
	if code, _, err := get(t, http.MethodPut, obj); err != nil || code != 200 {
		t.Fatalf("put: %d %v", code, err)
	}
	s.SetFault(Fault{Statuses: []int{500, 503}, Remaining: 3, Match: func(r *http.Request) bool { return r.Method == http.MethodGet }})
	var codes []int
	for range 4 {
		code, body, err := get(t, http.MethodGet, obj)
		if err != nil {
			t.Fatal(err)
		}
		codes = append(codes, code)
		if code != 200 {
			var e struct{ Code string }
			if err := xml.Unmarshal([]byte(body), &e); err != nil || e.Code == "" {
				t.Fatalf("error body %q is not an S3 error: %v", body, err)
			}
		}
	}
	if want := []int{500, 503, 500, 200}; !slices.Equal(codes, want) {
		t.Fatalf("codes %v, want %v", codes, want)
	}
	// A request the fault does not match is served normally.
	if code, _, _ := get(t, http.MethodHead, obj); code != 200 {
		t.Fatalf("unmatched HEAD: %d", code)
	}
	if s.Requests() != 6 || s.Faults() != 3 {
		t.Fatalf("requests %d, faults %d; want 6, 3", s.Requests(), s.Faults())
	}
}

func TestAccessDeniedBody(t *testing.T) {
	s := Start(t, "bk")
	s.SetFault(Fault{Status: 403, Remaining: -1})
	for range 3 {
		code, body, err := get(t, http.MethodGet, s.Endpoint()+"/bk/obj")
		if err != nil || code != 403 || !strings.Contains(body, "<Code>AccessDenied</Code>") {
			t.Fatalf("403: %d %q %v", code, body, err)
		}
	}
	s.ClearFault()
	if code, _, _ := get(t, http.MethodGet, s.Endpoint()+"/bk/missing"); code != 404 {
		t.Fatalf("after ClearFault: %d", code)
	}
}

func TestDropAndStall(t *testing.T) {
	s := Start(t, "bk")
	s.SetFault(Fault{Drop: true, Remaining: 1})
	if _, _, err := get(t, http.MethodPut, s.Endpoint()+"/bk/obj"); err == nil {
		t.Fatal("dropped request got an answer")
	}
	s.SetFault(Fault{SlowBody: time.Hour, Remaining: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, s.Endpoint()+"/bk/obj", strings.NewReader("x"))
	began := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatal("stalled answer arrived")
	}
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(began) > 5*time.Second {
		t.Fatalf("stall: %v after %s", err, time.Since(began))
	}
	if code, _, err := get(t, http.MethodPut, s.Endpoint()+"/bk/obj"); err != nil || code != 200 {
		t.Fatalf("after the fault is spent: %d %v", code, err)
	}
}

func TestURL(t *testing.T) {
	s := Start(t)
	u := s.URL("bk", "a/b")
	for _, want := range []string{"s3://bk/a/b?", "access-key=" + AccessKey, "secret-access-key=" + SecretKey, "force-path-style=true", "region=" + Region} {
		if !strings.Contains(u, want) {
			t.Errorf("URL %q lacks %q", u, want)
		}
	}
	if !strings.HasPrefix(s.Endpoint(), "http://127.0.0.1:") {
		t.Errorf("endpoint %q", s.Endpoint())
	}
}
