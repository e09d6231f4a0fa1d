package storage

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"gocloud.dev/blob"

	"logbackup/storage/internal/awsauth"
	"logbackup/storage/internal/s3driver"
)

// openS3 opens the bucket through our own S3 driver (storage/internal/
// s3driver), signed with credentials found as the AWS SDK's default chain
// finds them (storage/internal/awsauth): the URL's keys, the environment,
// the shared files and profile, web identity, the container endpoint, the
// instance role; then role-arn, if set, assumed with them. The driver
// makes one attempt per request, so our retry loop retries, observably,
// with per-attempt deadlines. Nothing here touches the network;
// credentials are resolved on the first request, under that request's
// deadline. The returned func releases the client's idle connections.
func openS3(loc *Location) (*blob.Bucket, func(), error) {
	httpClient := newHTTPClient()
	tr := httpClient.Transport.(*http.Transport)
	tr.Proxy = bypassForMetadata(tr.Proxy)
	cfg := awsauth.Config{
		Profile: loc.Profile, Region: loc.Region,
		RoleARN: loc.RoleARN, ExternalID: loc.secret.externalID,
		HTTPClient: httpClient,
	}
	if loc.secret.accessKey != "" && loc.secret.secretAccessKey != "" {
		cfg.Static = &awsauth.Credentials{AccessKeyID: loc.secret.accessKey, SecretAccessKey: loc.secret.secretAccessKey,
			SessionToken: loc.secret.sessionToken, Source: "the storage URL"}
	}
	creds, region, err := awsauth.Resolve(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: s3: %w", ErrCredentials, err)
	}
	opts := s3driver.Options{
		Endpoint: loc.Endpoint, Region: region, PathStyle: loc.ForcePathStyle,
		Credentials:  credentialsGuard{creds},
		StorageClass: loc.StorageClass, ACL: loc.ACL,
	}
	if loc.SSE != "" {
		opts.SSE, opts.KMSKeyID = normaliseSSE(loc.SSE), loc.SSEKMSKeyID
	}
	b, err := s3driver.OpenBucket(httpClient, loc.Bucket, opts)
	if err != nil {
		return nil, nil, err
	}
	// Storage class, ACL and encryption go with every object the driver
	// writes.
	return b, httpClient.CloseIdleConnections, nil
}

// normaliseSSE maps BR's spellings to the header values S3 expects.
func normaliseSSE(v string) string {
	switch strings.ToLower(v) {
	case "aes256":
		return "AES256"
	default:
		return strings.ToLower(v)
	}
}

// newHTTPClient (for S3 and Azure) has its own transport (no state shared with other
// clients in the process) with connect and header timeouts, so a black
// hole fails fast even before the attempt deadline.
func newHTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	tr.TLSHandshakeTimeout = 10 * time.Second
	tr.MaxIdleConnsPerHost = 32
	return &http.Client{Transport: tr}
}

// bypassForMetadata leaves the instance-metadata and container-credentials
// endpoints (link-local, and EC2's IPv6 fd00:ec2::) out of a proxy from
// the environment: they answer only this machine, and a proxy would hand
// out its own instance's role, or nothing.
func bypassForMetadata(proxy func(*http.Request) (*url.URL, error)) func(*http.Request) (*url.URL, error) {
	return func(req *http.Request) (*url.URL, error) {
		if ip := net.ParseIP(req.URL.Hostname()); ip != nil &&
			(ip.IsLinkLocalUnicast() || ip.IsLoopback() || strings.HasPrefix(ip.String(), "fd00:ec2::")) {
			return nil, nil
		}
		if proxy == nil {
			return nil, nil
		}
		return proxy(req)
	}
}

// credentialsGuard marks every failure to obtain credentials with
// ErrCredentials, so it is reported at once instead of being retried like
// a network error.
type credentialsGuard struct{ awsauth.Provider }

func (g credentialsGuard) Retrieve(ctx context.Context) (awsauth.Credentials, error) {
	c, err := g.Provider.Retrieve(ctx)
	if err != nil {
		return c, fmt.Errorf("%w (set access-key and secret-access-key in the URL, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or a role): %w", ErrCredentials, err)
	}
	return c, nil
}

// AWSCredentials are keys found in this process's environment.
type AWSCredentials struct {
	AccessKeyID, SecretAccessKey, SessionToken string
	Source                                     string // where they were found; never a secret
}

// FindAWSCredentials looks AWS credentials up as an agent does for an S3
// URL without keys (the environment, the shared files, web identity, the
// container endpoint, the instance role), under ctx. br uses it to send
// its own with a task (BR's --send-credentials-to-tikv).
func FindAWSCredentials(ctx context.Context) (AWSCredentials, error) {
	client := newHTTPClient()
	defer client.CloseIdleConnections()
	tr := client.Transport.(*http.Transport)
	tr.Proxy = bypassForMetadata(tr.Proxy)
	p, _, err := awsauth.Resolve(awsauth.Config{HTTPClient: client})
	if err != nil {
		return AWSCredentials{}, err
	}
	c, err := p.Retrieve(ctx)
	if err != nil {
		return AWSCredentials{}, err
	}
	return AWSCredentials{AccessKeyID: c.AccessKeyID, SecretAccessKey: c.SecretAccessKey, SessionToken: c.SessionToken,
		Source: c.Source}, nil
}
