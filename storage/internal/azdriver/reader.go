package azdriver

import (
	"context"
	"fmt"

	azblobblob "github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"gocloud.dev/blob/driver"

	"logbackup/storage/internal/rangeread"
)

// NewRangeReader is Get Blob with the customer-provided key and a Range
// header unless the whole blob is asked for. A range that starts at or
// past the end is Azure's 416 InvalidRange, which the storage reads as
// no bytes. The body is read under ctx, as the request was made.
func (b *bucket) NewRangeReader(ctx context.Context, key string, offset, length int64, opts *driver.ReaderOptions) (driver.Reader, error) {
	if opts != nil && opts.BeforeRead != nil {
		if err := opts.BeforeRead(noAs); err != nil {
			return nil, err
		}
	}
	if length == 0 {
		return b.emptyReader(ctx, key)
	}
	o := &azblobblob.DownloadStreamOptions{CPKInfo: b.cpk, Range: azblobblob.HTTPRange{Offset: offset}}
	if length > 0 {
		o.Range.Count = length
	}
	resp, err := b.client.NewBlobClient(EscapeKey(key)).DownloadStream(ctx, o)
	if err != nil {
		return nil, err
	}
	// No Content-Range on a ranged read: something between us and Azure
	// ignored the Range and the whole blob came back.
	r, err := rangeread.New(resp.Body, driver.ReaderAttributes{
		ContentType: deref(resp.ContentType),
		ModTime:     deref(resp.LastModified),
		Size:        blobSize(resp.ContentLength, resp.ContentRange),
	}, offset, length, resp.ContentRange == nil)
	if err != nil {
		return nil, fmt.Errorf("azure: %w", err)
	}
	return r, nil
}

// emptyReader serves a zero-length range: there is no empty Range header
// (gocloud's driver downloaded from the offset to the end and never
// closed that body), and the blob's properties still say whether it
// exists.
func (b *bucket) emptyReader(ctx context.Context, key string) (driver.Reader, error) {
	a, err := b.Attributes(ctx, key)
	if err != nil {
		return nil, err
	}
	return rangeread.Empty(driver.ReaderAttributes{ContentType: a.ContentType, ModTime: a.ModTime, Size: a.Size}), nil
}

// blobSize is the blob's whole size: the total of Content-Range
// ("bytes 10-14/27") for a range, else Content-Length.
func blobSize(contentLength *int64, contentRange *string) int64 {
	if n, ok := rangeread.TotalSize(deref(contentRange)); ok {
		return n
	}
	return deref(contentLength)
}
