package storage_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gocloud.dev/gcerrors"

	"logbackup/storage"
	"logbackup/storage/storagetest"
	"logbackup/tests/s3test"
)

// fastRetry keeps fault tests quick: four tries, short waits.
var fastRetry = storage.WithRetryPolicy(storage.RetryPolicy{
	MaxAttempts: 4, AttemptTimeout: 2 * time.Second, InitialBackoff: 5 * time.Millisecond,
	MaxBackoff: 20 * time.Millisecond, MaxElapsed: 20 * time.Second,
})

// bigRetry is fastRetry with time for a 17 MiB upload per attempt under
// -race on a loaded machine.
var bigRetry = storage.WithRetryPolicy(storage.RetryPolicy{
	MaxAttempts: 4, AttemptTimeout: 60 * time.Second, InitialBackoff: 5 * time.Millisecond,
	MaxBackoff: 20 * time.Millisecond, MaxElapsed: 3 * time.Minute,
})

func open(t testing.TB, url string, opts ...storage.Option) storage.Storage {
	t.Helper()
	s, err := storage.OpenURL(context.Background(), url, opts...)
	if err != nil {
		t.Fatalf("open %s: %v", storage.Redact(url), err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformanceLocal(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Storage { return open(t, "local://"+t.TempDir()+"/not/yet/there") })
}

func TestConformanceFileScheme(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Storage { return open(t, "file://"+t.TempDir()) })
}

func TestConformanceMem(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Storage { return open(t, "mem://") })
}

func TestConformanceS3(t *testing.T) {
	srv := s3test.Start(t)
	n := 0
	storagetest.Run(t, func(t *testing.T) storage.Storage {
		n++
		bucket := fmt.Sprintf("bk%d", n)
		srv.CreateBucket(t, bucket)
		return open(t, srv.URL(bucket, "log/prefix"))
	})
}

// TestConformanceS3BucketRoot runs without a prefix, so names are the
// bucket's keys themselves.
func TestConformanceS3BucketRoot(t *testing.T) {
	srv := s3test.Start(t)
	n := 0
	storagetest.Run(t, func(t *testing.T) storage.Storage {
		n++
		bucket := fmt.Sprintf("root%d", n)
		srv.CreateBucket(t, bucket)
		return open(t, srv.URL(bucket, ""))
	})
}

// TestPrefixIsolation: two storages on one bucket under sibling prefixes
// ("p" and "p2") never see each other's objects.
func TestPrefixIsolation(t *testing.T) {
	srv := s3test.Start(t, "bk")
	ctx := context.Background()
	a, b := open(t, srv.URL("bk", "p")), open(t, srv.URL("bk", "p2"))
	if err := a.WriteFile(ctx, "x", []byte("a")); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteFile(ctx, "x", []byte("b")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		s    storage.Storage
		want string
	}{{a, "a"}, {b, "b"}} {
		n := 0
		if err := c.s.List(ctx, "", func(o storage.ObjectInfo) error { n++; return nil }); err != nil || n != 1 {
			t.Fatalf("%s lists %d objects, %v", c.s, n, err)
		}
		if got, err := c.s.ReadFile(ctx, "x"); err != nil || string(got) != c.want {
			t.Fatalf("%s: x = %q, %v", c.s, got, err)
		}
	}
}

func TestLocalLayoutOnDisk(t *testing.T) {
	dir := t.TempDir()
	s := open(t, "local://"+dir)
	ctx := context.Background()
	if err := s.WriteFile(ctx, "v1/backupmeta/x.meta", []byte("m")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "v1", "backupmeta", "x.meta"))
	if err != nil || string(b) != "m" {
		t.Fatalf("file on disk: %q %v", b, err)
	}
	entries, err := os.ReadDir(filepath.Join(dir, "v1", "backupmeta"))
	if err != nil || len(entries) != 1 {
		t.Fatalf("directory holds %v (%v), want exactly the object: no temp or sidecar files", entries, err)
	}
	// A temp file stranded by a crash is not an object; a real object
	// whose name merely ends in .tmp is.
	stranded := filepath.Join(dir, "v1", "backupmeta", "y.meta.17f3a.tmp")
	if err := os.WriteFile(stranded, []byte("partial"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteFile(ctx, "v1/backupmeta/notes.tmp", []byte("real")); err != nil {
		t.Fatal(err)
	}
	var names []string
	if err := s.List(ctx, "v1/", func(o storage.ObjectInfo) error { names = append(names, o.Name); return nil }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(names) != "[v1/backupmeta/notes.tmp v1/backupmeta/x.meta]" {
		t.Fatalf("listed %v", names)
	}
}

func TestLocalOpenErrors(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"local://" + f, "local://" + f + "/sub"} {
		if s, err := storage.OpenURL(context.Background(), u); err == nil {
			s.Close()
			t.Errorf("opened storage at %s, under a regular file", u)
		}
	}
}

func TestLocalWriteErrorIsNotRetried(t *testing.T) {
	dir := t.TempDir()
	var retries int
	s := open(t, "local://"+dir, fastRetry, storage.WithRetryObserver(func(string, int, error) { retries++ }))
	// A regular file where a directory must go: permanent, so one try.
	if err := os.WriteFile(filepath.Join(dir, "v1"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := s.WriteFile(context.Background(), "v1/a", []byte("x"))
	var op *storage.OpError
	if err == nil || !errors.As(err, &op) || op.Op != "write" || op.Name != "v1/a" {
		t.Fatalf("write under a file: %v", err)
	}
	if retries != 0 || storage.Retryable(err) {
		t.Fatalf("a local error was retried %d times (retryable %v): %v (%T)", retries, storage.Retryable(err), err, errors.Unwrap(errors.Unwrap(err)))
	}
}

func TestErrorsKeepCodeAndObject(t *testing.T) {
	s := open(t, "mem://")
	_, err := s.ReadFile(context.Background(), "some/x")
	var op *storage.OpError
	if !errors.As(err, &op) || op.Name != "some/x" || op.Op != "read" || op.URL != "mem://" {
		t.Fatalf("missing object error: %#v", err)
	}
	if !errors.Is(err, storage.ErrNotExist) || gcerrors.Code(err) != gcerrors.NotFound || storage.Retryable(err) {
		t.Fatalf("missing object: is ErrNotExist %v, code %v, retryable %v",
			errors.Is(err, storage.ErrNotExist), gcerrors.Code(err), storage.Retryable(err))
	}
	if !strings.Contains(err.Error(), `"some/x"`) || !strings.Contains(err.Error(), "mem://") {
		t.Fatalf("message does not say what failed where: %v", err)
	}
}

func TestMemStoresAreSeparate(t *testing.T) {
	a, b := open(t, "mem://"), open(t, "mem://")
	ctx := context.Background()
	if err := a.WriteFile(ctx, "x", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Exists(ctx, "x"); ok || err != nil {
		t.Fatalf("a second mem:// store sees the first's object: %v %v", ok, err)
	}
}

func TestOpenBackendRoundTrip(t *testing.T) {
	srv := s3test.Start(t, "bk")
	ctx := context.Background()
	for _, u := range []string{srv.URL("bk", "task/one"), "local://" + t.TempDir()} {
		first := open(t, u)
		if err := first.WriteFile(ctx, "obj", []byte("via url")); err != nil {
			t.Fatal(err)
		}
		loc, err := storage.ParseURL(u)
		if err != nil {
			t.Fatal(err)
		}
		be, err := loc.Backend()
		if err != nil {
			t.Fatal(err)
		}
		second, err := storage.OpenBackend(ctx, be, fastRetry)
		if err != nil {
			t.Fatal(err)
		}
		defer second.Close()
		if second.String() != first.String() {
			t.Errorf("redacted URL changed across the backend: %s vs %s", second, first)
		}
		if got, err := second.ReadFile(ctx, "obj"); err != nil || string(got) != "via url" {
			t.Errorf("%s through the backend reads %q, %v", second, got, err)
		}
	}
}

func TestOpenRejectsBadLocations(t *testing.T) {
	ctx := context.Background()
	for _, loc := range []*storage.Location{
		nil,
		{},
		{Scheme: "local", Path: "relative"},
		{Scheme: "s3"},
		{Scheme: "s3", Bucket: "bk", Endpoint: "127.0.0.1:9000"},
		{Scheme: "ftp", Bucket: "bk"},
	} {
		if s, err := storage.Open(ctx, loc); err == nil {
			s.Close()
			t.Errorf("Open(%v) accepted", loc)
		}
	}
	if _, err := storage.OpenBackend(ctx, nil); err == nil {
		t.Error("OpenBackend(nil) accepted")
	}
}
