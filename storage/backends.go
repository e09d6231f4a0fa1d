package storage

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"

	"gocloud.dev/blob"
	"gocloud.dev/gcp"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"

	"logbackup/storage/internal/gcsjson"
)

func openGCS(ctx context.Context, loc *Location) (*blob.Bucket, func(), error) {
	const scope = "https://www.googleapis.com/auth/devstorage.read_write"
	// The token source keeps this context for every later token refresh,
	// so it must outlive Open: values yes, cancellation no. Parsing a key
	// makes no request; finding default credentials may probe the GCE
	// metadata server, which the metadata client bounds itself.
	// Its own transport, as S3's and Azure's, for the API and the token
	// endpoint: nothing shared with other clients in the process, and
	// idle connections released on Close.
	tr := newHTTPClient().Transport.(*http.Transport)
	cctx := context.WithValue(context.WithoutCancel(ctx), oauth2.HTTPClient, &http.Client{Transport: tr})
	var creds *google.Credentials
	var err error
	switch {
	case loc.secret.gcsCredentialsBlob != "":
		creds, err = google.CredentialsFromJSON(cctx, []byte(loc.secret.gcsCredentialsBlob), scope)
	case loc.secret.gcsCredentialsFile != "":
		var raw []byte
		if raw, err = os.ReadFile(loc.secret.gcsCredentialsFile); err == nil {
			creds, err = google.CredentialsFromJSON(cctx, raw, scope)
		}
	default:
		creds, err = gcp.DefaultCredentials(cctx)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%w: gcs (set credentials-file or GOOGLE_APPLICATION_CREDENTIALS): %w", ErrCredentials, err)
	}
	client, err := gcp.NewHTTPClient(tr, gcsTokenGuard{gcp.CredentialsTokenSource(creds)})
	if err != nil {
		return nil, nil, fmt.Errorf("gcs client: %w", err)
	}
	// Our own JSON API driver, not gcsblob: the Go client's package init
	// alone held about 10 MiB of the agent's idle RSS (issue 19). It makes
	// one attempt per request, so our retry loop owns retries (the
	// client's own loop retried a refused connection until the attempt's
	// deadline, and an outage was reported as a timeout). Storage class
	// and ACL go with every upload it makes.
	opts := gcsjson.Options{StorageClass: loc.StorageClass, PredefinedACL: loc.ACL}
	if loc.Endpoint != "" {
		opts.Endpoint = gcsEndpoint(loc.Endpoint)
	}
	b, err := gcsjson.OpenBucket(&client.Client, loc.Bucket, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("gcs bucket: %w", err)
	}
	return b, tr.CloseIdleConnections, nil
}

// gcsEndpoint is the JSON API base URL the driver puts its paths
// under: "http://host:port" alone (as fake-gcs-server and other
// emulators are given) means their /storage/v1/, and the URL must end in
// a slash, or "b/bucket/o" resolves beside "v1" instead of under it (lists
// and deletes then answered 404 while reads and uploads, addressed
// differently, worked). ParseURL trims the slash off every endpoint.
func gcsEndpoint(ep string) string {
	if u, err := url.Parse(ep); err == nil && strings.Trim(u.Path, "/") == "" {
		return strings.TrimRight(ep, "/") + "/storage/v1/"
	}
	return strings.TrimRight(ep, "/") + "/"
}

// gcsTokenGuard marks every failure to get a token with ErrCredentials,
// as credentialsGuard does for S3, so it is reported at once instead of
// being retried like a network error.
type gcsTokenGuard struct{ oauth2.TokenSource }

func (g gcsTokenGuard) Token() (*oauth2.Token, error) {
	tok, err := g.TokenSource.Token()
	if err != nil {
		return nil, fmt.Errorf("%w: gcs token: %w", ErrCredentials, err)
	}
	return tok, nil
}
