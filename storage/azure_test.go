package storage_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"

	"logbackup/storage"
	"logbackup/storage/storagetest"
	"logbackup/tests/azuretest"
)

func TestConformanceAzure(t *testing.T) {
	srv := azuretest.Start(t)
	n := 0
	storagetest.Run(t, func(t *testing.T) storage.Storage {
		n++
		ctr := fmt.Sprintf("ctr%d", n)
		srv.CreateContainer(ctr)
		return open(t, srv.URL(ctr, "log/prefix"))
	})
}

// TestAzureFailedUploadIsAnError: every failed upload (server errors,
// refused connections) comes back as an error. gocloud's azureblob writer
// dereferenced a nil pipe in Close when its upload failed, killing the
// process with SIGSEGV.
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
	u := strings.Replace(srv.URL("ctr", "p"), strings.TrimPrefix(srv.Endpoint(), "http://"), dead+"/"+azuretest.Account, 1)
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
