package s3driver_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"logbackup/storage/internal/awsauth"
	"logbackup/storage/internal/s3driver"
	"logbackup/tests/realstorage"
)

// static is a fixed set of keys.
type static awsauth.Credentials

func (s static) Retrieve(context.Context) (awsauth.Credentials, error) {
	return awsauth.Credentials(s), nil
}

// exchange is one request and the answer's status and headers.
type exchange struct {
	method, url string
	status      int
	reqHeader   http.Header
	respHeader  http.Header
}

// recorder is a transport that keeps every exchange.
type recorder struct {
	mu  sync.Mutex
	log []exchange
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(req)
	e := exchange{method: req.Method, url: req.URL.String(), reqHeader: req.Header.Clone()}
	if err == nil {
		e.status, e.respHeader = resp.StatusCode, resp.Header.Clone()
	}
	r.mu.Lock()
	r.log = append(r.log, e)
	r.mu.Unlock()
	return resp, err
}

// take returns the exchanges since the last take.
func (r *recorder) take() []exchange {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.log
	r.log = nil
	return out
}

type minio struct {
	*realstorage.MinIO
	bucket string
}

func startMinIO(t *testing.T, env ...string) minio {
	t.Helper()
	m := realstorage.StartMinIO(t, env...)
	name := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	m.CreateBucket(t, name)
	return minio{m, name}
}

// open opens the test's bucket with opts (endpoint, region, path style and
// the root keys filled in when unset).
func (m minio) open(t *testing.T, opts s3driver.Options) (*blob.Bucket, *recorder) {
	t.Helper()
	rec := &recorder{}
	if opts.Endpoint == "" {
		opts.Endpoint = m.Endpoint()
	}
	opts.Region, opts.PathStyle = realstorage.MinIORegion, true
	if opts.Credentials == nil {
		opts.Credentials = static{AccessKeyID: m.RootUser, SecretAccessKey: m.RootPassword, Source: "test"}
	}
	b, err := s3driver.OpenBucket(&http.Client{Transport: rec}, m.bucket, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, rec
}

// sdk is the AWS SDK's client for the same bucket: a second, independent
// reader of what the driver wrote.
func (m minio) sdk() *s3.Client {
	return s3.New(s3.Options{Region: realstorage.MinIORegion, BaseEndpoint: aws.String(m.Endpoint()), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(m.RootUser, m.RootPassword, "")})
}

func random(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestMinIOObjects: writes, reads (whole, ranges, past the end), lists
// (prefix, delimiter, pages) and deletes against a real MinIO, which
// checks every signature; keys with characters that need escaping in a
// path, a query and XML list as themselves.
func TestMinIOObjects(t *testing.T) {
	m := startMinIO(t)
	b, _ := m.open(t, s3driver.Options{})
	ctx := ctxT(t)
	keys := []string{"a/1", "a/2", "a/b/3", "a/sp ace+plus%pct", "a/ünï~!*'()&=;:@,$", "c"}
	for i, k := range keys {
		if err := b.WriteAll(ctx, k, []byte(strings.Repeat(string(rune('a'+i)), 10+i)), nil); err != nil {
			t.Fatalf("write %q: %v", k, err)
		}
	}
	for i, k := range keys {
		got, err := b.ReadAll(ctx, k)
		if want := strings.Repeat(string(rune('a'+i)), 10+i); err != nil || string(got) != want {
			t.Fatalf("read %q: %q, %v", k, got, err)
		}
	}
	// Ranges: inside, to the end, empty, past the end.
	data := random(t, 1000)
	if err := b.WriteAll(ctx, "r", data, nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ off, n int64 }{{0, 10}, {990, -1}, {500, 100}, {999, 5}, {0, -1}, {10, 0}} {
		r, err := b.NewRangeReader(ctx, "r", c.off, c.n, nil)
		if err != nil {
			t.Fatalf("range %v: %v", c, err)
		}
		got, err := io.ReadAll(r)
		r.Close()
		end := int64(len(data))
		if c.n >= 0 {
			end = min(end, c.off+c.n)
		}
		if err != nil || !bytes.Equal(got, data[c.off:end]) {
			t.Fatalf("range %v: %d bytes, %v", c, len(got), err)
		}
		if r.Size() != int64(len(data)) {
			t.Fatalf("range %v: size %d", c, r.Size())
		}
	}
	if _, err := b.NewRangeReader(ctx, "r", 1000, 10, nil); gcerrors.Code(err) != gcerrors.InvalidArgument {
		t.Fatalf("range past the end: %v", err)
	}
	// Listing in pages of 2 with a delimiter.
	var got []string
	var tok = blob.FirstPageToken
	for pages := 0; tok != nil; pages++ {
		if pages > 10 {
			t.Fatal("listing does not end")
		}
		var page []*blob.ListObject
		var err error
		page, tok, err = b.ListPage(ctx, tok, 2, &blob.ListOptions{Prefix: "a/", Delimiter: "/"})
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page {
			if o.IsDir {
				got = append(got, o.Key+" (dir)")
			} else {
				got = append(got, o.Key)
			}
		}
	}
	want := []string{"a/1", "a/2", "a/b/ (dir)", "a/sp ace+plus%pct", "a/ünï~!*'()&=;:@,$"}
	sort.Strings(got)
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("listed %q, want %q", got, want)
	}
	// Attributes, delete, and a missing key.
	a, err := b.Attributes(ctx, "r")
	if err != nil || a.Size != 1000 || a.ModTime.IsZero() || len(a.MD5) != 16 {
		t.Fatalf("attributes: %+v, %v", a, err)
	}
	for _, k := range keys {
		if err := b.Delete(ctx, k); err != nil {
			t.Fatalf("delete %q: %v", k, err)
		}
	}
	if _, err := b.ReadAll(ctx, "a/1"); gcerrors.Code(err) != gcerrors.NotFound {
		t.Fatalf("read after delete: %v", err)
	}
	var se *s3driver.Error
	if _, err := b.ReadAll(ctx, "a/1"); !errors.As(err, &se) || se.Code != "NoSuchKey" || se.Status != 404 {
		t.Fatalf("read of a missing key: %v", err)
	}
	if ok, err := b.Exists(ctx, "a/1"); ok || err != nil {
		t.Fatalf("exists after delete: %v, %v", ok, err)
	}
}

// TestMinIOMultipart: an object larger than what a writer sends as one
// PUT goes up as a multipart upload with parts in parallel, and reads
// back whole, from the driver and from the AWS SDK. A whole object
// written at once (no part size asked for) is one PUT up to two default
// parts.
func TestMinIOMultipart(t *testing.T) {
	m := startMinIO(t)
	b, rec := m.open(t, s3driver.Options{})
	ctx := ctxT(t)
	for _, c := range []struct {
		name       string
		size, part int
		wantParts  int
		wantOnePut bool
	}{
		{"streamed, 5 MiB parts", 2*s3driver.MinPartSize + 12345, s3driver.MinPartSize, 3, false},
		{"whole, up to 16 MiB", 2 * s3driver.DefaultPartSize, 0, 0, true},
		{"whole, over 16 MiB", 2*s3driver.DefaultPartSize + 4<<20, 0, 3, false},
	} {
		data := random(t, c.size)
		w, err := b.NewWriter(ctx, "big", &blob.WriterOptions{BufferSize: c.part, MaxConcurrency: 2,
			ContentType: "application/octet-stream"})
		if err != nil {
			t.Fatal(err)
		}
		for p := data; len(p) > 0; {
			n := min(len(p), 300<<10)
			if _, err := w.Write(p[:n]); err != nil {
				t.Fatal(err)
			}
			p = p[n:]
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		var puts, parts, creates, completes int
		for _, e := range rec.take() {
			switch {
			case e.method == "POST" && strings.Contains(e.url, "uploads"):
				creates++
			case e.method == "PUT" && strings.Contains(e.url, "partNumber="):
				parts++
				// A full part waits for S3's go-ahead before its body.
				if strings.Contains(e.url, "partNumber=1&") && e.reqHeader.Get("Expect") != "100-continue" {
					t.Fatalf("%s: part 1 sent without Expect: 100-continue", c.name)
				}
			case e.method == "PUT":
				puts++
			case e.method == "POST" && strings.Contains(e.url, "uploadId="):
				completes++
			}
		}
		if c.wantOnePut && (puts != 1 || creates+parts+completes != 0) {
			t.Fatalf("%s: %d PUTs, %d creates, %d parts, %d completes; want one PUT", c.name, puts, creates, parts, completes)
		}
		if !c.wantOnePut && (creates != 1 || parts != c.wantParts || completes != 1 || puts != 0) {
			t.Fatalf("%s: %d creates, %d parts, %d completes, %d PUTs; want 1, %d, 1, 0", c.name, creates, parts, completes, puts, c.wantParts)
		}
		got, err := b.ReadAll(ctx, "big")
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: read back %d of %d bytes: %v", c.name, len(got), len(data), err)
		}
		out, err := m.sdk().GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(m.bucket), Key: aws.String("big")})
		if err != nil {
			t.Fatal(err)
		}
		sdkGot, err := io.ReadAll(out.Body)
		out.Body.Close()
		if err != nil || !bytes.Equal(sdkGot, data) {
			t.Fatalf("%s: the SDK read back %d of %d bytes: %v", c.name, len(sdkGot), len(data), err)
		}
	}
}

// TestMinIOAbandonedWriteCommitsNothing: a writer whose context is
// cancelled after a part went up commits no object and leaves no
// multipart upload behind (parts are billed until removed).
func TestMinIOAbandonedWriteCommitsNothing(t *testing.T) {
	m := startMinIO(t)
	b, _ := m.open(t, s3driver.Options{})
	ctx := ctxT(t)
	if err := b.WriteAll(ctx, "obj", []byte("old"), nil); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	w, err := b.NewWriter(wctx, "obj", &blob.WriterOptions{ContentType: "application/octet-stream", BufferSize: s3driver.MinPartSize})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(random(t, s3driver.MinPartSize+10)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := w.Close(); err == nil {
		t.Fatal("a cancelled write closed without an error")
	}
	got, err := b.ReadAll(ctx, "obj")
	if err != nil || string(got) != "old" {
		t.Fatalf("after the abandoned write: %q, %v", got, err)
	}
	ups, err := m.sdk().ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: aws.String(m.bucket)})
	if err != nil {
		t.Fatal(err)
	}
	if len(ups.Uploads) != 0 {
		t.Fatalf("%d multipart uploads left behind", len(ups.Uploads))
	}
}

// TestMinIOEncryption: sse=AES256 and sse=aws:kms with a key id reach
// the server, which encrypts the object and says so; MinIO does both with
// a KMS secret key configured.
func TestMinIOEncryption(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(random(t, 32))
	m := startMinIO(t, "MINIO_KMS_SECRET_KEY=logbackup-key:"+key)
	ctx := ctxT(t)
	for _, c := range []struct{ sse, kmsKey, want string }{
		{"AES256", "", "AES256"},
		{"aws:kms", "logbackup-key", "aws:kms"},
	} {
		b, rec := m.open(t, s3driver.Options{SSE: c.sse, KMSKeyID: c.kmsKey})
		for _, size := range []int{100, s3driver.MinPartSize + 100} {
			data := random(t, size)
			// The larger one a multipart upload: the headers go on its start.
			if err := b.WriteAll(ctx, "enc", data, &blob.WriterOptions{BufferSize: s3driver.MinPartSize}); err != nil {
				t.Fatalf("%s, %d bytes: %v", c.sse, size, err)
			}
			if got, err := b.ReadAll(ctx, "enc"); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("%s: read back: %v", c.sse, err)
			}
			rec.take()
			if _, err := b.Attributes(ctx, "enc"); err != nil {
				t.Fatal(err)
			}
			ex := rec.take()
			if got := ex[len(ex)-1].respHeader.Get("X-Amz-Server-Side-Encryption"); got != c.want {
				t.Fatalf("sse=%s, %d bytes: the object is encrypted with %q", c.sse, size, got)
			}
		}
	}
}

// TestMinIORefusals: a missing bucket, a wrong secret and temporary
// credentials without PutObject are told apart by S3's own codes, and no
// error text carries a secret.
func TestMinIORefusals(t *testing.T) {
	m := startMinIO(t)
	ctx := ctxT(t)
	check := func(what string, err error, code string, status int) {
		t.Helper()
		var se *s3driver.Error
		if !errors.As(err, &se) || se.Code != code || se.Status != status {
			t.Fatalf("%s: %v; want %d %s", what, err, status, code)
		}
		if strings.Contains(err.Error(), m.RootPassword) || strings.Contains(err.Error(), "\n") {
			t.Fatalf("%s: error text %q", what, err)
		}
	}
	nb, err := s3driver.OpenBucket(http.DefaultClient, "no-such-bucket", s3driver.Options{Endpoint: m.Endpoint(),
		Region: realstorage.MinIORegion, PathStyle: true,
		Credentials: static{AccessKeyID: m.RootUser, SecretAccessKey: m.RootPassword}})
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Close()
	check("write to a missing bucket", nb.WriteAll(ctx, "x", []byte("x"), nil), "NoSuchBucket", 404)
	_, _, err = nb.ListPage(ctx, blob.FirstPageToken, 10, nil)
	check("list a missing bucket", err, "NoSuchBucket", 404)

	wrong, _ := m.open(t, s3driver.Options{Credentials: static{AccessKeyID: m.RootUser, SecretAccessKey: "wrong-" + m.RootPassword}})
	check("a wrong secret", wrong.WriteAll(ctx, "x", []byte("x"), nil), "SignatureDoesNotMatch", 403)

	ak, sk, tok := m.NoPutCredentials(t, m.bucket)
	ro, _ := m.open(t, s3driver.Options{Credentials: static{AccessKeyID: ak, SecretAccessKey: sk, SessionToken: tok}})
	check("a put without PutObject", ro.WriteAll(ctx, "x", []byte("x"), nil), "AccessDenied", 403)
	if _, _, err := ro.ListPage(ctx, blob.FirstPageToken, 10, nil); err != nil {
		t.Fatalf("list with temporary credentials: %v", err)
	}
}
