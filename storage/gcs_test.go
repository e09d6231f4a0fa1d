package storage_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"logbackup/storage"
	"logbackup/storage/storagetest"
)

// gcsUpload is what the loopback GCS endpoint saw of one upload.
type gcsUpload struct {
	query    url.Values
	metadata map[string]any
}

// fakeGCS is just enough of the GCS JSON API and Google's token endpoint
// for writes: an OAuth token for the service account, multipart uploads
// recorded with their query and metadata, or every upload refused with
// status deny.
type fakeGCS struct {
	srv     *httptest.Server
	mu      sync.Mutex
	uploads []gcsUpload
	deny    int
	// denyToken refuses the service account's token request.
	denyToken bool
}

func startFakeGCS(t *testing.T) *fakeGCS {
	f := &fakeGCS{}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(func() {
		f.srv.Close()
		// Part of Google's client stack keeps an idle keep-alive
		// connection in http.DefaultTransport's shared pool (not ours,
		// which Close releases); drop it so goleak sees no reader left.
		http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	})
	return f
}

func (f *fakeGCS) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	if r.URL.Path == "/token" {
		f.mu.Lock()
		deny := f.denyToken
		f.mu.Unlock()
		if deny {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `{"error":"invalid_grant","error_description":"account disabled"}`)
			return
		}
		_, _ = io.WriteString(w, `{"access_token":"gcs-test-token","token_type":"Bearer","expires_in":3600}`)
		return
	}
	f.mu.Lock()
	deny := f.deny
	f.mu.Unlock()
	if deny != 0 {
		w.WriteHeader(deny)
		_, _ = fmt.Fprintf(w, `{"error":{"code":%d,"message":"injected","errors":[{"domain":"global","reason":"forbidden","message":"injected"}]}}`, deny)
		return
	}
	if r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, "/upload/storage/v1/b/") || r.URL.Query().Get("uploadType") != "multipart" {
		w.WriteHeader(http.StatusNotImplemented)
		_, _ = io.WriteString(w, `{"error":{"code":501,"message":"not in the fake"}}`)
		return
	}
	if r.Header.Get("Authorization") != "Bearer gcs-test-token" {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, `{"error":{"code":401,"message":"no token"}}`)
		return
	}
	_, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	mr := multipart.NewReader(r.Body, params["boundary"])
	part, err := mr.NextPart()
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	var md map[string]any
	if err := json.NewDecoder(part).Decode(&md); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	data, err := mr.NextPart()
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	body, _ := io.ReadAll(data)
	f.mu.Lock()
	f.uploads = append(f.uploads, gcsUpload{query: r.URL.Query(), metadata: md})
	f.mu.Unlock()
	bucket := strings.Split(strings.TrimPrefix(r.URL.Path, "/upload/storage/v1/b/"), "/")[0]
	_ = json.NewEncoder(w).Encode(map[string]any{"kind": "storage#object", "bucket": bucket, "name": md["name"],
		"size": fmt.Sprint(len(body)), "generation": "1", "metageneration": "1", "contentType": md["contentType"],
		"storageClass": md["storageClass"]})
}

// url is a gcs:// URL for the fake with a service-account key whose
// token endpoint is the fake.
func (f *fakeGCS) url(t *testing.T, bucket, params string) string {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	sa, _ := json.Marshal(map[string]string{"type": "service_account", "project_id": "p", "private_key_id": "k1",
		"private_key": string(keyPEM), "client_email": "br@p.iam.gserviceaccount.com", "client_id": "1",
		"token_uri": f.srv.URL + "/token"})
	path := filepath.Join(t.TempDir(), "sa.json")
	if err := os.WriteFile(path, sa, 0o600); err != nil {
		t.Fatal(err)
	}
	return "gcs://" + bucket + "/p?endpoint=" + url.QueryEscape(f.srv.URL+"/storage/v1/") + "&credentials-file=" + url.QueryEscape(path) + params
}

// TestGCSSecuritySettingsOnEveryWrite: storage-class and predefined-acl
// reach GCS on every upload, read back from what the endpoint received.
//
// Hand-written fault: what each upload carried (storageClass, predefinedAcl): fake-gcs-server does not report it.
func TestGCSSecuritySettingsOnEveryWrite(t *testing.T) {
	f := startFakeGCS(t)
	s := open(t, f.url(t, "bk", "&storage-class=NEARLINE&predefined-acl=bucketOwnerFullControl"), fastRetry)
	for _, name := range []string{"v1/a.log", "v1/backupmeta/b.meta", "v1/global_checkpoint/1.ts"} {
		mustWriteT(t, s, name, []byte("data of "+name))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.uploads) != 3 {
		t.Fatalf("%d uploads, want 3", len(f.uploads))
	}
	for _, u := range f.uploads {
		if u.metadata["storageClass"] != "NEARLINE" || u.query.Get("predefinedAcl") != "bucketOwnerFullControl" {
			t.Errorf("upload of %v: storageClass %v, predefinedAcl %q", u.metadata["name"], u.metadata["storageClass"], u.query.Get("predefinedAcl"))
		}
	}
}

// TestGCSAccessDenied: a GCS 403 is the same kind as every other
// backend's refusal, and is not retried.
//
// Hand-written fault: a 403 to an upload: fake-gcs-server checks no credentials and never refuses.
func TestGCSAccessDenied(t *testing.T) {
	f := startFakeGCS(t)
	var log retryLog
	s := open(t, f.url(t, "bk", ""), fastRetry, storage.WithRetryObserver(log.observe))
	f.mu.Lock()
	f.deny = http.StatusForbidden
	f.mu.Unlock()
	err := s.WriteFile(context.Background(), "v1/x", []byte("x"))
	if !errors.Is(err, storage.ErrAccessDenied) || storage.KindOf(err) != storage.KindAccessDenied || storage.Retryable(err) {
		t.Fatalf("gcs 403: kind %s: %v", storage.KindOf(err), err)
	}
	if got := log.take(); got != "" {
		t.Fatalf("retried: %s", got)
	}
}

// TestGCSTokenRefused: a service account whose token is refused is a
// credentials failure (access denied), reported at once.
//
// Hand-written fault: Google's token endpoint refusing the service account: no local server is that endpoint.
func TestGCSTokenRefused(t *testing.T) {
	f := startFakeGCS(t)
	f.denyToken = true
	var log retryLog
	s := open(t, f.url(t, "bk", ""), fastRetry, storage.WithRetryObserver(log.observe))
	err := s.WriteFile(context.Background(), "v1/x", []byte("x"))
	if !errors.Is(err, storage.ErrCredentials) || storage.KindOf(err) != storage.KindAccessDenied || storage.Retryable(err) {
		t.Fatalf("refused token: kind %s: %v", storage.KindOf(err), err)
	}
	if got := log.take(); got != "" {
		t.Fatalf("retried: %s", got)
	}
}

// TestGCSStream: a streamed object is uploaded with the write settings; a
// source failing mid-stream cancels the upload before anything reaches
// GCS (the gocloud writer would otherwise commit what it had on Close).
//
// Hand-written fault: that a failing stream sends no request at all, seen per request (the end state runs on
// fake-gcs-server in tests/realstorage).
func TestGCSStream(t *testing.T) {
	f := startFakeGCS(t)
	s := open(t, f.url(t, "bk", "&storage-class=NEARLINE"), fastRetry)
	ctx := context.Background()
	gone := errors.New("temp file unreadable")
	src := &storagetest.Source{Data: []byte(strings.Repeat("stream ", 20000)), FailAt: 70000, FailErr: gone, FailOpens: 1}
	if err := s.WriteFrom(ctx, "v1/broken.log", int64(len(src.Data)), src.Open); !errors.Is(err, gone) {
		t.Fatalf("failing source: %v", err)
	}
	f.mu.Lock()
	n := len(f.uploads)
	f.mu.Unlock()
	if n != 0 {
		t.Fatalf("a failed stream reached GCS: %d uploads", n)
	}
	if err := s.WriteFrom(ctx, "v1/a.log", int64(len(src.Data)), src.Open); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.uploads) != 1 || f.uploads[0].metadata["name"] != "p/v1/a.log" || f.uploads[0].metadata["storageClass"] != "NEARLINE" {
		t.Fatalf("uploads %v", f.uploads)
	}
}
