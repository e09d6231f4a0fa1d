// Package gcsjson is a gocloud.dev/blob driver for Google Cloud Storage
// over the JSON API, with plain net/http. It stands in for gcsblob and
// cloud.google.com/go/storage, whose package init alone (gRPC xDS, Envoy
// protos, OpenTelemetry, s2a, Cloud Monitoring) kept about 10 MiB of the
// agent's idle RSS (issue 19); TiKV itself talks to GCS with its own small
// HTTP client.
//
// Every method makes one attempt, bounded by the context it is given: the
// storage's retry loop owns retries, their deadlines and their counting.
package gcsjson

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/blob/driver"
	"gocloud.dev/gcerrors"

	"logbackup/storage/internal/drvhttp"
)

// DefaultEndpoint is Google's JSON API base.
const DefaultEndpoint = "https://storage.googleapis.com/storage/v1/"

// Options are a bucket's settings beyond its name.
type Options struct {
	// Endpoint is the JSON API base URL (".../storage/v1/"); "" means
	// DefaultEndpoint. Uploads go to "/upload/storage/v1/" on its host, as
	// the Go client derives them for a custom endpoint.
	Endpoint string
	// StorageClass and PredefinedACL are set on every object written;
	// "" leaves the bucket's defaults.
	StorageClass  string
	PredefinedACL string
}

type bucket struct {
	client *http.Client
	name   string
	// api and upload end in "/"; object and bucket paths are appended.
	api, upload   string
	storageClass  string
	predefinedACL string
}

var _ driver.Bucket = (*bucket)(nil)

// OpenBucket returns the bucket named name, reached with client (which
// adds the credentials). It makes no request.
func OpenBucket(client *http.Client, name string, opts Options) (*blob.Bucket, error) {
	b, err := newBucket(client, name, opts)
	if err != nil {
		return nil, err
	}
	return blob.NewBucket(b), nil
}

func newBucket(client *http.Client, name string, opts Options) (*bucket, error) {
	if client == nil {
		return nil, fmt.Errorf("gcs: no http client")
	}
	if name == "" {
		return nil, fmt.Errorf("gcs: empty bucket name")
	}
	ep := opts.Endpoint
	if ep == "" {
		ep = DefaultEndpoint
	}
	api, err := url.Parse(ep)
	if err != nil || api.Scheme == "" || api.Host == "" {
		return nil, fmt.Errorf("gcs: endpoint %q is not an absolute URL", ep)
	}
	if !strings.HasSuffix(api.Path, "/") {
		api.Path += "/"
		api.RawPath = ""
	}
	up := api.ResolveReference(&url.URL{Path: "/upload/storage/v1/"})
	// A copy that follows no redirect: the JSON API sends none, a 308 is
	// a resumable upload's "incomplete", and a redirect followed through
	// the OAuth transport would take the token along to another host.
	c := *client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &bucket{
		client: &c, name: name,
		api: api.String(), upload: up.String(),
		storageClass: opts.StorageClass, predefinedACL: opts.PredefinedACL,
	}, nil
}

// objectURL is the JSON API resource of the object key.
func (b *bucket) objectURL(key string) string {
	return b.api + "b/" + escape(b.name) + "/o/" + escape(key)
}

// escape percent-encodes all but RFC 3986's unreserved characters, as the
// Go client's URI templates do: a "/" in an object name must be %2F.
func escape(s string) string {
	const hex = "0123456789ABCDEF"
	var sb strings.Builder
	sb.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			sb.WriteByte(c)
			continue
		}
		sb.WriteByte('%')
		sb.WriteByte(hex[c>>4])
		sb.WriteByte(hex[c&15])
	}
	return sb.String()
}

// send makes one request. An answer with a status in ok is returned with
// its body open; any other becomes a *googleapi.Error.
func (b *bucket) send(req *http.Request, ok ...int) (*http.Response, error) {
	req.Header.Set("User-Agent", "logbackup")
	resp, err := b.client.Do(req)
	if err != nil {
		return nil, sendError(err)
	}
	for _, s := range ok {
		if resp.StatusCode == s {
			return resp, nil
		}
	}
	return nil, responseError(resp)
}

func (b *bucket) ErrorCode(err error) gcerrors.ErrorCode { return errorCode(err) }

// As exposes nothing: there is no SDK type underneath.
func (b *bucket) As(any) bool { return false }

// ErrorAs lets blob's ErrorAs reach the *googleapi.Error.
func (b *bucket) ErrorAs(err error, target any) bool { return asError(err, target) }

// noAs is the asFunc handed to Before* hooks: there is no SDK type.
func noAs(any) bool { return false }

func (b *bucket) Attributes(ctx context.Context, key string) (*driver.Attributes, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.objectURL(key), nil)
	if err != nil {
		return nil, err
	}
	resp, err := b.send(req, http.StatusOK)
	if err != nil {
		return nil, err
	}
	var o object
	err = decode(resp, &o)
	if err != nil {
		return nil, fmt.Errorf("gcs: object attributes: %w", err)
	}
	return o.attributes(), nil
}

func (b *bucket) Delete(ctx context.Context, key string, opts *driver.DeleteOptions) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, b.objectURL(key), nil)
	if err != nil {
		return err
	}
	if opts != nil && opts.BeforeDelete != nil {
		if err := opts.BeforeDelete(noAs); err != nil {
			return err
		}
	}
	resp, err := b.send(req, http.StatusNoContent, http.StatusOK)
	if err != nil {
		return err
	}
	drvhttp.Drain(resp)
	return nil
}

// Copy is not used by the storage; a rewrite loop is not worth carrying
// untested.
func (b *bucket) Copy(context.Context, string, string, *driver.CopyOptions) error {
	return fmt.Errorf("copy: %w", errUnimplemented)
}

// SignedURL would need the service account's private key here, and
// nothing asks for one.
func (b *bucket) SignedURL(context.Context, string, *driver.SignedURLOptions) (string, error) {
	return "", fmt.Errorf("signed URLs: %w", errUnimplemented)
}

// Close has nothing to free: the caller owns the client and its
// transport's idle connections.
func (b *bucket) Close() error { return nil }

// parseTime reads an RFC 3339 time from the API; an absent or odd one is
// the zero time, as the portable attributes allow.
func parseTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}
	}
	return t
}
