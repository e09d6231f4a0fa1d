// Package s3driver is a gocloud.dev/blob driver for Amazon S3 and
// S3-compatible servers (MinIO, Ceph, …) over the REST API with plain
// net/http, signed by awsauth. It stands in for s3blob and aws-sdk-go-v2,
// whose package init (endpoint tables, the credential chain's services,
// smithy's middleware types) kept about 2.5 MiB of the agent's idle RSS
// (issue 19); TiKV itself talks to S3 with its own client.
//
// Every method makes one attempt, bounded by the context it is given: the
// storage's retry loop owns retries, their deadlines and their counting.
package s3driver

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/blob/driver"
	"gocloud.dev/gcerrors"

	"logbackup/storage/internal/awsauth"
	"logbackup/storage/internal/drvhttp"
)

// Options are a bucket's settings beyond its name.
type Options struct {
	// Endpoint is the service's base URL ("http://127.0.0.1:9000"); ""
	// means AWS's regional endpoint.
	Endpoint string
	// Region signs every request; "" means us-east-1.
	Region string
	// PathStyle puts the bucket in the path ("host/bucket/key") instead of
	// the host name ("bucket.host/key").
	PathStyle bool
	// Credentials sign every request; nil sends them unsigned (a public
	// bucket).
	Credentials awsauth.Provider
	// SSE ("AES256", "aws:kms", "aws:kms:dsse") and its KMS key, the
	// storage class and the canned ACL, set on every object written; ""
	// leaves the bucket's defaults.
	SSE, KMSKeyID, StorageClass, ACL string
}

type bucket struct {
	client *http.Client
	name   string
	// base is the URL objects are under: ".../bucket/" (path style) or
	// "bucket.host/" (virtual host); keys are appended to its path.
	base      url.URL
	pathStyle bool // the bucket is in base's path, not its host
	opts      Options
	now       func() time.Time
}

var _ driver.Bucket = (*bucket)(nil)

// OpenBucket returns the bucket named name, reached with client. It makes
// no request.
func OpenBucket(client *http.Client, name string, opts Options) (*blob.Bucket, error) {
	b, err := newBucket(client, name, opts)
	if err != nil {
		return nil, err
	}
	return blob.NewBucket(b), nil
}

func newBucket(client *http.Client, name string, opts Options) (*bucket, error) {
	if client == nil {
		return nil, fmt.Errorf("s3: no http client")
	}
	if name == "" {
		return nil, fmt.Errorf("s3: empty bucket name")
	}
	if opts.Region == "" {
		opts.Region = "us-east-1"
	}
	ep := opts.Endpoint
	if ep == "" {
		ep = DefaultEndpoint(opts.Region)
	}
	u, err := url.Parse(ep)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return nil, fmt.Errorf("s3: endpoint %q is not an absolute URL", ep)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("s3: endpoint %q: scheme must be http or https", ep)
	}
	u.RawQuery, u.Fragment, u.RawPath = "", "", ""
	path := strings.TrimRight(u.Path, "/")
	pathStyle := opts.PathStyle || !virtualHostable(name, u.Scheme)
	if pathStyle {
		// A name with dots cannot be a host name under TLS (the
		// certificate is for one level of subdomain), nor can one that
		// is no DNS label: path style, as the AWS SDK falls back to.
		u.Path = path + "/" + name + "/"
	} else {
		u.Host = name + "." + u.Host
		u.Path = path + "/"
	}
	// A copy that follows no redirect: a redirect to another region's
	// endpoint would take the signed headers along; S3 says so in an
	// error instead (PermanentRedirect), which is reported.
	c := *client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &bucket{client: &c, name: name, base: *u, pathStyle: pathStyle, opts: opts, now: time.Now}, nil
}

// DefaultEndpoint is AWS's endpoint for region.
func DefaultEndpoint(region string) string {
	if strings.HasPrefix(region, "cn-") {
		return "https://s3." + region + ".amazonaws.com.cn"
	}
	return "https://s3." + region + ".amazonaws.com"
}

// virtualHostable: S3's rules for a bucket name that can be a host name.
func virtualHostable(name, scheme string) bool {
	if len(name) < 3 || len(name) > 63 || name[0] == '-' || name[len(name)-1] == '-' {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-':
		case c == '.':
			if scheme == "https" {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// objectURL is the URL of key, with query q (may be nil).
func (b *bucket) objectURL(key string, q url.Values) *url.URL {
	u := b.base
	u.Path += key
	if q != nil {
		u.RawQuery = encodeQuery(q)
	}
	return &u
}

// bucketURL is the bucket's own URL (listings), with query q.
func (b *bucket) bucketURL(q url.Values) *url.URL {
	u := b.base
	if b.pathStyle {
		u.Path = strings.TrimSuffix(u.Path, "/") // "/bucket", as the SDK sends it
	}
	u.RawQuery = encodeQuery(q)
	return &u
}

// encodeQuery escapes as the signature's canonical form does (a space is
// %20, not '+'), so the query sent is the one signed.
func encodeQuery(q url.Values) string {
	var sb strings.Builder
	for _, k := range slices.Sorted(maps.Keys(q)) {
		for _, v := range q[k] {
			if sb.Len() > 0 {
				sb.WriteByte('&')
			}
			sb.WriteString(awsauth.Escape(k))
			if v != "" || !valuelessParams[k] {
				sb.WriteByte('=')
				sb.WriteString(awsauth.Escape(v))
			}
		}
	}
	return sb.String()
}

// valuelessParams are sub-resources S3 names with no value ("?uploads").
var valuelessParams = map[string]bool{"uploads": true}

// expectContinueMin is the body from which a request waits for S3's
// "100 Continue" before sending it (the SDK's threshold). The transport's
// ExpectContinueTimeout bounds the wait for a server that never says it.
const expectContinueMin = 2 << 20

// request builds a request for u with body (may be nil) of the given
// payload hash (awsauth.PayloadHash of it).
type request struct {
	method      string
	u           *url.URL
	body        []byte
	payloadHash string
	header      http.Header
}

// send makes one signed request. An answer with a status in ok is
// returned with its body open; any other becomes an *Error, a failure to
// send or to read the answer a *SendError.
func (b *bucket) send(ctx context.Context, r request, ok ...int) (*http.Response, error) {
	var body io.Reader
	if r.body != nil {
		body = bytesReader(r.body)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, r.u.String(), body)
	if err != nil {
		return nil, err
	}
	for k, vs := range r.header {
		req.Header[k] = vs
	}
	if r.body != nil {
		req.ContentLength = int64(len(r.body))
		if len(r.body) >= expectContinueMin {
			// S3 refuses before the body is sent (a denial, a missing
			// bucket, a redirect), as the AWS SDK asks it to: megabytes
			// are not sent for nothing.
			req.Header.Set("Expect", "100-continue")
		}
	}
	req.Header.Set("User-Agent", "logbackup")
	hash := r.payloadHash
	if hash == "" {
		hash = awsauth.EmptyPayloadHash
		if r.body != nil {
			hash = awsauth.PayloadHash(r.body)
		}
	}
	if b.opts.Credentials != nil {
		c, err := b.opts.Credentials.Retrieve(ctx)
		if err != nil {
			return nil, err
		}
		awsauth.Sign(req, c, "s3", b.opts.Region, hash, b.now())
	} else {
		// Anonymous, and still with the payload's hash: S3 checks it.
		req.Header.Set("X-Amz-Content-Sha256", hash)
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return nil, sendError(r.method, err)
	}
	for _, s := range ok {
		if resp.StatusCode == s {
			return resp, nil
		}
	}
	return nil, responseError(r.method, resp)
}

func (b *bucket) ErrorCode(err error) gcerrors.ErrorCode { return errorCode(err) }

// As exposes nothing: there is no SDK type underneath.
func (b *bucket) As(any) bool { return false }

// ErrorAs lets blob's ErrorAs reach the *Error.
func (b *bucket) ErrorAs(err error, target any) bool { return asError(err, target) }

// noAs is the asFunc handed to Before* hooks: there is no SDK type.
func noAs(any) bool { return false }

// Attributes is HEAD Object.
func (b *bucket) Attributes(ctx context.Context, key string) (*driver.Attributes, error) {
	resp, err := b.send(ctx, request{method: http.MethodHead, u: b.objectURL(key, nil)}, http.StatusOK)
	if err != nil {
		return nil, err
	}
	drvhttp.Drain(resp)
	h := resp.Header
	a := &driver.Attributes{
		CacheControl:       h.Get("Cache-Control"),
		ContentDisposition: h.Get("Content-Disposition"),
		ContentEncoding:    h.Get("Content-Encoding"),
		ContentLanguage:    h.Get("Content-Language"),
		ContentType:        h.Get("Content-Type"),
		ETag:               h.Get("ETag"),
		Size:               resp.ContentLength,
		AsFunc:             noAs,
	}
	if t, err := http.ParseTime(h.Get("Last-Modified")); err == nil {
		a.ModTime = t
	}
	if !strings.HasPrefix(h.Get("X-Amz-Server-Side-Encryption"), "aws:kms") {
		a.MD5 = etagMD5(a.ETag) // a KMS-encrypted object's ETag is no MD5
	}
	for k, vs := range h {
		if m, ok := strings.CutPrefix(strings.ToLower(k), "x-amz-meta-"); ok && len(vs) > 0 {
			if a.Metadata == nil {
				a.Metadata = map[string]string{}
			}
			a.Metadata[m] = vs[0]
		}
	}
	return a, nil
}

// Delete is DELETE Object. S3 answers 204 for a key that does not exist
// too; the storage treats a missing object as deleted either way.
func (b *bucket) Delete(ctx context.Context, key string, opts *driver.DeleteOptions) error {
	if opts != nil && opts.BeforeDelete != nil {
		if err := opts.BeforeDelete(noAs); err != nil {
			return err
		}
	}
	resp, err := b.send(ctx, request{method: http.MethodDelete, u: b.objectURL(key, nil)}, http.StatusNoContent, http.StatusOK)
	if err != nil {
		return err
	}
	drvhttp.Drain(resp)
	return nil
}

// Copy is not used by the storage.
func (b *bucket) Copy(context.Context, string, string, *driver.CopyOptions) error {
	return fmt.Errorf("copy: %w", errUnimplemented)
}

// SignedURL is not used by the storage.
func (b *bucket) SignedURL(context.Context, string, *driver.SignedURLOptions) (string, error) {
	return "", fmt.Errorf("signed URLs: %w", errUnimplemented)
}

// Close has nothing to free: the caller owns the client and its
// transport's idle connections.
func (b *bucket) Close() error { return nil }
