package gcsjson_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"gocloud.dev/blob"
	"google.golang.org/api/googleapi"

	"logbackup/storage/internal/gcsjson"
)

// stingyGCS is a resumable upload endpoint that persists at most one
// 256 KiB unit of each PUT, as GCS may, and answers 308 with what it
// holds until the last byte is in. hangUp drops the connection on PUT.
type stingyGCS struct {
	mu     sync.Mutex
	got    []byte
	puts   int
	hangUp bool
}

func (s *stingyGCS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case r.Method == http.MethodPost && r.URL.Query().Get("uploadType") == "resumable":
		w.Header().Set("Location", "http://"+r.Host+"/session?upload_id=SECRET-SESSION")
	case r.Method == http.MethodPut && r.URL.Path == "/session":
		s.puts++
		if s.hangUp {
			panic(http.ErrAbortHandler)
		}
		body, _ := io.ReadAll(r.Body)
		var first int
		var total string
		if _, err := fmt.Sscanf(r.Header.Get("Content-Range"), "bytes %d-", &first); err != nil || first != len(s.got) {
			http.Error(w, "bad Content-Range "+r.Header.Get("Content-Range"), http.StatusBadRequest)
			return
		}
		total = r.Header.Get("Content-Range")[strings.LastIndexByte(r.Header.Get("Content-Range"), '/')+1:]
		s.got = append(s.got, body[:min(len(body), 256<<10)]...)
		if total != "*" && fmt.Sprint(len(s.got)) == total {
			_, _ = io.WriteString(w, `{"name":"x"}`)
			return
		}
		w.Header().Set("Range", fmt.Sprintf("bytes=0-%d", len(s.got)-1))
		w.WriteHeader(http.StatusPermanentRedirect)
	default:
		w.WriteHeader(http.StatusBadGateway)
		_, _ = io.WriteString(w, "<html>\n<body>upstream\nfailed</body>\n</html>\n")
	}
}

func stingyBucket(t *testing.T, s *stingyGCS) *blob.Bucket {
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	b, err := gcsjson.OpenBucket(srv.Client(), "bk", gcsjson.Options{Endpoint: srv.URL + "/storage/v1/"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// TestPartialChunks: what GCS did not persist of a chunk is sent again,
// mid-stream and in the last chunk, and the object is whole.
func TestPartialChunks(t *testing.T) {
	s := &stingyGCS{}
	b := stingyBucket(t, s)
	data := make([]byte, 1<<20+1000)
	for i := range data {
		data[i] = byte(i * 13)
	}
	w, err := b.NewWriter(context.Background(), "x", &blob.WriterOptions{ContentType: "application/octet-stream", BufferSize: 512 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !bytes.Equal(s.got, data) || s.puts != 5 {
		t.Fatalf("server holds %d of %d bytes after %d PUTs, want all after 5", len(s.got), len(data), s.puts)
	}
}

// TestErrorsAreOneLineWithoutSession: a proxy's HTML error is one line;
// a dropped connection's error does not carry the session's upload_id.
func TestErrorsAreOneLineWithoutSession(t *testing.T) {
	s := &stingyGCS{hangUp: true}
	b := stingyBucket(t, s)
	ctx := context.Background()
	_, err := b.ReadAll(ctx, "x")
	var ge *googleapi.Error
	if !errors.As(err, &ge) || ge.Code != http.StatusBadGateway || strings.Contains(err.Error(), "\n") {
		t.Errorf("502 with an HTML body: %q", err)
	}
	err = b.WriteAll(ctx, "x", make([]byte, 300<<10), &blob.WriterOptions{ContentType: "application/octet-stream", BufferSize: 256 << 10})
	if err == nil || strings.Contains(err.Error(), "SECRET-SESSION") {
		t.Errorf("dropped PUT: %v", err)
	}
}
