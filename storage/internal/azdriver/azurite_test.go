package azdriver_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	azblobblob "github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"logbackup/storage/internal/azdriver"
	"logbackup/tests/azuretest"
	"logbackup/tests/realstorage"
)

// containerClient is a client of container ctr on Azurite, built as the
// storage builds it: the account key and no SDK retries.
func containerClient(t *testing.T, endpoint, ctr string) *container.Client {
	t.Helper()
	return clientWithKey(t, endpoint, ctr, realstorage.AzuriteAccount, realstorage.AzuriteKey)
}

func clientWithKey(t *testing.T, endpoint, ctr, account, key string) *container.Client {
	t.Helper()
	cred, err := azblob.NewSharedKeyCredential(account, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := container.NewClientWithSharedKeyCredential(endpoint+"/"+ctr, cred, &container.ClientOptions{
		ClientOptions: azcore.ClientOptions{Retry: policy.RetryOptions{MaxRetries: -1}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// fixture is one container on a shared Azurite, its client and the
// driver's bucket over it.
type fixture struct {
	client *container.Client
	bucket *blob.Bucket
}

func newFixture(t *testing.T, a *realstorage.Azurite, opts azdriver.Options) *fixture {
	t.Helper()
	ctr := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	a.CreateContainer(t, ctr)
	return openFixture(t, containerClient(t, a.Endpoint(), ctr), opts)
}

func openFixture(t *testing.T, c *container.Client, opts azdriver.Options) *fixture {
	t.Helper()
	b, err := azdriver.OpenBucket(c, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return &fixture{client: c, bucket: b}
}

// put uploads data as the storage does (the driver writes nothing), under
// the driver's escaping of key.
func (f *fixture) put(t *testing.T, key string, data []byte, cpk *azblobblob.CPKInfo) {
	t.Helper()
	_, err := f.client.NewBlockBlobClient(azdriver.EscapeKey(key)).Upload(context.Background(),
		streaming.NopCloser(bytes.NewReader(data)), &blockblob.UploadOptions{CPKInfo: cpk})
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

func TestAzurite(t *testing.T) {
	a := realstorage.StartAzurite(t)
	t.Run("ListPagesWithDelimiter", func(t *testing.T) { testListPages(t, a) })
	t.Run("Ranges", func(t *testing.T) { testRanges(t, a) })
	t.Run("NotFound", func(t *testing.T) { testNotFound(t, a) })
	t.Run("EscapedNames", func(t *testing.T) { testEscapedNames(t, a) })
	t.Run("CustomerKey", func(t *testing.T) { testCustomerKeyAzurite(t, a) })
	t.Run("Unimplemented", func(t *testing.T) { testUnimplemented(t, a) })
	t.Run("BodyBoundedByContext", func(t *testing.T) { testBodyContext(t, a) })
}

// listAll reads every page of size n and returns the keys ("/" after a
// prefix) and the number of pages.
func listAll(t *testing.T, b *blob.Bucket, prefix, delim string, n int) (string, int) {
	t.Helper()
	var keys []string
	pages := 0
	for tok := blob.FirstPageToken; len(tok) > 0; {
		objs, next, err := b.ListPage(context.Background(), tok, n, &blob.ListOptions{Prefix: prefix, Delimiter: delim})
		if err != nil {
			t.Fatalf("list %q/%q page %d: %v", prefix, delim, pages, err)
		}
		if len(objs) > n {
			t.Fatalf("a page of %d holds %d", n, len(objs))
		}
		pages++
		for _, o := range objs {
			k := o.Key
			if o.IsDir != strings.HasSuffix(k, "/") {
				t.Fatalf("%q: IsDir %v", k, o.IsDir)
			}
			if !o.IsDir {
				k = fmt.Sprintf("%s(%d)", k, o.Size)
			}
			keys = append(keys, k)
		}
		tok = next
	}
	return strings.Join(keys, " "), pages
}

// testListPages: prefixes and blobs merged in key order over pages, with
// and without a delimiter, with and without a prefix.
func testListPages(t *testing.T, a *realstorage.Azurite) {
	f := newFixture(t, a, azdriver.Options{})
	for _, k := range []string{"a/1", "a/2", "b", "c/x/1", "c/x/2", "c/y", "d", "e/1"} {
		f.put(t, k, []byte(k), nil)
	}
	for _, c := range []struct {
		prefix, delim string
		n             int
		want          string
		pages         int
	}{
		{"", "/", 2, "a/ b(1) c/ d(1) e/", 3},
		{"", "/", 1, "a/ b(1) c/ d(1) e/", 5},
		{"", "/", 1000, "a/ b(1) c/ d(1) e/", 1},
		{"c/", "/", 1, "c/x/ c/y(3)", 2},
		{"c/x/", "/", 1, "c/x/1(5) c/x/2(5)", 2},
		{"", "", 3, "a/1(3) a/2(3) b(1) c/x/1(5) c/x/2(5) c/y(3) d(1) e/1(3)", 3},
		{"c", "", 2, "c/x/1(5) c/x/2(5) c/y(3)", 2},
		{"nothing/", "/", 2, "", 1},
	} {
		got, pages := listAll(t, f.bucket, c.prefix, c.delim, c.n)
		if got != c.want || pages != c.pages {
			t.Errorf("list prefix %q delimiter %q by %d: %q in %d pages; want %q in %d", c.prefix, c.delim, c.n, got, pages, c.want, c.pages)
		}
	}
}

// testRanges: the bytes asked for, fewer at the end, Azure's 416 at or
// past it, nothing for a zero length, and the blob's whole size each time.
func testRanges(t *testing.T, a *realstorage.Azurite) {
	f := newFixture(t, a, azdriver.Options{})
	f.put(t, "r", []byte("0123456789"), nil)
	f.put(t, "e", nil, nil)
	ctx := context.Background()
	for _, c := range []struct {
		key       string
		off, n    int64
		want      string
		size      int64
		status416 bool // Azure's 416; with want "" and size 10, an empty answer also does
	}{
		{"r", 0, -1, "0123456789", 10, false},
		{"r", 0, 3, "012", 10, false},
		{"r", 4, 2, "45", 10, false},
		{"r", 7, -1, "789", 10, false},
		{"r", 8, 10, "89", 10, false},
		{"r", 3, 0, "", 10, false},
		{"r", 25, 0, "", 10, false}, // zero length: properties only, even past the end
		// At the end: Azure answers 416, Azurite 3.37 no bytes; the
		// storage reads either as no bytes.
		{"r", 10, 5, "", 10, true},
		{"r", 10, -1, "", 10, true},
		{"r", 11, 5, "", 0, true},
		{"r", 25, 5, "", 0, true},
		{"r", 25, -1, "", 0, true},
		{"e", 0, -1, "", 0, false},
	} {
		r, err := f.bucket.NewRangeReader(ctx, c.key, c.off, c.n, nil)
		if c.status416 && err == nil && c.size != 0 {
			got, err := io.ReadAll(r)
			r.Close()
			if err != nil || len(got) != 0 || r.Size() != c.size {
				t.Errorf("range %s %d+%d at the end: %q (size %d), %v; want a 416 or no bytes", c.key, c.off, c.n, got, r.Size(), err)
			}
			continue
		}
		if c.status416 {
			var re *azcore.ResponseError
			if !errors.As(err, &re) || re.StatusCode != http.StatusRequestedRangeNotSatisfiable {
				t.Errorf("range %s %d+%d: %v, want a 416", c.key, c.off, c.n, err)
			}
			if r != nil {
				r.Close()
			}
			continue
		}
		if err != nil {
			t.Errorf("range %s %d+%d: %v", c.key, c.off, c.n, err)
			continue
		}
		got, err := io.ReadAll(r)
		r.Close()
		if err != nil || string(got) != c.want || r.Size() != c.size {
			t.Errorf("range %s %d+%d: %q (size %d), %v; want %q (size %d)", c.key, c.off, c.n, got, r.Size(), err, c.want, c.size)
		}
	}
}

// testNotFound: a missing blob is NotFound for every call, and a missing
// container too, with ContainerNotFound reachable for the storage.
func testNotFound(t *testing.T, a *realstorage.Azurite) {
	f := newFixture(t, a, azdriver.Options{})
	ctx := context.Background()
	calls := map[string]func(b *blob.Bucket) error{
		"read":       func(b *blob.Bucket) error { _, err := b.NewRangeReader(ctx, "nope", 0, -1, nil); return err },
		"range":      func(b *blob.Bucket) error { _, err := b.NewRangeReader(ctx, "nope", 2, 3, nil); return err },
		"zero range": func(b *blob.Bucket) error { _, err := b.NewRangeReader(ctx, "nope", 0, 0, nil); return err },
		"attributes": func(b *blob.Bucket) error { _, err := b.Attributes(ctx, "nope"); return err },
		"delete":     func(b *blob.Bucket) error { return b.Delete(ctx, "nope") },
	}
	for name, call := range calls {
		err := call(f.bucket)
		var re *azcore.ResponseError
		if gcerrors.Code(err) != gcerrors.NotFound || !f.bucket.ErrorAs(err, &re) || re.ErrorCode != string(bloberror.BlobNotFound) {
			t.Errorf("%s of a missing blob: %v (code %v)", name, err, gcerrors.Code(err))
		}
	}
	if ok, err := f.bucket.Exists(ctx, "nope"); ok || err != nil {
		t.Errorf("Exists of a missing blob: %v, %v", ok, err)
	}
	b, err := azdriver.OpenBucket(containerClient(t, a.Endpoint(), "nosuchcontainer"), azdriver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	calls["list"] = func(b *blob.Bucket) error {
		_, _, err := b.ListPage(ctx, blob.FirstPageToken, 10, nil)
		return err
	}
	for name, call := range calls {
		err := call(b)
		if gcerrors.Code(err) != gcerrors.NotFound || !bloberror.HasCode(err, bloberror.ContainerNotFound) {
			t.Errorf("%s in a missing container: %v (code %v)", name, err, gcerrors.Code(err))
		}
	}
}

// testEscapedNames: what the storage uploads under EscapeKey reads back,
// lists and deletes under the plain name; a prefix is escaped alike.
func testEscapedNames(t *testing.T, a *realstorage.Azurite) {
	f := newFixture(t, a, azdriver.Options{})
	ctx := context.Background()
	names := []string{`odd #1 100% "q"? back\slash`, "dir?/x", "dir?/y"}
	for _, n := range names {
		f.put(t, n, []byte(n), nil)
		got, err := f.bucket.ReadAll(ctx, n)
		if err != nil || string(got) != n {
			t.Fatalf("read %q: %q, %v", n, got, err)
		}
	}
	if got, _ := listAll(t, f.bucket, "", "/", 10); got != `dir?/ odd #1 100% "q"? back\slash(27)` {
		t.Errorf("listed %s", got)
	}
	if got, _ := listAll(t, f.bucket, "dir?/", "", 10); got != "dir?/x(6) dir?/y(6)" {
		t.Errorf("listed %s", got)
	}
	if err := f.bucket.Delete(ctx, names[0]); err != nil {
		t.Fatal(err)
	}
	if ok, err := f.bucket.Exists(ctx, names[0]); ok || err != nil {
		t.Fatalf("after delete: %v, %v", ok, err)
	}
}

func cpkInfo(key string) *azblobblob.CPKInfo {
	k := base64.StdEncoding.EncodeToString([]byte(key))
	sum := sha256.Sum256([]byte(key))
	h := base64.StdEncoding.EncodeToString(sum[:])
	alg := azblobblob.EncryptionAlgorithmTypeAES256
	return &azblobblob.CPKInfo{EncryptionKey: &k, EncryptionKeySHA256: &h, EncryptionAlgorithm: &alg}
}

// testCustomerKeyAzurite: Azurite 3.37 does not take customer-provided
// keys (strict mode answers 500 FeatureNotSupported to the key's headers;
// loose mode would ignore them), so it is tried and skipped with what
// Azurite said. TestCustomerKey runs the same against the hand-written
// fake, which enforces the key as Azure does.
func testCustomerKeyAzurite(t *testing.T, a *realstorage.Azurite) {
	key := cpkInfo("0123456789abcdef0123456789ABCDEF")
	f := newFixture(t, a, azdriver.Options{CPK: key})
	_, err := f.client.NewBlockBlobClient("k").Upload(context.Background(),
		streaming.NopCloser(strings.NewReader("x")), &blockblob.UploadOptions{CPKInfo: key})
	if bloberror.HasCode(err, "FeatureNotSupported") {
		t.Skipf("Azurite does not support customer-provided keys: %s", firstLine(err))
	}
	if err != nil {
		t.Fatal(err)
	}
	testCustomerKeyReads(t, f, key)
}

// TestCustomerKey: against the fake, which refuses a read of a blob
// written with a key without that key (409) or with another (403).
func TestCustomerKey(t *testing.T) {
	srv := azuretest.Start(t, "ctr")
	key := cpkInfo("0123456789abcdef0123456789ABCDEF")
	c := clientWithKey(t, srv.Endpoint(), "ctr", azuretest.Account, azuretest.AccountKey)
	testCustomerKeyReads(t, openFixture(t, c, azdriver.Options{CPK: key}), key)
	ctx := context.Background()
	for what, want := range map[string]struct {
		opts   azdriver.Options
		status int
	}{
		"no key":      {azdriver.Options{}, http.StatusConflict},
		"another key": {azdriver.Options{CPK: cpkInfo(strings.Repeat("x", 32))}, http.StatusForbidden},
	} {
		b, err := azdriver.OpenBucket(c, want.opts)
		if err != nil {
			t.Fatal(err)
		}
		for op, err := range map[string]error{
			"read":  func() error { _, err := b.ReadAll(ctx, "k"); return err }(),
			"range": func() error { _, err := b.NewRangeReader(ctx, "k", 1, 0, nil); return err }(),
		} {
			var re *azcore.ResponseError
			if !errors.As(err, &re) || re.StatusCode != want.status {
				t.Errorf("%s with %s: %v, want a %d", op, what, err, want.status)
			}
		}
		b.Close()
	}
}

// testCustomerKeyReads: a blob written with key reads back whole, ranged
// and by its properties through a driver given the key.
func testCustomerKeyReads(t *testing.T, f *fixture, key *azblobblob.CPKInfo) {
	t.Helper()
	ctx := context.Background()
	data := []byte("written with a customer-provided key")
	f.put(t, "k", data, key)
	if got, err := f.bucket.ReadAll(ctx, "k"); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read with the key: %q, %v", got, err)
	}
	r, err := f.bucket.NewRangeReader(ctx, "k", 8, 4, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || string(got) != "with" {
		t.Fatalf("range with the key: %q, %v", got, err)
	}
	if attrs, err := f.bucket.Attributes(ctx, "k"); err != nil || attrs.Size != int64(len(data)) {
		t.Fatalf("properties with the key: %+v, %v", attrs, err)
	}
}

// firstLine is the SDK error's RESPONSE line, its gist.
func firstLine(err error) string {
	for _, l := range strings.Split(err.Error(), "\n") {
		if strings.Contains(l, "RESPONSE") {
			return strings.TrimSpace(l)
		}
	}
	return err.Error()
}

// testUnimplemented: what the driver does not do says so, and is no
// retryable failure.
func testUnimplemented(t *testing.T, a *realstorage.Azurite) {
	f := newFixture(t, a, azdriver.Options{})
	ctx := context.Background()
	if err := f.bucket.WriteAll(ctx, "w", []byte("x"), nil); gcerrors.Code(err) != gcerrors.Unimplemented {
		t.Errorf("write: %v", err)
	}
	if err := f.bucket.Copy(ctx, "dst", "src", nil); gcerrors.Code(err) != gcerrors.Unimplemented {
		t.Errorf("copy: %v", err)
	}
	if _, err := f.bucket.SignedURL(ctx, "k", nil); gcerrors.Code(err) != gcerrors.Unimplemented {
		t.Errorf("signed URL: %v", err)
	}
	if names, _ := listAll(t, f.bucket, "", "", 10); names != "" {
		t.Errorf("left %s", names)
	}
}

// testBodyContext: a download's body is read under the context the read
// was opened with; cancelling it ends the read.
func testBodyContext(t *testing.T, a *realstorage.Azurite) {
	f := newFixture(t, a, azdriver.Options{})
	big := bytes.Repeat([]byte("x"), 32<<20)
	f.put(t, "big", big, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := f.bucket.NewReader(ctx, "big", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.ReadFull(r, make([]byte, 1024)); err != nil {
		t.Fatal(err)
	}
	cancel()
	n, err := io.Copy(io.Discard, r)
	if err == nil {
		t.Fatalf("read %d more bytes after the cancel, no error", n)
	}
	t.Logf("after the cancel: %d more bytes, %v", n, err)
}

// TestUnresolvableHostIsNotNotFound: a host that does not resolve (a
// misspelt account, a DNS outage) is not a missing blob. gocloud's driver
// said NotFound, which the storage turns into ErrNotExist on a read.
func TestUnresolvableHostIsNotNotFound(t *testing.T) {
	c := clientWithKey(t, "http://nosuchaccount.invalid/acct", "ctr", realstorage.AzuriteAccount, realstorage.AzuriteKey)
	b, err := azdriver.OpenBucket(c, azdriver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = b.ReadAll(ctx, "k")
	if err == nil || gcerrors.Code(err) == gcerrors.NotFound {
		t.Fatalf("read through a host that does not resolve: %v (code %v)", err, gcerrors.Code(err))
	}
	t.Logf("%v (code %v)", err, gcerrors.Code(err))
}
