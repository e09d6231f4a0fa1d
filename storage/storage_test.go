package storage_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
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

var fastRetry = storage.WithRetryPolicy(storage.RetryPolicy{
	MaxAttempts: 4, AttemptTimeout: 2 * time.Second, InitialBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
})

func open(t *testing.T, url string, opts ...storage.Option) storage.Storage {
	t.Helper()
	s, err := storage.OpenURL(context.Background(), url, opts...)
	if err != nil {
		t.Fatalf("open %s: %v", storage.Redact(url), err)
	}
	return s
}

func TestConformanceLocal(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Storage { return open(t, "local://"+t.TempDir()+"/sub") })
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

func TestS3RetriesTransientFailures(t *testing.T) {
	srv := s3test.Start(t, "bk")
	var retries []string
	s := open(t, srv.URL("bk", "p"), fastRetry, storage.WithRetryObserver(func(op string, attempt int, err error) {
		retries = append(retries, fmt.Sprintf("%s#%d", op, attempt))
	}))
	ctx := context.Background()
	data := bytes.Repeat([]byte("payload"), 1000)

	srv.SetFault(s3test.Fault{Status: 500, Remaining: 1})
	if err := s.WriteFile(ctx, "obj", data); err != nil {
		t.Fatalf("write through one 500: %v", err)
	}
	srv.SetFault(s3test.Fault{Status: 503, Remaining: 2})
	got, err := s.ReadFile(ctx, "obj")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read through two 503s: %v", err)
	}
	srv.SetFault(s3test.Fault{SlowBody: 5 * time.Second, Remaining: 1, Match: func(r *http.Request) bool { return r.Method == http.MethodGet }})
	got, err = s.ReadFile(ctx, "obj")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read through a stalled body: %v", err)
	}
	if len(retries) != 4 {
		t.Fatalf("retries observed: %v, want 4 (1 write, 2 reads, 1 stalled read)", retries)
	}
}

func TestS3AccessDeniedIsNotRetried(t *testing.T) {
	srv := s3test.Start(t, "bk")
	s := open(t, srv.URL("bk", "p"), fastRetry)
	srv.SetFault(s3test.Fault{Status: 403, Remaining: -1})
	before := srv.Requests()
	err := s.WriteFile(context.Background(), "obj", []byte("x"))
	if gcerrors.Code(err) != gcerrors.PermissionDenied {
		t.Fatalf("403: code %v, err %v", gcerrors.Code(err), err)
	}
	if n := srv.Requests() - before; n != 1 {
		t.Fatalf("access denied was sent %d times", n)
	}
	if strings.Contains(err.Error(), s3test.SecretKey) {
		t.Fatalf("error leaks the secret: %v", err)
	}
}

func TestS3PersistentFailureIsBounded(t *testing.T) {
	srv := s3test.Start(t, "bk")
	s := open(t, srv.URL("bk", "p"), fastRetry)
	srv.SetFault(s3test.Fault{Status: 503, Remaining: -1})
	began := time.Now()
	err := s.WriteFile(context.Background(), "obj", []byte("x"))
	if err == nil || !storage.Retryable(err) {
		t.Fatalf("persistent 503: %v", err)
	}
	if srv.Faults() != 4 {
		t.Fatalf("%d attempts, want the policy's 4", srv.Faults())
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Fatalf("persistent failure took %s", took)
	}
}

func TestS3MissingBucket(t *testing.T) {
	srv := s3test.Start(t)
	s := open(t, srv.URL("missing", "p"), fastRetry)
	err := storage.CheckWritable(context.Background(), s)
	if gcerrors.Code(err) != gcerrors.NotFound || storage.Retryable(err) {
		t.Fatalf("missing bucket: %v (code %v)", err, gcerrors.Code(err))
	}
}

func TestLocalWriteIsVisibleAndListed(t *testing.T) {
	dir := t.TempDir()
	s := open(t, "local://"+dir)
	if err := s.WriteFile(context.Background(), "v1/backupmeta/x.meta", []byte("m")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "v1", "backupmeta", "x.meta"))
	if err != nil || string(b) != "m" {
		t.Fatalf("file on disk: %q %v", b, err)
	}
	// A temp file stranded by a crash is not an object.
	os.WriteFile(filepath.Join(dir, "v1", "backupmeta", "y.meta.17f.tmp"), []byte("partial"), 0o644)
	n := 0
	s.List(context.Background(), "v1/", func(storage.ObjectInfo) error { n++; return nil })
	if n != 1 {
		t.Fatalf("listed %d objects, want 1", n)
	}
}

func TestUnwritableLocal(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, []byte("x"), 0o644)
	_, err := storage.OpenURL(context.Background(), "local://"+f+"/sub")
	if err == nil {
		t.Fatal("opened storage under a regular file")
	}
}

func TestErrorsKeepNotExist(t *testing.T) {
	s := open(t, "mem://")
	_, err := s.ReadFile(context.Background(), "x")
	var op *storage.OpError
	if !errors.As(err, &op) || op.Name != "x" || !errors.Is(err, storage.ErrNotExist) || gcerrors.Code(err) != gcerrors.NotFound {
		t.Fatalf("missing object error: %#v", err)
	}
}

func BenchmarkWriteFile(b *testing.B) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 8<<20/16)
	run := func(b *testing.B, s storage.Storage) {
		b.SetBytes(int64(len(data)))
		for i := 0; i < b.N; i++ {
			if err := s.WriteFile(context.Background(), fmt.Sprintf("bench/%d", i), data); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("local", func(b *testing.B) {
		s, _ := storage.OpenURL(context.Background(), "local://"+b.TempDir())
		run(b, s)
	})
	b.Run("s3-loopback", func(b *testing.B) {
		srv := s3test.Start(b, "bk")
		s, _ := storage.OpenURL(context.Background(), srv.URL("bk", "p"))
		run(b, s)
	})
}
