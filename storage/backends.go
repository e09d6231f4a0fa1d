package storage

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"gocloud.dev/blob"
	"gocloud.dev/blob/azureblob"
	"gocloud.dev/blob/gcsblob"
	"gocloud.dev/blob/s3blob"
	"gocloud.dev/gcp"
	"golang.org/x/oauth2/google"
)

// openS3 builds the S3 client itself so credentials from the URL, path
// style and the endpoint are honoured, and so the SDK does not retry on its
// own: our retry loop does, observably, with per-attempt deadlines.
func openS3(ctx context.Context, loc *Location, o options) (*blob.Bucket, error) {
	region := loc.Region
	if region == "" {
		region = "us-east-1"
	}
	cfgOpts := []func(*config.LoadOptions) error{config.WithRegion(region)}
	if loc.Profile != "" {
		cfgOpts = append(cfgOpts, config.WithSharedConfigProfile(loc.Profile))
	}
	if loc.secret.accessKey != "" {
		cfgOpts = append(cfgOpts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(loc.secret.accessKey, loc.secret.secretAccessKey, loc.secret.sessionToken)))
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cfg, err := config.LoadDefaultConfig(lctx, cfgOpts...)
	if err != nil {
		return nil, fmt.Errorf("load AWS config: %w", err)
	}
	cfg.HTTPClient = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	client := s3.NewFromConfig(cfg, func(so *s3.Options) {
		so.UsePathStyle = loc.ForcePathStyle
		if loc.Endpoint != "" {
			so.BaseEndpoint = aws.String(loc.Endpoint)
		}
		so.Retryer = aws.NopRetryer{}
	})
	return s3blob.OpenBucket(ctx, client, loc.Bucket, nil)
}

func openGCS(ctx context.Context, loc *Location) (*blob.Bucket, error) {
	const scope = "https://www.googleapis.com/auth/devstorage.read_write"
	var creds *google.Credentials
	var err error
	switch {
	case loc.secret.gcsCredentialsBlob != "":
		creds, err = google.CredentialsFromJSON(ctx, []byte(loc.secret.gcsCredentialsBlob), scope)
	case loc.secret.gcsCredentialsFile != "":
		var raw []byte
		raw, err = readFile(loc.secret.gcsCredentialsFile)
		if err == nil {
			creds, err = google.CredentialsFromJSON(ctx, raw, scope)
		}
	default:
		creds, err = gcp.DefaultCredentials(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("gcs credentials: %w", err)
	}
	client, err := gcp.NewHTTPClient(gcp.DefaultTransport(), gcp.CredentialsTokenSource(creds))
	if err != nil {
		return nil, fmt.Errorf("gcs client: %w", err)
	}
	return gcsblob.OpenBucket(ctx, client, loc.Bucket, nil)
}

func openAzure(ctx context.Context, loc *Location) (*blob.Bucket, error) {
	svc := loc.Endpoint
	if svc == "" {
		account := loc.AccountName
		if account == "" {
			u, err := azureblob.NewServiceURL(azureblob.NewDefaultServiceURLOptions())
			if err != nil {
				return nil, fmt.Errorf("azure service URL (set account-name or AZURE_STORAGE_ACCOUNT): %w", err)
			}
			svc = string(u)
		} else {
			svc = "https://" + account + ".blob.core.windows.net"
		}
	}
	var client *container.Client
	var err error
	if loc.secret.accountKey != "" {
		cred, cerr := azblob.NewSharedKeyCredential(loc.AccountName, loc.secret.accountKey)
		if cerr != nil {
			return nil, fmt.Errorf("azure shared key: %w", cerr)
		}
		client, err = container.NewClientWithSharedKeyCredential(svc+"/"+loc.Bucket, cred, nil)
	} else {
		client, err = azureblob.NewDefaultClient(azureblob.ServiceURL(svc), azureblob.ContainerName(loc.Bucket))
	}
	if err != nil {
		return nil, fmt.Errorf("azure client: %w", err)
	}
	return azureblob.OpenBucket(ctx, client, nil)
}
