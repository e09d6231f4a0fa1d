package gcsjson

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"gocloud.dev/blob/driver"
)

type reader struct {
	body  io.ReadCloser
	r     io.Reader // body, cut to the range asked for
	attrs driver.ReaderAttributes
}

func (r *reader) Read(p []byte) (int, error)           { return r.r.Read(p) }
func (r *reader) Close() error                         { return r.body.Close() }
func (r *reader) Attributes() *driver.ReaderAttributes { return &r.attrs }
func (r *reader) As(any) bool                          { return false }

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
	r := &reader{body: resp.Body, r: resp.Body, attrs: readerAttributes(resp)}
	if offset > 0 && resp.StatusCode == http.StatusOK {
		// The whole object came back: a server that ignores Range. Skip
		// to the offset rather than hand back the wrong bytes.
		if _, err := io.CopyN(io.Discard, resp.Body, offset); err != nil {
			resp.Body.Close()
			return nil, fmt.Errorf("gcs: skip to offset %d: %w", offset, err)
		}
	}
	if length > 0 {
		r.r = io.LimitReader(resp.Body, length)
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
	return &reader{body: http.NoBody, r: http.NoBody, attrs: driver.ReaderAttributes{
		ContentType: a.ContentType, ModTime: a.ModTime, Size: a.Size,
	}}, nil
}

// readerAttributes reads the object's size (the total in Content-Range
// for a range), type and modification time from a media answer.
func readerAttributes(resp *http.Response) driver.ReaderAttributes {
	a := driver.ReaderAttributes{ContentType: resp.Header.Get("Content-Type")}
	if a.ContentType == "" {
		a.ContentType = "application/octet-stream"
	}
	if t, err := http.ParseTime(resp.Header.Get("Last-Modified")); err == nil {
		a.ModTime = t
	}
	if cr := resp.Header.Get("Content-Range"); cr != "" {
		if i := strings.LastIndexByte(cr, '/'); i >= 0 {
			if n, err := strconv.ParseInt(cr[i+1:], 10, 64); err == nil {
				a.Size = n
			}
		}
	} else if resp.ContentLength > 0 {
		a.Size = resp.ContentLength
	}
	return a
}
