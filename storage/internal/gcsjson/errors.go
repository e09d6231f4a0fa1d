package gcsjson

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"

	"gocloud.dev/gcerrors"
	"google.golang.org/api/googleapi"
)

// ErrBucketNotExist marks a listing answered 404: a list names no object,
// so only the bucket can be missing. (Reads, deletes and attributes get
// the same 404 for a missing object as for a missing bucket.)
var ErrBucketNotExist = errors.New("gcs: bucket does not exist")

// errUnimplemented is what the driver answers for what it does not do.
var errUnimplemented = errors.New("gcs: not implemented by this driver")

// maxErrorBody bounds how much of an error answer is read: GCS's JSON
// error is small, a proxy's HTML page need not be.
const maxErrorBody = 64 << 10

// responseError turns a non-success answer into a *googleapi.Error, the
// type the Go client returned, so the storage's classification (status,
// reason) is unchanged. It reads and closes the body. The message is one
// line: errors end up in logs and in a task's LastError.
func responseError(resp *http.Response) error {
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &googleapi.Error{Code: resp.StatusCode}
	var env struct {
		Error struct {
			Message string `json:"message"`
			Errors  []struct {
				Reason string `json:"reason"`
			} `json:"errors"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &env) == nil && (env.Error.Message != "" || len(env.Error.Errors) > 0) {
		e.Message = oneLine(env.Error.Message, 300)
		if len(env.Error.Errors) > 0 {
			// The item's message equals the error's, so googleapi prints
			// "Error 404: msg, reason" on one line, not a details block.
			e.Errors = []googleapi.ErrorItem{{Reason: env.Error.Errors[0].Reason, Message: e.Message}}
		}
		return e
	}
	e.Message = http.StatusText(resp.StatusCode)
	if s := oneLine(string(body), 200); s != "" && !strings.EqualFold(s, e.Message) {
		e.Message += ": " + s
	}
	return e
}

// oneLine collapses whitespace runs (newlines included) to one space and
// cuts s to at most n bytes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}

// errorCode maps what the driver returned to gocloud's portable codes.
func errorCode(err error) gcerrors.ErrorCode {
	switch {
	case errors.Is(err, errUnimplemented):
		return gcerrors.Unimplemented
	case errors.Is(err, ErrBucketNotExist):
		return gcerrors.NotFound
	case errors.Is(err, context.Canceled):
		return gcerrors.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return gcerrors.DeadlineExceeded
	}
	var ge *googleapi.Error
	if !errors.As(err, &ge) {
		return gcerrors.Unknown
	}
	switch c := ge.Code; {
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

// sendError strips the query from a failed request's URL before it
// reaches an error message: a resumable session's upload_id lets anyone
// holding it write the object, so it is no less a secret than a token.
func sendError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil && u.RawQuery != "" {
			u.RawQuery = ""
			ue.URL = u.String()
		}
	}
	return err
}
