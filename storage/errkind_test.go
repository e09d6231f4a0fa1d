package storage_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"logbackup/storage"
	"logbackup/storage/storagetest"
	"logbackup/tests/azuretest"
	"logbackup/tests/s3test"
)

// failCase is one backend made to fail one way, for real.
type failCase struct {
	name string
	// write performs a write that must fail; log observes its retries.
	write func(t *testing.T, log *retryLog) error
}

func s3Fault(f s3test.Fault) func(t *testing.T, log *retryLog) error {
	return func(t *testing.T, log *retryLog) error {
		srv := s3test.Start(t, "bk")
		s := open(t, srv.URL("bk", "p"), fastRetry, storage.WithRetryObserver(log.observe))
		srv.SetFault(f)
		return s.WriteFile(context.Background(), "v1/x", []byte("data"))
	}
}

func azureFault(f azuretest.Fault) func(t *testing.T, log *retryLog) error {
	return func(t *testing.T, log *retryLog) error {
		srv := azuretest.Start(t, "ctr")
		s := open(t, srv.URL("ctr", "p"), fastRetry, storage.WithRetryObserver(log.observe))
		srv.SetFault(f)
		return s.WriteFile(context.Background(), "v1/x", []byte("data"))
	}
}

// TestAccessDeniedAlike: a refusal is the same kind of error on every
// backend (ErrAccessDenied, KindAccessDenied) and is never retried.
//
// Hand-written fault: each backend's refusal codes (403 AccessDenied, InvalidAccessKeyId, 400 ExpiredToken,
// AuthorizationPermissionMismatch, …) answered on cue; the real servers' own refusals run in tests/realstorage.
func TestAccessDeniedAlike(t *testing.T) {
	for _, c := range []failCase{
		{"local read-only filesystem", func(t *testing.T, log *retryLog) error {
			fs := storagetest.MountTmpfs(t, 1<<20)
			s := open(t, "local://"+fs.Dir+"/store", fastRetry, storage.WithRetryObserver(log.observe))
			mustWriteT(t, s, "v1/x", []byte("old"))
			fs.ReadOnly(t)
			return s.WriteFile(context.Background(), "v1/x", []byte("new"))
		}},
		{"local read-only filesystem, new directory", func(t *testing.T, log *retryLog) error {
			fs := storagetest.MountTmpfs(t, 1<<20)
			s := open(t, "local://"+fs.Dir+"/store", fastRetry, storage.WithRetryObserver(log.observe))
			fs.ReadOnly(t)
			return s.WriteFile(context.Background(), "v1/backupmeta/new.meta", []byte("new"))
		}},
		{"s3 403 AccessDenied", s3Fault(s3test.Fault{Status: 403, Remaining: -1})},
		{"s3 403 InvalidAccessKeyId", s3Fault(s3test.Fault{Status: 403, Code: "InvalidAccessKeyId", Remaining: -1})},
		{"s3 400 ExpiredToken", s3Fault(s3test.Fault{Status: 400, Code: "ExpiredToken", Remaining: -1})},
		{"azure 403 AuthorizationFailure", azureFault(azuretest.Fault{Status: 403, Remaining: -1})},
		{"azure 403 AuthorizationPermissionMismatch", azureFault(azuretest.Fault{Status: 403, Code: "AuthorizationPermissionMismatch", Remaining: -1})},
		{"azure wrong account key", func(t *testing.T, log *retryLog) error {
			srv := azuretest.Start(t, "ctr")
			wrong := base64.StdEncoding.EncodeToString([]byte("not the account's key, but base64"))
			u := strings.Replace(srv.URL("ctr", "p"), url.QueryEscape(azuretest.AccountKey), url.QueryEscape(wrong), 1)
			s := open(t, u, fastRetry, storage.WithRetryObserver(log.observe))
			return s.WriteFile(context.Background(), "v1/x", []byte("data"))
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var log retryLog
			err := c.write(t, &log)
			if err == nil {
				t.Fatal("write succeeded")
			}
			if !errors.Is(err, storage.ErrAccessDenied) || storage.KindOf(err) != storage.KindAccessDenied ||
				errors.Is(err, storage.ErrQuotaExceeded) || storage.Retryable(err) {
				t.Fatalf("kind %s, retryable %v: %v", storage.KindOf(err), storage.Retryable(err), err)
			}
			if got := log.take(); got != "" {
				t.Fatalf("a refusal was retried: %s", got)
			}
		})
	}
}

// TestQuotaAlike: out of space or quota is one kind everywhere, not
// retried.
//
// Hand-written fault: quota and size-limit answers (XMinioStorageFull, QuotaExceeded, EntityTooLarge, …):
// no server fills up on cue.
func TestQuotaAlike(t *testing.T) {
	for _, c := range []failCase{
		{"local ENOSPC", func(t *testing.T, log *retryLog) error {
			fs := storagetest.MountTmpfs(t, 1<<20)
			s := open(t, "local://"+fs.Dir+"/store", fastRetry, storage.WithRetryObserver(log.observe))
			mustWriteT(t, s, "v1/x", []byte("old"))
			fs.Fill(t, 16<<10)
			return s.WriteFile(context.Background(), "v1/y", make([]byte, 256<<10))
		}},
		{"s3 400 EntityTooLarge", s3Fault(s3test.Fault{Status: 400, Code: "EntityTooLarge", Remaining: -1})},
		{"s3 403 QuotaExceeded (Ceph)", s3Fault(s3test.Fault{Status: 403, Code: "QuotaExceeded", Remaining: -1})},
		{"s3 507 XMinioStorageFull", s3Fault(s3test.Fault{Status: 507, Code: "XMinioStorageFull", Remaining: -1})},
		{"azure 413 RequestBodyTooLarge", azureFault(azuretest.Fault{Status: 413, Remaining: -1})},
		{"azure 409 BlockCountExceedsLimit", azureFault(azuretest.Fault{Status: 409, Code: "BlockCountExceedsLimit", Remaining: -1})},
	} {
		t.Run(c.name, func(t *testing.T) {
			var log retryLog
			err := c.write(t, &log)
			if err == nil {
				t.Fatal("write succeeded")
			}
			if !errors.Is(err, storage.ErrQuotaExceeded) || storage.KindOf(err) != storage.KindQuota ||
				errors.Is(err, storage.ErrAccessDenied) || storage.Retryable(err) {
				t.Fatalf("kind %s, retryable %v: %v", storage.KindOf(err), storage.Retryable(err), err)
			}
			if got := log.take(); got != "" {
				t.Fatalf("out of space was retried: %s", got)
			}
		})
	}
}

// TestLocalFailedWriteLeavesNoTornObject: on a real full filesystem a
// write that fails part way leaves nothing at the final name: a new
// object does not appear, an overwritten one (the global checkpoint)
// keeps its old content, and no temp file is left behind.
func TestLocalFailedWriteLeavesNoTornObject(t *testing.T) {
	fs := storagetest.MountTmpfs(t, 2<<20)
	dir := filepath.Join(fs.Dir, "store")
	s := open(t, "local://"+dir, fastRetry)
	ctx := context.Background()
	const ts = "v1/global_checkpoint/1.ts"
	old := []byte("\x01\x02\x03\x04\x05\x06\x07\x08")
	mustWriteT(t, s, ts, old)
	mustWriteT(t, s, "v1/backupmeta/a.meta", []byte("meta"))
	fs.Fill(t, 64<<10)
	big := bytes.Repeat([]byte("x"), 512<<10) // more than is left
	for _, name := range []string{ts, "v1/backupmeta/b.meta", "v1/new/dir/c.log"} {
		err := s.WriteFile(ctx, name, big)
		if err == nil {
			t.Fatalf("write of %s to a full filesystem succeeded", name)
		}
		if storage.KindOf(err) != storage.KindQuota {
			t.Fatalf("%s: kind %s: %v", name, storage.KindOf(err), err)
		}
	}
	mustRead(t, s, ts, old)
	if b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(ts))); err != nil || !bytes.Equal(b, old) {
		t.Fatalf("checkpoint on disk: %q, %v", b, err)
	}
	for _, name := range []string{"v1/backupmeta/b.meta", "v1/new/dir/c.log"} {
		if ok, err := s.Exists(ctx, name); ok || err != nil {
			t.Fatalf("failed write left %s: %v %v", name, ok, err)
		}
	}
	// Nothing but the objects: no partial temp files either.
	var files []string
	if err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			files = append(files, filepath.ToSlash(rel))
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(files) != "[v1/backupmeta/a.meta v1/global_checkpoint/1.ts]" {
		t.Fatalf("files on disk after failed writes: %v", files)
	}
	// With space again, the same write goes through.
	if err := os.Remove(filepath.Join(fs.Dir, filler(t, fs.Dir))); err != nil {
		t.Fatal(err)
	}
	mustWriteT(t, s, ts, big)
	mustRead(t, s, ts, big)
}

func filler(t *testing.T, dir string) string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "filler-*"))
	if err != nil || len(m) != 1 {
		t.Fatalf("filler file: %v %v", m, err)
	}
	return filepath.Base(m[0])
}

// TestIsBucketMissing: a missing bucket or container is told apart from
// a missing object, from the error alone (tests/realstorage proves the
// same against MinIO, Azurite and fake-gcs-server).
func TestIsBucketMissing(t *testing.T) {
	ctx := context.Background()
	s3srv := s3test.Start(t, "bk")
	az := azuretest.Start(t, "ctr")
	for _, c := range []struct{ name, there, missing string }{
		{"s3", s3srv.URL("bk", "p"), s3srv.URL("nobucket", "p")},
		{"azure", az.URL("ctr", "p"), az.URL("nocontainer", "p")},
	} {
		there, missing := open(t, c.there, fastRetry), open(t, c.missing, fastRetry)
		_, err := there.ReadFile(ctx, "v1/none")
		if !errors.Is(err, storage.ErrNotExist) || storage.IsBucketMissing(err) {
			t.Errorf("%s: a missing object in an existing bucket: missing bucket %v: %v", c.name, storage.IsBucketMissing(err), err)
		}
		for op, err := range map[string]error{
			"write": missing.WriteFile(ctx, "v1/x", []byte("x")),
			"list":  missing.List(ctx, "", func(storage.ObjectInfo) error { return nil }),
			"check": storage.CheckWritable(ctx, missing),
		} {
			if !storage.IsBucketMissing(err) || storage.KindOf(err) != storage.KindNotFound {
				t.Errorf("%s %s on a missing bucket: missing %v, kind %s: %v", c.name, op, storage.IsBucketMissing(err), storage.KindOf(err), err)
			}
		}
	}
	if storage.IsBucketMissing(nil) || storage.IsBucketMissing(errors.New("NoSuchBucket")) {
		t.Error("IsBucketMissing of nil or of a plain error")
	}
}
