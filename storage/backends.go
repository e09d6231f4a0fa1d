package storage

import (
	"context"
	"fmt"
	"os"
	"strings"

	gcs "cloud.google.com/go/storage"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	azblobblob "github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"gocloud.dev/blob"
	"gocloud.dev/blob/azureblob"
	"gocloud.dev/blob/gcsblob"
	"gocloud.dev/gcp"
	"golang.org/x/oauth2/google"
	"google.golang.org/api/option"
)

// blobWriteHook adjusts a backend's native write request (storage class,
// ACL, access tier) through gocloud's BeforeWrite escape hatch.
type blobWriteHook func(as func(any) bool) error

func openGCS(ctx context.Context, loc *Location) (*blob.Bucket, blobWriteHook, error) {
	const scope = "https://www.googleapis.com/auth/devstorage.read_write"
	// The token source keeps this context for every later token refresh,
	// so it must outlive Open: values yes, cancellation no. Parsing a key
	// makes no request; finding default credentials may probe the GCE
	// metadata server, which the metadata client bounds itself.
	cctx := context.WithoutCancel(ctx)
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
	client, err := gcp.NewHTTPClient(gcp.DefaultTransport(), gcp.CredentialsTokenSource(creds))
	if err != nil {
		return nil, nil, fmt.Errorf("gcs client: %w", err)
	}
	opts := &gcsblob.Options{}
	if loc.Endpoint != "" {
		opts.ClientOptions = append(opts.ClientOptions, option.WithEndpoint(loc.Endpoint))
	}
	b, err := gcsblob.OpenBucket(ctx, client, loc.Bucket, opts)
	if err != nil {
		return nil, nil, err
	}
	var hook blobWriteHook
	if loc.StorageClass != "" || loc.ACL != "" {
		hook = func(as func(any) bool) error {
			var w *gcs.Writer
			if !as(&w) {
				return fmt.Errorf("gcs writer does not expose itself; cannot set storage-class or predefined-acl")
			}
			w.StorageClass = loc.StorageClass
			w.PredefinedACL = loc.ACL
			return nil
		}
	}
	return b, hook, nil
}

func openAzure(ctx context.Context, loc *Location) (*blob.Bucket, blobWriteHook, error) {
	svc := loc.Endpoint
	if svc == "" {
		if loc.AccountName == "" {
			u, err := azureblob.NewServiceURL(azureblob.NewDefaultServiceURLOptions())
			if err != nil {
				return nil, nil, fmt.Errorf("azure service URL (set account-name or AZURE_STORAGE_ACCOUNT): %w", err)
			}
			svc = strings.SplitN(string(u), "?", 2)[0]
		} else {
			svc = "https://" + loc.AccountName + ".blob.core.windows.net"
		}
	}
	containerURL := strings.TrimRight(svc, "/") + "/" + loc.Bucket
	var client *container.Client
	var err error
	switch {
	case loc.secret.sasToken != "":
		client, err = container.NewClientWithNoCredential(containerURL+"?"+loc.secret.sasToken, nil)
	case loc.secret.accountKey != "":
		cred, cerr := azblob.NewSharedKeyCredential(loc.AccountName, loc.secret.accountKey)
		if cerr != nil {
			// The SDK's message may quote the key; say only what is wrong.
			return nil, nil, fmt.Errorf("%w: azure account-key is not valid base64", ErrCredentials)
		}
		client, err = container.NewClientWithSharedKeyCredential(containerURL, cred, nil)
	default:
		client, err = azureblob.NewDefaultClient(azureblob.ServiceURL(svc), azureblob.ContainerName(loc.Bucket))
		if err != nil {
			err = fmt.Errorf("%w: azure (set account-key, sas-token or AZURE_* variables): %w", ErrCredentials, err)
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("azure client: %w", err)
	}
	b, err := azureblob.OpenBucket(ctx, client, nil)
	if err != nil {
		return nil, nil, err
	}
	var hook blobWriteHook
	if loc.StorageClass != "" || loc.EncryptionScope != "" {
		hook = func(as func(any) bool) error {
			var o *azblob.UploadStreamOptions
			if !as(&o) {
				return fmt.Errorf("azure writer does not expose its upload options; cannot set access-tier or encryption-scope")
			}
			if loc.StorageClass != "" {
				tier := azblobblob.AccessTier(loc.StorageClass)
				o.AccessTier = &tier
			}
			if loc.EncryptionScope != "" {
				scope := loc.EncryptionScope
				o.CPKScopeInfo = &azblobblob.CPKScopeInfo{EncryptionScope: &scope}
			}
			return nil
		}
	}
	return b, hook, nil
}
