package s3driver

import (
	"context"
	"fmt"
	"net/http"

	"gocloud.dev/blob/driver"

	"logbackup/storage/internal/drvhttp"
	"logbackup/storage/internal/rangeread"
)

// NewRangeReader is GET Object, with a Range header unless the whole
// object is asked for. A range that starts at or past the end is S3's
// 416 InvalidRange, which the storage reads as no bytes.
func (b *bucket) NewRangeReader(ctx context.Context, key string, offset, length int64, opts *driver.ReaderOptions) (driver.Reader, error) {
	if length == 0 {
		a, err := b.Attributes(ctx, key)
		if err != nil {
			return nil, err
		}
		return rangeread.EmptyOf(a, opts)
	}
	r := request{method: http.MethodGet, u: b.objectURL(key, nil), header: http.Header{}}
	if h := rangeread.Header(offset, length); h != "" {
		r.header.Set("Range", h)
	}
	resp, err := b.send(ctx, r, http.StatusOK, http.StatusPartialContent)
	if err != nil {
		return nil, err
	}
	// 200 to a ranged read: a server that ignores Range sent the whole
	// object.
	rr, err := rangeread.New(resp.Body, drvhttp.ReaderAttributes(resp), offset, length, resp.StatusCode == http.StatusOK)
	if err != nil {
		return nil, fmt.Errorf("s3: %w", err)
	}
	if opts != nil && opts.BeforeRead != nil {
		if err := opts.BeforeRead(noAs); err != nil {
			resp.Body.Close()
			return nil, err
		}
	}
	return rr, nil
}
