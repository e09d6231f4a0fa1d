// Package azdriver is a gocloud.dev/blob driver for Azure Blob Storage
// over the azblob SDK's container.Client. It stands in for gocloud's
// azureblob, which imports gocloud's user-agent helper and through it
// google.golang.org/api/option, cloud.google.com/go/auth and s2a-go: their
// package init held binary pages of the agent's idle RSS (issue 19) for an
// Azure driver the storage only reads, lists and deletes with.
//
// The driver makes one attempt per call, bounded by the context it is
// given: the client is built with the SDK's retries off, and the storage's
// retry loop owns retries, their deadlines and their counting. Errors are
// the SDK's own (*azcore.ResponseError for an answer), so the storage's
// classification and shortening of them are unchanged; ErrorCode maps
// them as gocloud's driver did, but for a host that does not resolve,
// which is no missing blob (see errorCode).
//
// Writes are not here: the storage uploads through the SDK directly
// (storage/azure.go), so NewTypedWriter, Copy and SignedURL answer
// Unimplemented.
package azdriver

import (
	"context"
	"errors"
	"fmt"

	azblobblob "github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"gocloud.dev/blob"
	"gocloud.dev/blob/driver"
	"gocloud.dev/gcerrors"
)

// Options are a container's settings beyond its client.
type Options struct {
	// CPK is the customer-provided key sent with every read of a blob
	// (downloads and properties): Azure refuses to read a blob written
	// with such a key without it. nil sends none. An encryption scope
	// needs nothing on reads: Azure reads such blobs with the scope they
	// were written with.
	CPK *azblobblob.CPKInfo
}

type bucket struct {
	client *container.Client
	cpk    *azblobblob.CPKInfo
}

var _ driver.Bucket = (*bucket)(nil)

// OpenBucket returns the container client reaches as a bucket. It makes
// no request.
func OpenBucket(client *container.Client, opts Options) (*blob.Bucket, error) {
	if client == nil {
		return nil, errors.New("azure: no container client")
	}
	return blob.NewBucket(&bucket{client: client, cpk: opts.CPK}), nil
}

// errUnimplemented is what the driver answers for what it does not do.
var errUnimplemented = errors.New("azure: not implemented by this driver")

// noAs is the asFunc handed to Before* hooks and listed objects: the
// driver's settings are its Options, not the SDK's option structs.
func noAs(any) bool { return false }

// As exposes nothing: a caller reaching the client would bypass the
// driver's settings.
func (b *bucket) As(any) bool { return false }

func (b *bucket) ErrorCode(err error) gcerrors.ErrorCode { return errorCode(err) }

// ErrorAs lets blob's ErrorAs reach the *azcore.ResponseError.
func (b *bucket) ErrorAs(err error, target any) bool { return errorAs(err, target) }

// Attributes is Get Blob Properties, with the customer-provided key.
// Metadata is left out: the storage writes none and reads none.
func (b *bucket) Attributes(ctx context.Context, key string) (*driver.Attributes, error) {
	p, err := b.client.NewBlobClient(EscapeKey(key)).GetProperties(ctx, &azblobblob.GetPropertiesOptions{CPKInfo: b.cpk})
	if err != nil {
		return nil, err
	}
	a := &driver.Attributes{
		CacheControl:       deref(p.CacheControl),
		ContentDisposition: deref(p.ContentDisposition),
		ContentEncoding:    deref(p.ContentEncoding),
		ContentLanguage:    deref(p.ContentLanguage),
		ContentType:        deref(p.ContentType),
		Size:               deref(p.ContentLength),
		CreateTime:         deref(p.CreationTime),
		ModTime:            deref(p.LastModified),
		MD5:                p.ContentMD5,
		AsFunc:             noAs,
	}
	if p.ETag != nil {
		a.ETag = string(*p.ETag)
	}
	return a, nil
}

// Delete is Delete Blob. A blob with snapshots is refused by Azure
// (409 SnapshotsPresent), as it was by gocloud's driver: the storage
// makes none.
func (b *bucket) Delete(ctx context.Context, key string, opts *driver.DeleteOptions) error {
	if opts != nil && opts.BeforeDelete != nil {
		if err := opts.BeforeDelete(noAs); err != nil {
			return err
		}
	}
	_, err := b.client.NewBlobClient(EscapeKey(key)).Delete(ctx, nil)
	return err
}

// NewTypedWriter is not needed: the storage writes every Azure blob
// through the SDK (azureBackend), as one Put Blob or staged blocks with
// its own checksums, tier and keys.
func (b *bucket) NewTypedWriter(context.Context, string, string, *driver.WriterOptions) (driver.Writer, error) {
	return nil, fmt.Errorf("writer: %w", errUnimplemented)
}

// Copy is not used by the storage; a polled server-side copy is not
// worth carrying untested.
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

// deref is *p, or the zero value for a header Azure did not send.
func deref[T any](p *T) T {
	var v T
	if p != nil {
		v = *p
	}
	return v
}
