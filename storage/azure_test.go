package storage_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"logbackup/storage"
	"logbackup/storage/storagetest"
	"logbackup/tests/azuretest"
)

// TestAzureFailedUploadIsAnError: every failed upload (server errors,
// refused connections) comes back as an error. gocloud's azureblob writer
// dereferenced a nil pipe in Close when its upload failed, killing the
// process with SIGSEGV.
//
// Hand-written fault: 500, 503, 403 and 404 answered to every upload into an existing container: Azurite
// fails no valid upload on cue (tests/realstorage covers its real 403 and 404).
func TestAzureFailedUploadIsAnError(t *testing.T) {
	srv := azuretest.Start(t, "ctr")
	ctx := context.Background()
	for _, status := range []int{500, 503, 403, 404} {
		s := open(t, srv.URL("ctr", "p"), fastRetry)
		srv.SetFault(azuretest.Fault{Status: status, Method: http.MethodPut, Remaining: -1})
		err := s.WriteFile(ctx, "obj", []byte("some bytes"))
		if err == nil {
			t.Fatalf("write through %d succeeded", status)
		}
		if _, ok := srv.Blob("ctr", "p/obj"); ok {
			t.Fatalf("failed write left an object")
		}
		if strings.Contains(err.Error(), azuretest.AccountKey) {
			t.Fatalf("error leaks the key: %v", err)
		}
	}
	srv.ClearFault()

	// Nothing listens on the endpoint: connections are refused.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := lis.Addr().String()
	lis.Close()
	u := fmt.Sprintf("azblob://ctr/p?endpoint=http://%s/%s&account-name=%s&account-key=%s", dead, azuretest.Account,
		azuretest.Account, url.QueryEscape(azuretest.AccountKey))
	s := open(t, u, fastRetry)
	err = storage.CheckWritable(ctx, s)
	if err == nil || !storage.Retryable(err) {
		t.Fatalf("refused connection: %v (retryable %v)", err, storage.Retryable(err))
	}
	var op *storage.OpError
	if !errors.As(err, &op) || op.Op != "write" {
		t.Fatalf("refused connection: not a write OpError: %v", err)
	}
}

// TestAzureUploadPaths: small objects are one Put Blob, large ones Put
// Block and one Put Block List; both read back whole, and names with the
// characters gocloud escapes land where its reader looks.
//
// Hand-written fault: which REST operations an upload sends (Put Blob, Put Block, Put Block List) and the
// escaped names they carry: Azurite serves them but does not report them.
func TestAzureUploadPaths(t *testing.T) {
	srv := azuretest.Start(t, "ctr")
	s := open(t, srv.URL("ctr", "p"), bigRetry)
	ctx := context.Background()
	ops := func() map[string]int {
		m := map[string]int{}
		for _, r := range srv.Requests() {
			m[r.Op]++
		}
		srv.ResetRequests()
		return m
	}
	small := []byte("small object")
	mustWriteT(t, s, "a/small", small)
	if m := ops(); m["PutBlob"] != 1 || m["PutBlock"] != 0 {
		t.Fatalf("small write made %v", m)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), (17<<20)/16+3)
	mustWriteT(t, s, "a/big", big)
	if m := ops(); m["PutBlob"] != 0 || m["PutBlock"] != 3 || m["PutBlockList"] != 1 {
		t.Fatalf("17 MiB write made %v, want 3 Put Block and 1 Put Block List", m)
	}
	mustRead(t, s, "a/big", big)
	odd := `odd #1 100% "q"? back\slash`
	mustWriteT(t, s, odd, small)
	mustRead(t, s, odd, small)
	var names []string
	if err := s.List(ctx, "", func(o storage.ObjectInfo) error { names = append(names, o.Name); return nil }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(names) != fmt.Sprint([]string{"a/big", "a/small", odd}) {
		t.Fatalf("listed %q", names)
	}
	if err := s.WriteFile(ctx, "x__0x23__y", small); err == nil {
		t.Fatal("a name that reads back as another was accepted")
	}
}

// TestAzureRetriesAreOurs: a transient failure is retried by our loop,
// observably, and the SDK adds no attempts of its own.
//
// Hand-written fault: a 500 on the first two uploads, then 503 on all, counted per request: Azurite cannot
// fail a request on cue nor count them.
func TestAzureRetriesAreOurs(t *testing.T) {
	srv := azuretest.Start(t, "ctr")
	var log retryLog
	s := open(t, srv.URL("ctr", "p"), fastRetry, storage.WithRetryObserver(log.observe))
	srv.SetFault(azuretest.Fault{Status: 500, Method: http.MethodPut, Remaining: 2})
	mustWriteT(t, s, "obj", []byte("x"))
	if got := log.take(); got != "write#1 write#2" {
		t.Fatalf("retries observed %q", got)
	}
	if n := len(srv.Requests()); n != 3 {
		t.Fatalf("%d requests for two failures and a success", n)
	}
	srv.SetFault(azuretest.Fault{Status: 503, Remaining: -1})
	srv.ResetRequests()
	err := s.WriteFile(context.Background(), "obj", []byte("y"))
	if err == nil || !storage.Retryable(err) || !strings.Contains(err.Error(), "gave up after 4 attempts") {
		t.Fatalf("persistent 503: %v", err)
	}
	if n := len(srv.Requests()); n != 4 {
		t.Fatalf("%d requests, want the policy's 4", n)
	}
}

func mustWriteT(t *testing.T, s storage.Storage, name string, data []byte) {
	t.Helper()
	if err := s.WriteFile(context.Background(), name, data); err != nil {
		t.Fatalf("write %s: %v", name, err)
	}
}

// TestAzureStreamBlocks: a stream over 16 MiB is staged block by block
// and committed by one Put Block List; a source failing mid-stream
// commits nothing (staging stops, blocks in flight are cancelled).
//
// Hand-written fault: the order of staged blocks and the cancelled commit of a failing stream, seen per
// request; Azurite does not report its requests (the end states run on it in tests/realstorage).
func TestAzureStreamBlocks(t *testing.T) {
	srv := azuretest.Start(t, "ctr")
	s := open(t, srv.URL("ctr", "p"), bigRetry)
	ctx := context.Background()
	ops := func() map[string]int {
		m := map[string]int{}
		for _, r := range srv.Requests() {
			m[r.Op]++
		}
		srv.ResetRequests()
		return m
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), (17<<20)/16+3)
	src := &storagetest.Source{Data: big}
	if err := s.WriteFrom(ctx, "a/big", int64(len(big)), src.Open); err != nil {
		t.Fatal(err)
	}
	if m := ops(); m["PutBlob"] != 0 || m["PutBlock"] != 3 || m["PutBlockList"] != 1 {
		t.Fatalf("17 MiB stream made %v, want 3 Put Block and 1 Put Block List", m)
	}
	mustRead(t, s, "a/big", big)

	gone := errors.New("temp file unreadable")
	src = &storagetest.Source{Data: big, FailAt: 12 << 20, FailErr: gone, FailOpens: 1}
	if err := s.WriteFrom(ctx, "a/broken", int64(len(big)), src.Open); !errors.Is(err, gone) {
		t.Fatalf("source failing at 12 MiB: %v", err)
	}
	if m := ops(); m["PutBlockList"] != 0 {
		t.Fatalf("failed stream made %v, want no Put Block List", m)
	}
	if _, ok := srv.Blob("ctr", "p/a/broken"); ok {
		t.Fatal("a failed stream left a blob")
	}
}
