package storage

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	tmtypes "github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"gocloud.dev/blob"
	"gocloud.dev/blob/s3blob"
)

// openS3 builds the S3 client itself, so that credentials from the URL,
// path style and the endpoint are honoured, and so that the SDK does not
// retry on its own: our retry loop does, observably, with per-attempt
// deadlines. Nothing here touches the network; credentials are resolved
// on the first request, under that request's deadline.
// The returned func releases the client's idle connections.
func openS3(ctx context.Context, loc *Location) (*blob.Bucket, blobWriteHook, func(), error) {
	var cfgOpts []func(*config.LoadOptions) error
	if loc.Region != "" {
		cfgOpts = append(cfgOpts, config.WithRegion(loc.Region))
	}
	if loc.Profile != "" {
		cfgOpts = append(cfgOpts, config.WithSharedConfigProfile(loc.Profile))
	}
	if loc.secret.accessKey != "" {
		cfgOpts = append(cfgOpts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(
			loc.secret.accessKey, loc.secret.secretAccessKey, loc.secret.sessionToken)))
	}
	// Loading reads environment and shared files only; the deadline guards
	// against a config that points somewhere slow.
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cfg, err := config.LoadDefaultConfig(lctx, cfgOpts...)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("load AWS config: %w", err)
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1" // BR's default; S3-compatible servers ignore it
	}
	httpClient := newHTTPClient()
	cfg.HTTPClient = httpClient
	cfg.Retryer = func() aws.Retryer { return aws.NopRetryer{} }
	if loc.RoleARN != "" {
		stsClient := sts.NewFromConfig(cfg)
		cfg.Credentials = aws.NewCredentialsCache(stscreds.NewAssumeRoleProvider(stsClient, loc.RoleARN,
			func(o *stscreds.AssumeRoleOptions) {
				if loc.secret.externalID != "" {
					o.ExternalID = aws.String(loc.secret.externalID)
				}
			}))
	}
	if cfg.Credentials != nil {
		cfg.Credentials = credentialsGuard{cfg.Credentials}
	}
	client := s3.NewFromConfig(cfg, func(so *s3.Options) {
		so.UsePathStyle = loc.ForcePathStyle
		if loc.Endpoint != "" {
			so.BaseEndpoint = aws.String(loc.Endpoint)
			// S3-compatible servers (Ceph, older MinIO, …) reject the
			// SDK's newer default checksum headers; AWS accepts both.
			so.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
			so.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		}
		so.Retryer = aws.NopRetryer{}
	})
	opts := &s3blob.Options{RequestChecksumCalculation: client.Options().RequestChecksumCalculation}
	if loc.SSE != "" {
		opts.EncryptionType = s3types.ServerSideEncryption(normaliseSSE(loc.SSE))
		opts.KMSEncryptionID = loc.SSEKMSKeyID
	}
	b, err := s3blob.OpenBucket(ctx, client, loc.Bucket, opts)
	if err != nil {
		return nil, nil, nil, err
	}
	return b, s3WriteHook(loc), httpClient.CloseIdleConnections, nil
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

// s3WriteHook applies the per-object options s3blob has no knob for.
func s3WriteHook(loc *Location) blobWriteHook {
	if loc.StorageClass == "" && loc.ACL == "" {
		return nil
	}
	return func(as func(any) bool) error {
		var in *transfermanager.UploadObjectInput
		if !as(&in) {
			return fmt.Errorf("s3 writer does not expose its upload input; cannot set storage-class or acl")
		}
		if loc.StorageClass != "" {
			in.StorageClass = tmtypes.StorageClass(loc.StorageClass)
		}
		if loc.ACL != "" {
			in.ACL = tmtypes.ObjectCannedACL(loc.ACL)
		}
		return nil
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

// credentialsGuard marks every failure to obtain credentials with
// ErrCredentials, so it is reported at once instead of being retried like
// a network error (the SDK reports it as a plain wrapped error).
type credentialsGuard struct{ aws.CredentialsProvider }

func (g credentialsGuard) Retrieve(ctx context.Context) (aws.Credentials, error) {
	c, err := g.CredentialsProvider.Retrieve(ctx)
	if err != nil {
		return c, fmt.Errorf("%w (set access-key and secret-access-key in the URL, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or a role): %w", ErrCredentials, err)
	}
	return c, nil
}
