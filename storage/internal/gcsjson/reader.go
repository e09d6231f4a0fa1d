package gcsjson

import (
	"context"
	"fmt"
	"net/http"
	"strconv"

	"gocloud.dev/blob/driver"

	"logbackup/storage/internal/drvhttp"
	"logbackup/storage/internal/rangeread"
)

// NewRangeReader downloads the object's media (alt=media), with a Range
// header unless the whole object is asked for. A range that starts at or
// past the end is GCS's 416, which the storage reads as no bytes.
func (b *bucket) NewRangeReader(ctx context.Context, key string, offset, length int64, opts *driver.ReaderOptions) (driver.Reader, error) {
	if length == 0 {
		return b.emptyReader(ctx, key, opts)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.objectURL(key)+"?alt=media", nil)
	if err != nil {
		return nil, err
	}
	if offset > 0 || length > 0 {
		end := ""
		if length > 0 {
			end = strconv.FormatInt(offset+length-1, 10)
		}
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%s", offset, end))
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

// emptyReader serves a zero-length range: there is no empty Range header,
// and the object's attributes still say whether it exists.
func (b *bucket) emptyReader(ctx context.Context, key string, opts *driver.ReaderOptions) (driver.Reader, error) {
	a, err := b.Attributes(ctx, key)
	if err != nil {
		return nil, err
	}
	if opts.BeforeRead != nil {
		if err := opts.BeforeRead(noAs); err != nil {
			return nil, err
		}
	}
	return rangeread.Empty(driver.ReaderAttributes{ContentType: a.ContentType, ModTime: a.ModTime, Size: a.Size}), nil
}
