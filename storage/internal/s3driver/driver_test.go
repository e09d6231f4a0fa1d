package s3driver

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"gocloud.dev/blob/driver"
	"gocloud.dev/gcerrors"
)

// TestAddressing: path style puts the bucket in the path; virtual hosting
// puts it in the host name unless it cannot be one (dots under TLS, not a
// DNS label), as the AWS SDK decides.
func TestAddressing(t *testing.T) {
	for _, c := range []struct {
		endpoint, bucket string
		path             bool
		wantObj, wantLs  string
	}{
		{"http://127.0.0.1:9000", "bk", true, "http://127.0.0.1:9000/bk/a/b%20c", "http://127.0.0.1:9000/bk?list-type=2"},
		{"", "bk1", false, "https://bk1.s3.us-west-2.amazonaws.com/a/b%20c", "https://bk1.s3.us-west-2.amazonaws.com/?list-type=2"},
		{"", "my.bucket", false, "https://s3.us-west-2.amazonaws.com/my.bucket/a/b%20c", "https://s3.us-west-2.amazonaws.com/my.bucket?list-type=2"},
		{"http://minio:9000/base/", "my.bucket", false, "http://my.bucket.minio:9000/base/a/b%20c", "http://my.bucket.minio:9000/base/?list-type=2"},
		{"", "Upper", false, "https://s3.us-west-2.amazonaws.com/Upper/a/b%20c", "https://s3.us-west-2.amazonaws.com/Upper?list-type=2"},
	} {
		b, err := newBucket(http.DefaultClient, c.bucket, Options{Endpoint: c.endpoint, Region: "us-west-2", PathStyle: c.path})
		if err != nil {
			t.Fatal(err)
		}
		if got := b.objectURL("a/b c", nil).String(); got != c.wantObj {
			t.Errorf("%s %s: object URL %s, want %s", c.endpoint, c.bucket, got, c.wantObj)
		}
		if got := b.bucketURL(url.Values{"list-type": {"2"}}).String(); got != c.wantLs {
			t.Errorf("%s %s: bucket URL %s, want %s", c.endpoint, c.bucket, got, c.wantLs)
		}
	}
	if got := DefaultEndpoint("cn-north-1"); got != "https://s3.cn-north-1.amazonaws.com.cn" {
		t.Errorf("China endpoint %s", got)
	}
	for _, ep := range []string{"ftp://h", "h:9000", "://"} {
		if _, err := newBucket(http.DefaultClient, "bk", Options{Endpoint: ep}); err == nil {
			t.Errorf("endpoint %q accepted", ep)
		}
	}
}

// TestCompleteAnswered200WithError: S3 may answer CompleteMultipartUpload
// 200 and put the failure in the body; the write must fail (and abort),
// not report an object that does not exist. Hand-written: no server
// fails a completion on cue.
func TestCompleteAnswered200WithError(t *testing.T) {
	var aborted bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		_, _ = io.Copy(io.Discard, r.Body)
		switch {
		case r.Method == "POST" && q.Has("uploads"):
			_, _ = io.WriteString(w, `<InitiateMultipartUploadResult><UploadId>u1</UploadId></InitiateMultipartUploadResult>`)
		case r.Method == "PUT" && q.Get("uploadId") == "u1":
			w.Header().Set("ETag", `"e"`)
		case r.Method == "POST" && q.Get("uploadId") == "u1":
			_, _ = io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+
				`<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>`)
		case r.Method == "DELETE" && q.Get("uploadId") == "u1":
			aborted = true
			w.WriteHeader(http.StatusNoContent)
		default:
			http.Error(w, "unexpected", http.StatusBadRequest)
		}
	}))
	defer srv.Close()
	b, err := newBucket(srv.Client(), "bk", Options{Endpoint: srv.URL, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	w, err := b.NewTypedWriter(context.Background(), "k", "application/octet-stream", &driver.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, singlePutParts*DefaultPartSize+1)); err != nil {
		t.Fatal(err)
	}
	err = w.Close()
	var se *Error
	if !errors.As(err, &se) || se.Code != "InternalError" || se.Status != 500 || errorCode(err) != gcerrors.Internal {
		t.Fatalf("close: %v", err)
	}
	if !aborted {
		t.Fatal("the failed upload was not aborted")
	}
}

// TestSendErrors: a refused connection is a *SendError with the upload
// id left out of its text; a cancelled context stays context.Canceled.
func TestSendErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	b, err := newBucket(http.DefaultClient, "bk", Options{Endpoint: "http://" + addr, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.send(context.Background(), request{method: "PUT", u: b.objectURL("k", url.Values{"uploadId": {"SECRET-ID"}})})
	var se *SendError
	if !errors.As(err, &se) || strings.Contains(err.Error(), "SECRET-ID") {
		t.Fatalf("refused: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = b.send(ctx, request{method: "GET", u: b.objectURL("k", nil)})
	if !errors.Is(err, context.Canceled) || errors.As(err, &se) {
		t.Fatalf("cancelled: %v", err)
	}
}

// TestErrorDocuments: S3's XML error keeps its code and one line of its
// message and nothing else it echoes; an answer without one (a HEAD, a
// proxy) gets a code from its status.
func TestErrorDocuments(t *testing.T) {
	mk := func(status int, body string) *http.Response {
		return &http.Response{StatusCode: status, Header: http.Header{"X-Amz-Request-Id": {"R1"}}, Body: io.NopCloser(strings.NewReader(body))}
	}
	err := responseError("PUT", mk(403, `<Error><Code>SignatureDoesNotMatch</Code><Message>The request
signature we calculated does not match</Message><StringToSign>AWS4-HMAC-SHA256 secret-ish</StringToSign><RequestId>R2</RequestId></Error>`))
	if got := err.Error(); got != "s3 answered PUT with 403 SignatureDoesNotMatch: The request signature we calculated does not match (request id R2)" {
		t.Fatalf("error text %q", got)
	}
	if got := responseError("HEAD", mk(404, "")).(*Error); got.Code != "NotFound" || errorCode(got) != gcerrors.NotFound {
		t.Fatalf("HEAD 404: %+v", got)
	}
	if got := responseError("GET", mk(502, "<html>bad gateway</html>")).(*Error); got.Code != "BadGateway" || got.Message != "" {
		t.Fatalf("502 from a proxy: %+v", got)
	}
}
