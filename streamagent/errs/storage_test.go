package errs

import (
	"context"
	"testing"
	"time"

	"logbackup/storage"
	"logbackup/storage/storagetest"
	"logbackup/tests/azuretest"
	"logbackup/tests/s3test"
)

// TestClassifyStorageFailuresAlike: the same failure gives the same code
// on every backend, produced for real: a read-only filesystem, an S3 403
// and an Azure 403 are all StorageAccessDenied (fatal at once, not
// retried until the budget runs out), and a full disk or a quota are all
// StorageQuotaExceeded.
func TestClassifyStorageFailuresAlike(t *testing.T) {
	fast := storage.WithRetryPolicy(storage.RetryPolicy{MaxAttempts: 2, AttemptTimeout: 5 * time.Second,
		InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond})
	ctx := context.Background()
	openURL := func(t *testing.T, u string) storage.Storage {
		s, err := storage.OpenURL(ctx, u, fast)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	s3With := func(f s3test.Fault) func(t *testing.T) error {
		return func(t *testing.T) error {
			srv := s3test.Start(t, "bk")
			srv.SetFault(f)
			return openURL(t, srv.URL("bk", "p")).WriteFile(ctx, "x", []byte("x"))
		}
	}
	azureWith := func(f azuretest.Fault) func(t *testing.T) error {
		return func(t *testing.T) error {
			srv := azuretest.Start(t, "ctr")
			srv.SetFault(f)
			return openURL(t, srv.URL("ctr", "p")).WriteFile(ctx, "x", []byte("x"))
		}
	}
	cases := []struct {
		name string
		fail func(t *testing.T) error
		want Code
	}{
		{"local read-only", func(t *testing.T) error {
			fs := storagetest.MountTmpfs(t, 1<<20)
			s := openURL(t, "local://"+fs.Dir+"/store")
			fs.ReadOnly(t)
			return s.WriteFile(ctx, "v1/x", []byte("x"))
		}, CodeStorageAccessDenied},
		{"s3 403", s3With(s3test.Fault{Status: 403, Remaining: -1}), CodeStorageAccessDenied},
		{"azure 403", azureWith(azuretest.Fault{Status: 403, Remaining: -1}), CodeStorageAccessDenied},
		{"local full", func(t *testing.T) error {
			fs := storagetest.MountTmpfs(t, 1<<20)
			s := openURL(t, "local://"+fs.Dir+"/store")
			fs.Fill(t, 8<<10)
			return s.WriteFile(ctx, "v1/x", make([]byte, 64<<10))
		}, CodeStorageQuota},
		{"s3 EntityTooLarge", s3With(s3test.Fault{Status: 400, Code: "EntityTooLarge", Remaining: -1}), CodeStorageQuota},
		{"s3 QuotaExceeded", s3With(s3test.Fault{Status: 403, Code: "QuotaExceeded", Remaining: -1}), CodeStorageQuota},
		{"azure RequestBodyTooLarge", azureWith(azuretest.Fault{Status: 413, Remaining: -1}), CodeStorageQuota},
		{"s3 500", s3With(s3test.Fault{Status: 500, Remaining: -1}), CodeStorageUnavailable},
		{"azure 500", azureWith(azuretest.Fault{Status: 500, Remaining: -1}), CodeStorageUnavailable},
		{"azure missing container", func(t *testing.T) error {
			srv := azuretest.Start(t)
			return openURL(t, srv.URL("missing", "p")).WriteFile(ctx, "x", []byte("x"))
		}, CodeStorageNotFound},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.fail(t)
			if err == nil {
				t.Fatal("no error")
			}
			got := Classify(err)
			if got.Code != c.want || got.Class != Lookup(c.want).Class {
				t.Fatalf("%v → %s/%s, want %s", err, got.Code, got.Class, c.want)
			}
			// Also wrapped, as the agent reports it.
			if got := Classify(wrap(err)); got.Code != c.want {
				t.Fatalf("wrapped: %s", got.Code)
			}
		})
	}
	if Lookup(CodeStorageAccessDenied).Class != Fatal || Lookup(CodeStorageQuota).Class != Fatal {
		t.Fatal("access denied and quota must be fatal")
	}
}
