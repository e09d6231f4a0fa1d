// Package rangeread is what the storage's own blob drivers (gcsjson,
// azdriver) share to serve gocloud's range reads from an HTTP answer:
// the reader cut to the range asked for, and the object's whole size from
// Content-Range.
package rangeread

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"gocloud.dev/blob/driver"
)

// Reader is a driver.Reader over an answer's body.
type Reader struct {
	body  io.ReadCloser
	r     io.Reader // body, cut to the range asked for
	attrs driver.ReaderAttributes
}

var _ driver.Reader = (*Reader)(nil)

// New reads body as the range [offset, offset+length) of an object
// (length < 0: to its end). whole says the server sent the whole object:
// something between us and it ignored the Range header, so New skips to
// the offset rather than hand back the wrong bytes. On an error body is
// closed.
func New(body io.ReadCloser, attrs driver.ReaderAttributes, offset, length int64, whole bool) (*Reader, error) {
	r := &Reader{body: body, r: body, attrs: attrs}
	if whole && offset > 0 {
		if _, err := io.CopyN(io.Discard, body, offset); err != nil {
			body.Close()
			return nil, fmt.Errorf("skip to offset %d: %w", offset, err)
		}
	}
	if length >= 0 {
		r.r = io.LimitReader(body, length)
	}
	return r, nil
}

// Empty is a zero-length range of an object with attrs: there is no empty
// Range header, so the drivers ask for the attributes instead, which
// still say whether the object exists.
func Empty(attrs driver.ReaderAttributes) *Reader {
	return &Reader{body: http.NoBody, r: http.NoBody, attrs: attrs}
}

func (r *Reader) Read(p []byte) (int, error)           { return r.r.Read(p) }
func (r *Reader) Close() error                         { return r.body.Close() }
func (r *Reader) Attributes() *driver.ReaderAttributes { return &r.attrs }
func (r *Reader) As(any) bool                          { return false }

// TotalSize is the object's whole size from a Content-Range header
// ("bytes 10-14/27" is 27); false when there is none to read.
func TotalSize(contentRange string) (int64, bool) {
	i := strings.LastIndexByte(contentRange, '/')
	if i < 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(contentRange[i+1:], 10, 64)
	return n, err == nil
}

// Header is the Range header asking for [offset, offset+length) (length
// < 0: to the end), or "" for the whole object.
func Header(offset, length int64) string {
	if offset <= 0 && length < 0 {
		return ""
	}
	end := ""
	if length > 0 {
		end = strconv.FormatInt(offset+length-1, 10)
	}
	return fmt.Sprintf("bytes=%d-%s", offset, end)
}

// EmptyOf serves a zero-length range of the object with attributes a
// (the drivers ask for them: they still say whether it exists), after
// the read options' BeforeRead hook, which sees no SDK type.
func EmptyOf(a *driver.Attributes, opts *driver.ReaderOptions) (*Reader, error) {
	if opts != nil && opts.BeforeRead != nil {
		if err := opts.BeforeRead(func(any) bool { return false }); err != nil {
			return nil, err
		}
	}
	return Empty(driver.ReaderAttributes{ContentType: a.ContentType, ModTime: a.ModTime, Size: a.Size}), nil
}
