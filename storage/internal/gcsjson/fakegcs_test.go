package gcsjson_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
	"google.golang.org/api/googleapi"

	"logbackup/storage/internal/gcsjson"
	"logbackup/tests/realstorage"
)

// recorder is a transport that keeps each request's method and URL.
type recorder struct {
	mu   sync.Mutex
	reqs []string
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.reqs = append(r.reqs, req.Method+" "+req.URL.String())
	r.mu.Unlock()
	return http.DefaultTransport.RoundTrip(req)
}

// take returns the requests seen since the last take whose line contains sub.
func (r *recorder) take(sub string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, s := range r.reqs {
		if strings.Contains(s, sub) {
			out = append(out, s)
		}
	}
	r.reqs = nil
	return out
}

// fakeBucket opens a fresh bucket on one fake-gcs-server per test; the
// server ignores tokens, so the client carries none.
func fakeBucket(t *testing.T, opts gcsjson.Options) (*blob.Bucket, *recorder, *realstorage.FakeGCS, string) {
	t.Helper()
	g := realstorage.StartFakeGCS(t)
	name := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	g.CreateBucket(t, name)
	rec := &recorder{}
	opts.Endpoint = g.Endpoint() + "/storage/v1/"
	b, err := gcsjson.OpenBucket(&http.Client{Transport: rec}, name, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, rec, g, name
}

func write(t *testing.T, b *blob.Bucket, key string, data []byte, opts *blob.WriterOptions) {
	t.Helper()
	if opts == nil {
		opts = &blob.WriterOptions{}
	}
	opts.ContentType = "application/octet-stream"
	if err := b.WriteAll(context.Background(), key, data, opts); err != nil {
		t.Fatalf("write %s: %v", key, err)
	}
}

// rawObject is the object resource as the server reports it.
func rawObject(t *testing.T, g *realstorage.FakeGCS, bucket, key string) map[string]any {
	t.Helper()
	resp, err := http.Get(g.Endpoint() + "/storage/v1/b/" + bucket + "/o/" + url.PathEscape(key))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestListPagesAndDelimiter: a listing in pages of 2, flat and with a
// delimiter, gives every object and "directory" once, in key order.
func TestListPagesAndDelimiter(t *testing.T) {
	b, rec, _, _ := fakeBucket(t, gcsjson.Options{})
	ctx := context.Background()
	for _, k := range []string{"p/a", "p/b/1", "p/b/2", "p/c", "p/d/x/1", "p/e", "p/f", "q/z"} {
		write(t, b, k, []byte(k), nil)
	}
	rec.take("")
	list := func(delim string) (keys []string) {
		token := blob.FirstPageToken
		for len(token) > 0 {
			page, next, err := b.ListPage(ctx, token, 2, &blob.ListOptions{Prefix: "p/", Delimiter: delim})
			if err != nil {
				t.Fatal(err)
			}
			if delim == "" && len(page) > 2 {
				// (With a delimiter, fake-gcs-server counts only objects
				// against maxResults and adds every prefix; GCS counts both.)
				t.Fatalf("page of %d, asked for 2", len(page))
			}
			for _, o := range page {
				k := o.Key
				if o.IsDir {
					k += "(dir)"
				} else if o.Size != int64(len(o.Key)) || o.ModTime.IsZero() || len(o.MD5) != 16 {
					t.Errorf("%s: size %d, modtime %v, md5 %x", o.Key, o.Size, o.ModTime, o.MD5)
				}
				keys = append(keys, k)
			}
			token = next
		}
		return keys
	}
	if got, want := strings.Join(list(""), " "), "p/a p/b/1 p/b/2 p/c p/d/x/1 p/e p/f"; got != want {
		t.Errorf("flat: %s, want %s", got, want)
	}
	if n := len(rec.take("/o?")); n != 4 {
		t.Errorf("flat listing of 7 in pages of 2: %d requests", n)
	}
	if got, want := strings.Join(list("/"), " "), "p/a p/b/(dir) p/c p/d/(dir) p/e p/f"; got != want {
		t.Errorf("delimited: %s, want %s", got, want)
	}
	if n := len(rec.take("/o?")); n < 2 {
		t.Errorf("delimited listing in pages of 2: %d requests, want more than one", n)
	}
}

// TestRangedReads: a range in the middle, to the end, of nothing, and
// past the end (GCS's 416, which the storage reads as no bytes); the
// reader's size is the object's.
func TestRangedReads(t *testing.T) {
	b, _, _, _ := fakeBucket(t, gcsjson.Options{})
	ctx := context.Background()
	data := []byte("0123456789abcdefghij")
	write(t, b, "r", data, nil)
	for _, c := range []struct {
		off, n int64
		want   string
	}{{0, -1, string(data)}, {5, 4, "5678"}, {15, -1, "fghij"}, {18, 10, "ij"}, {3, 0, ""}} {
		r, err := b.NewRangeReader(ctx, "r", c.off, c.n, nil)
		if err != nil {
			t.Fatalf("range %d+%d: %v", c.off, c.n, err)
		}
		got, err := io.ReadAll(r)
		r.Close()
		if err != nil || string(got) != c.want || r.Size() != int64(len(data)) {
			t.Errorf("range %d+%d: %q (size %d), %v; want %q", c.off, c.n, got, r.Size(), err, c.want)
		}
	}
	_, err := b.NewRangeReader(ctx, "r", int64(len(data)), -1, nil)
	var ge *googleapi.Error
	if !errors.As(err, &ge) || ge.Code != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("range past the end: %v, want a 416", err)
	}
}

// TestNotFound: a missing object is NotFound to every call; a listing of
// a missing bucket says the bucket is missing.
func TestNotFound(t *testing.T) {
	b, _, g, _ := fakeBucket(t, gcsjson.Options{})
	ctx := context.Background()
	_, err := b.NewRangeReader(ctx, "nothing", 0, -1, nil)
	if gcerrors.Code(err) != gcerrors.NotFound {
		t.Errorf("read: %v", err)
	}
	if _, err := b.NewRangeReader(ctx, "nothing", 0, 0, nil); gcerrors.Code(err) != gcerrors.NotFound {
		t.Errorf("empty read: %v", err)
	}
	if _, err := b.Attributes(ctx, "nothing"); gcerrors.Code(err) != gcerrors.NotFound {
		t.Errorf("attributes: %v", err)
	}
	if ok, err := b.Exists(ctx, "nothing"); ok || err != nil {
		t.Errorf("exists: %v %v", ok, err)
	}
	if err := b.Delete(ctx, "nothing"); gcerrors.Code(err) != gcerrors.NotFound {
		t.Errorf("delete: %v", err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("not one line: %q", err)
	}
	missing, err := gcsjson.OpenBucket(http.DefaultClient, "nosuchbucket", gcsjson.Options{Endpoint: g.Endpoint() + "/storage/v1/"})
	if err != nil {
		t.Fatal(err)
	}
	defer missing.Close()
	_, _, err = missing.ListPage(ctx, blob.FirstPageToken, 10, nil)
	if !errors.Is(err, gcsjson.ErrBucketNotExist) || gcerrors.Code(err) != gcerrors.NotFound {
		t.Errorf("list of a missing bucket: %v", err)
	}
	var ge *googleapi.Error
	if !missing.ErrorAs(err, &ge) || ge.Code != http.StatusNotFound {
		t.Errorf("list of a missing bucket: ErrorAs %v", err)
	}
}

// TestIfNotExist: a conditional write over an object fails as a
// precondition and leaves the object; over nothing it writes.
func TestIfNotExist(t *testing.T) {
	b, _, _, _ := fakeBucket(t, gcsjson.Options{})
	ctx := context.Background()
	write(t, b, "once", []byte("first"), &blob.WriterOptions{IfNotExist: true})
	err := b.WriteAll(ctx, "once", []byte("second"), &blob.WriterOptions{ContentType: "text/plain", IfNotExist: true})
	if gcerrors.Code(err) != gcerrors.FailedPrecondition {
		t.Fatalf("second conditional write: %v", err)
	}
	if got, _ := b.ReadAll(ctx, "once"); string(got) != "first" {
		t.Fatalf("object now %q", got)
	}
}

// TestStorageClassAndACL: both reach the server on a multipart and on a
// resumable upload.
func TestStorageClassAndACL(t *testing.T) {
	b, rec, g, bucket := fakeBucket(t, gcsjson.Options{StorageClass: "NEARLINE", PredefinedACL: "publicRead"})
	write(t, b, "small", []byte("small"), nil)
	write(t, b, "large", bytes.Repeat([]byte("x"), 600<<10), &blob.WriterOptions{BufferSize: 256 << 10})
	for _, k := range []string{"small", "large"} {
		if sc := rawObject(t, g, bucket, k)["storageClass"]; sc != "NEARLINE" {
			t.Errorf("%s: storageClass %v", k, sc)
		}
	}
	ups := rec.take("POST ")
	if len(ups) != 2 || !strings.Contains(ups[0], "uploadType=multipart") || !strings.Contains(ups[1], "uploadType=resumable") {
		t.Fatalf("uploads %v", ups)
	}
	for _, u := range ups {
		if !strings.Contains(u, "predefinedAcl=publicRead") {
			t.Errorf("no ACL: %s", u)
		}
	}
}

// TestResumable: an object of several chunks is one session of PUTs and
// reads back whole; names with characters URLs treat specially survive.
func TestResumable(t *testing.T) {
	b, rec, _, _ := fakeBucket(t, gcsjson.Options{})
	ctx := context.Background()
	data := make([]byte, 1<<20+12345)
	for i := range data {
		data[i] = byte(i * 7)
	}
	key := "dir/a b+c%d?e#f/ü.log"
	w, err := b.NewWriter(ctx, key, &blob.WriterOptions{ContentType: "application/octet-stream", BufferSize: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(data); off += 100000 {
		if _, err := w.Write(data[off:min(off+100000, len(data))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.take("PUT ")); n != 5 {
		t.Errorf("%d chunks for 1 MiB + 12345 in 256 KiB, want 5", n)
	}
	got, err := b.ReadAll(ctx, key)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
	page, _, err := b.ListPage(ctx, blob.FirstPageToken, 10, &blob.ListOptions{Prefix: "dir/"})
	if err != nil || len(page) != 1 || page[0].Key != key {
		t.Fatalf("list: %v %v", page, err)
	}
}

// TestCancelledWriteCommitsNothing: a writer whose context ends mid-way
// (the storage's way to abandon a failed stream) leaves no object, after
// one chunk has gone or before any has.
func TestCancelledWriteCommitsNothing(t *testing.T) {
	b, _, _, _ := fakeBucket(t, gcsjson.Options{})
	for _, n := range []int{1000, 700 << 10} {
		ctx, cancel := context.WithCancel(context.Background())
		key := fmt.Sprintf("abandoned-%d", n)
		w, err := b.NewWriter(ctx, key, &blob.WriterOptions{ContentType: "application/octet-stream", BufferSize: 256 << 10})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(make([]byte, n)); err != nil {
			t.Fatal(err)
		}
		cancel()
		if err := w.Close(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s: close: %v", key, err)
		}
		if ok, err := b.Exists(context.Background(), key); ok || err != nil {
			t.Errorf("%s: exists %v, %v", key, ok, err)
		}
	}
}
