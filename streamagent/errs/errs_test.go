package errs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/errorpb"
	"google.golang.org/api/googleapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"logbackup/meta"
	"logbackup/storage"
	"logbackup/tests/s3test"
)

func wrap(err error) error { return fmt.Errorf("upload v1/x.log: %w", err) }

func TestClassify(t *testing.T) {
	cases := []struct {
		name  string
		err   error
		code  Code
		class Class
	}{
		{"explicit code wins", wrap(Wrap(CodeChecksumMismatch, errors.New("sha256"))), CodeChecksumMismatch, Fatal},
		{"not leader", &RegionError{RegionID: 1, Err: &cdcpb.Error{NotLeader: &errorpb.NotLeader{}}}, CodeNotLeader, Retryable},
		{"epoch not match", wrap(&RegionError{Err: &cdcpb.Error{EpochNotMatch: &errorpb.EpochNotMatch{}}}), CodeEpochNotMatch, Retryable},
		{"region not found", &RegionError{Err: &cdcpb.Error{RegionNotFound: &errorpb.RegionNotFound{}}}, CodeRegionNotFound, Retryable},
		{"server busy", &RegionError{Err: &cdcpb.Error{ServerIsBusy: &errorpb.ServerIsBusy{}}}, CodeServerBusy, Retryable},
		{"congested", &RegionError{Err: &cdcpb.Error{Congested: &cdcpb.Congested{}}}, CodeCongested, Retryable},
		{"cluster id mismatch", &RegionError{Err: &cdcpb.Error{ClusterIdMismatch: &cdcpb.ClusterIDMismatch{}}}, CodeClusterIDMismatch, Fatal},
		{"incompatible", &RegionError{Err: &cdcpb.Error{Compatibility: &cdcpb.Compatibility{}}}, CodeIncompatible, Fatal},
		{"connection refused", wrap(&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}), CodeNetwork, Retryable},
		{"connection reset", wrap(syscall.ECONNRESET), CodeNetwork, Retryable},
		{"unexpected eof", wrap(io.ErrUnexpectedEOF), CodeNetwork, Retryable},
		{"deadline", wrap(context.DeadlineExceeded), CodeDeadline, Retryable},
		{"grpc unavailable", status.Error(codes.Unavailable, "x"), CodeGRPC, Retryable},
		{"grpc unimplemented", status.Error(codes.Unimplemented, "x"), CodeIncompatible, Fatal},
		{"disk full", wrap(&storage.OpError{Op: "write", Err: &fs.PathError{Op: "write", Path: "/tmp/x", Err: syscall.ENOSPC}}), CodeStorageQuota, Fatal},
		{"temp file", wrap(&fs.PathError{Op: "open", Path: "/tmp/x", Err: syscall.EACCES}), CodeIo, Fatal},
		{"storage EACCES", wrap(&storage.OpError{Op: "write", Err: &fs.PathError{Op: "open", Path: "/b/x", Err: syscall.EACCES}}), CodeStorageAccessDenied, Fatal},
		{"storage EPERM", wrap(&storage.OpError{Op: "write", Err: &fs.PathError{Op: "rename", Path: "/b/x", Err: syscall.EPERM}}), CodeStorageAccessDenied, Fatal},
		{"storage EROFS", wrap(&storage.OpError{Op: "write", Err: &fs.PathError{Op: "mkdir", Path: "/b/v1", Err: syscall.EROFS}}), CodeStorageAccessDenied, Fatal},
		{"storage EDQUOT", wrap(&storage.OpError{Op: "write", Err: &fs.PathError{Op: "write", Path: "/b/x", Err: syscall.EDQUOT}}), CodeStorageQuota, Fatal},
		{"gcs 403", wrap(&storage.OpError{Op: "write", Err: &googleapi.Error{Code: 403, Message: "denied"}}), CodeStorageAccessDenied, Fatal},
		{"gcs 401", wrap(&storage.OpError{Op: "read", Err: &googleapi.Error{Code: 401}}), CodeStorageAccessDenied, Fatal},
		{"gcs 503", wrap(&storage.OpError{Op: "write", Err: &googleapi.Error{Code: 503}}), CodeStorageUnavailable, Retryable},
		{"gcs 429", wrap(&storage.OpError{Op: "write", Err: &googleapi.Error{Code: 429}}), CodeStorageThrottled, Retryable},
		{"no credentials", wrap(&storage.OpError{Op: "write", Err: fmt.Errorf("%w: none", storage.ErrCredentials)}), CodeStorageAccessDenied, Fatal},
		{"unknown", errors.New("something new"), CodeUnknown, Fatal},
	}
	for _, c := range cases {
		got := Classify(c.err)
		if got.Code != c.code || got.Class != c.class {
			t.Errorf("%s: %v → %s/%s, want %s/%s", c.name, c.err, got.Code, got.Class, c.code, c.class)
		}
	}
}

// Every code is in the table with a cause and an action, in TiKV's
// namespace, so docs and LastError hints are never empty.
func TestCodeTable(t *testing.T) {
	for _, c := range Codes() {
		info := Lookup(c)
		if info.Code != c || info.Cause == "" || info.Action == "" || !strings.HasPrefix(string(c), "KV:LogBackup:") {
			t.Errorf("code %s: %+v", c, info)
		}
	}
	if Lookup("KV:LogBackup:NoSuchThing").Code != CodeUnknown {
		t.Error("an unknown code must map to Unknown")
	}
}

// TestClassifyRealStorageErrors classifies the errors a real S3-compatible
// server on loopback produces through our storage layer.
func TestClassifyRealStorageErrors(t *testing.T) {
	srv := s3test.Start(t, "bk")
	fast := storage.WithRetryPolicy(storage.RetryPolicy{MaxAttempts: 2, AttemptTimeout: 2e9, InitialBackoff: 1e6, MaxBackoff: 1e6})
	ctx := context.Background()
	open := func(bucket string) storage.Storage {
		s, err := storage.OpenURL(ctx, srv.URL(bucket, "p"), fast)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	srv.SetFault(s3test.Fault{Status: 403, Remaining: -1})
	if got := Classify(open("bk").WriteFile(ctx, "x", []byte("x"))); got.Code != CodeStorageAccessDenied || got.Class != Fatal {
		t.Errorf("403: %s", got.Code)
	}
	srv.SetFault(s3test.Fault{Status: 503, Remaining: -1})
	if got := Classify(open("bk").WriteFile(ctx, "x", []byte("x"))); got.Code != CodeStorageUnavailable || got.Class != Retryable {
		t.Errorf("503: %s", got.Code)
	}
	srv.SetFault(s3test.Fault{Status: 500, Remaining: -1})
	if got := Classify(open("bk").WriteFile(ctx, "x", []byte("x"))); got.Code != CodeStorageUnavailable {
		t.Errorf("500: %s", got.Code)
	}
	srv.ClearFault()
	if got := Classify(open("missing").WriteFile(ctx, "x", []byte("x"))); got.Code != CodeStorageNotFound || got.Class != Fatal {
		t.Errorf("missing bucket: %s", got.Code)
	}
}

// TestEveryCodeIsProduced: a code no path produces is a promise the agent
// cannot keep, and runbooks would document a state that never happens.
// Each code is either what Classify makes of an error some path returns, or
// named by the agent's own (non-test) code that raises it explicitly; and
// each has its TiKV counterpart for the docs.
func TestEveryCodeIsProduced(t *testing.T) {
	classified := map[Code]bool{}
	for _, err := range []error{
		&RegionError{Err: &cdcpb.Error{NotLeader: &errorpb.NotLeader{}}},
		&RegionError{Err: &cdcpb.Error{EpochNotMatch: &errorpb.EpochNotMatch{}}},
		&RegionError{Err: &cdcpb.Error{RegionNotFound: &errorpb.RegionNotFound{}}},
		&RegionError{Err: &cdcpb.Error{ServerIsBusy: &errorpb.ServerIsBusy{}}},
		&RegionError{Err: &cdcpb.Error{Congested: &cdcpb.Congested{}}},
		&RegionError{Err: &cdcpb.Error{ClusterIdMismatch: &cdcpb.ClusterIDMismatch{}}},
		&RegionError{Err: &cdcpb.Error{Compatibility: &cdcpb.Compatibility{}}},
		&RegionError{Err: &cdcpb.Error{DuplicateRequest: &cdcpb.DuplicateRequest{}}},
		&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED},
		context.DeadlineExceeded,
		status.Error(codes.Unavailable, "x"),
		&fs.PathError{Op: "open", Path: "/tmp/x", Err: syscall.EACCES},
		fmt.Errorf("decode: %w", &meta.MalformedError{Key: "k", Err: errors.New("x")}),
		errors.New("something new"),
		// What the local backend returns on a full disk (storage tests
		// make one for real).
		&storage.OpError{Op: "write", Err: &fs.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC}},
	} {
		classified[classify(err)] = true
	}
	// What a real S3-compatible server makes of a denied write and a
	// missing bucket, through our storage layer.
	srv := s3test.Start(t, "bk")
	fast := storage.WithRetryPolicy(storage.RetryPolicy{MaxAttempts: 1, AttemptTimeout: 2e9})
	ctx := context.Background()
	for _, c := range []struct {
		bucket string
		fault  int
	}{{"bk", 403}, {"missing", 0}} {
		s, err := storage.OpenURL(ctx, srv.URL(c.bucket, "p"), fast)
		if err != nil {
			t.Fatal(err)
		}
		if c.fault != 0 {
			srv.SetFault(s3test.Fault{Status: c.fault, Remaining: -1})
		}
		classified[classify(s.WriteFile(ctx, "x", []byte("x")))] = true
		srv.ClearFault()
		s.Close()
	}
	var src strings.Builder
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "errs" {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			src.Write(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	names := map[Code]string{}
	for _, line := range strings.Split(readFile(t, "errs.go"), "\n") {
		// `	CodeX Code = "KV:LogBackup:X"`
		if f := strings.Fields(line); len(f) == 4 && f[1] == "Code" && f[2] == "=" && strings.HasPrefix(f[0], "Code") {
			names[Code(strings.Trim(f[3], `"`))] = f[0]
		}
	}
	for _, c := range Codes() {
		if TiKVCode(c) == "" {
			t.Errorf("%s has no TiKV counterpart in tikvCodes", c)
		}
		if classified[c] {
			continue
		}
		if name := names[c]; name == "" || !strings.Contains(src.String(), "errs."+name) {
			t.Errorf("no path produces %s: Classify never returns it and no agent code raises errs.%s", c, name)
		}
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
