package gcsjson

import (
	"context"
	"fmt"
	"net/http"

	"gocloud.dev/blob/driver"

	"logbackup/storage/internal/drvhttp"
	"logbackup/storage/internal/rangeread"
)

// NewRangeReader downloads the object's media (alt=media), with a Range
// header unless the whole object is asked for. A range that starts at or
// past the end is GCS's 416, which the storage reads as no bytes.
func (b *bucket) NewRangeReader(ctx context.Context, key string, offset, length int64, opts *driver.ReaderOptions) (driver.Reader, error) {
	if length == 0 {
		a, err := b.Attributes(ctx, key)
		if err != nil {
			return nil, err
		}
		return rangeread.EmptyOf(a, opts)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.objectURL(key)+"?alt=media", nil)
	if err != nil {
		return nil, err
	}
	if h := rangeread.Header(offset, length); h != "" {
		req.Header.Set("Range", h)
	}
	resp, err := b.send(req, http.StatusOK, http.StatusPartialContent)
	if err != nil {
		return nil, err
	}
	// 200 to a ranged read: a server that ignores Range sent the whole
	// object.
	r, err := rangeread.New(resp.Body, drvhttp.ReaderAttributes(resp), offset, length, resp.StatusCode == http.StatusOK)
	if err != nil {
		return nil, fmt.Errorf("gcs: %w", err)
	}
	if opts.BeforeRead != nil {
		if err := opts.BeforeRead(noAs); err != nil {
			resp.Body.Close()
			return nil, err
		}
	}
	return r, nil
}
