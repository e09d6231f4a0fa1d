// Package drvhttp is what the storage's own HTTP blob drivers (s3driver,
// gcsjson) share: one-line error texts, URLs without their secrets, the
// attributes of a media answer, and the upload buffer's growth.
package drvhttp

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"

	"gocloud.dev/blob/driver"
	"gocloud.dev/gcerrors"

	"logbackup/storage/internal/rangeread"
)

// OneLine collapses whitespace runs (newlines included) to one space and
// cuts s to at most n bytes: errors end up in logs and in a task's
// LastError, one line each.
func OneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}

// StripQuery removes the query from a failed request's URL before it
// reaches an error message: an S3 multipart upload id or a GCS resumable
// session lets anyone holding it write the object, so it is no less a
// secret than a token.
func StripQuery(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil && u.RawQuery != "" {
			u.RawQuery = ""
			ue.URL = u.String()
		}
	}
	return err
}

// Drain reads what is left of a body (a little, so the connection can be
// reused) and closes it.
func Drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// ReaderAttributes reads the object's size (the total in Content-Range
// for a range), type and modification time from a media answer.
func ReaderAttributes(resp *http.Response) driver.ReaderAttributes {
	a := driver.ReaderAttributes{ContentType: resp.Header.Get("Content-Type")}
	if a.ContentType == "" {
		a.ContentType = "application/octet-stream"
	}
	if t, err := http.ParseTime(resp.Header.Get("Last-Modified")); err == nil {
		a.ModTime = t
	}
	if n, ok := rangeread.TotalSize(resp.Header.Get("Content-Range")); ok {
		a.Size = n
	} else if resp.ContentLength > 0 {
		a.Size = resp.ContentLength
	}
	return a
}

// Grow makes room in buf for k more bytes, never past limit (one part or
// chunk): a small object holds a small buffer.
func Grow(buf []byte, k, limit int) []byte {
	need := len(buf) + k
	if need <= cap(buf) {
		return buf
	}
	nb := make([]byte, len(buf), min(limit, max(need, 2*cap(buf), 4096)))
	copy(nb, buf)
	return nb
}

// ContextCode is gocloud's code for a context's end, and false for any
// other error.
func ContextCode(err error) (gcerrors.ErrorCode, bool) {
	switch {
	case errors.Is(err, context.Canceled):
		return gcerrors.Canceled, true
	case errors.Is(err, context.DeadlineExceeded):
		return gcerrors.DeadlineExceeded, true
	}
	return gcerrors.Unknown, false
}

// StatusCode is gocloud's portable code for a cloud service's HTTP status.
func StatusCode(status int) gcerrors.ErrorCode {
	switch c := status; {
	case c == http.StatusBadRequest, c == http.StatusRequestedRangeNotSatisfiable:
		return gcerrors.InvalidArgument
	case c == http.StatusUnauthorized, c == http.StatusForbidden:
		return gcerrors.PermissionDenied
	case c == http.StatusNotFound:
		return gcerrors.NotFound
	case c == http.StatusConflict:
		return gcerrors.AlreadyExists
	case c == http.StatusPreconditionFailed:
		return gcerrors.FailedPrecondition
	case c == http.StatusTooManyRequests:
		return gcerrors.ResourceExhausted
	case c == http.StatusNotImplemented:
		return gcerrors.Unimplemented
	case c >= 500:
		return gcerrors.Internal
	}
	return gcerrors.Unknown
}
