package azuretest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	azcontainer "github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
)

func client(t *testing.T, s *Server, key string) *azcontainer.Client {
	t.Helper()
	cred, err := azblob.NewSharedKeyCredential(Account, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := azcontainer.NewClientWithSharedKeyCredential(s.Endpoint()+"/ctr", cred,
		&azcontainer.ClientOptions{ClientOptions: azcore.ClientOptions{Retry: policy.RetryOptions{MaxRetries: -1}}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func status(err error) int {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

// TestFakeSpeaksTheSDK drives the fake with the azblob SDK itself: block
// uploads (UploadStream stages blocks and commits a list), ranges, list
// paging, deletes, Shared Key checked, faults and recorded headers.
func TestFakeSpeaksTheSDK(t *testing.T) {
	s := Start(t, "ctr")
	ctx := context.Background()
	c := client(t, s, AccountKey)
	data := bytes.Repeat([]byte("abcdefgh"), 3<<17) // 3 MiB: three 1 MiB blocks
	if _, err := c.NewBlockBlobClient("dir/big").UploadStream(ctx, bytes.NewReader(data),
		&azblob.UploadStreamOptions{BlockSize: 1 << 20, Concurrency: 2}); err != nil {
		t.Fatal(err)
	}
	ops := map[string]int{}
	for _, r := range s.Requests() {
		ops[r.Op]++
	}
	if ops["PutBlock"] != 3 || ops["PutBlockList"] != 1 {
		t.Fatalf("UploadStream made %v", ops)
	}
	if b, ok := s.Blob("ctr", "dir/big"); !ok || !bytes.Equal(b.Data, data) {
		t.Fatal("committed blob differs")
	}
	resp, err := c.NewBlobClient("dir/big").DownloadStream(ctx, &blob.DownloadStreamOptions{Range: blob.HTTPRange{Offset: 5, Count: 10}})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(got, data[5:15]) || *resp.ContentRange != fmt.Sprintf("bytes 5-14/%d", len(data)) {
		t.Fatalf("range: %q, %s", got, *resp.ContentRange)
	}
	if _, err := c.NewBlobClient("dir/big").DownloadStream(ctx, &blob.DownloadStreamOptions{Range: blob.HTTPRange{Offset: int64(len(data)), Count: 1}}); status(err) != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("range past the end: %v", err)
	}
	for i := range 5 {
		if _, err := c.NewBlockBlobClient(fmt.Sprintf("dir/%d", i)).UploadBuffer(ctx, []byte{byte(i)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	pages := 0
	max := int32(2)
	pager := c.NewListBlobsFlatPager(&azcontainer.ListBlobsFlatOptions{Prefix: ptr("dir/"), MaxResults: &max})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, b := range page.Segment.BlobItems {
			names = append(names, *b.Name)
		}
	}
	if fmt.Sprint(names) != "[dir/0 dir/1 dir/2 dir/3 dir/4 dir/big]" || pages != 3 {
		t.Fatalf("listed %v in %d pages", names, pages)
	}
	if _, err := c.NewBlobClient("dir/0").Delete(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.NewBlobClient("dir/0").GetProperties(ctx, nil); status(err) != http.StatusNotFound {
		t.Fatalf("deleted blob: %v", err)
	}
	// A wrong key is refused by the signature check.
	wrong := client(t, s, "d3Jvbmcga2V5")
	if _, err := wrong.NewBlobClient("dir/1").GetProperties(ctx, nil); status(err) != http.StatusForbidden {
		t.Fatalf("wrong key: %v", err)
	}
	// Faults: by method and count, then spent.
	s.SetFault(Fault{Status: 503, Method: http.MethodPut, Remaining: 1})
	if _, err := c.NewBlockBlobClient("f").UploadBuffer(ctx, []byte("x"), nil); status(err) != 503 {
		t.Fatalf("faulted put: %v", err)
	}
	if _, err := c.NewBlockBlobClient("f").UploadBuffer(ctx, []byte("x"), nil); err != nil {
		t.Fatalf("fault not spent: %v", err)
	}
	last := s.Requests()[len(s.Requests())-1]
	if last.Op != "PutBlob" || last.Header.Get("x-ms-blob-type") != "BlockBlob" || last.Faulted {
		t.Fatalf("recorded %+v", last)
	}
	if s.Faults() != 1 {
		t.Fatalf("%d faults", s.Faults())
	}
}

func ptr[T any](v T) *T { return &v }
