package gcsjson

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"gocloud.dev/gcerrors"
	"google.golang.org/api/googleapi"

	"logbackup/storage/internal/drvhttp"
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
		e.Message = drvhttp.OneLine(env.Error.Message, 300)
		if len(env.Error.Errors) > 0 {
			// The item's message equals the error's, so googleapi prints
			// "Error 404: msg, reason" on one line, not a details block.
			e.Errors = []googleapi.ErrorItem{{Reason: env.Error.Errors[0].Reason, Message: e.Message}}
		}
		return e
	}
	e.Message = http.StatusText(resp.StatusCode)
	if s := drvhttp.OneLine(string(body), 200); s != "" && !strings.EqualFold(s, e.Message) {
		e.Message += ": " + s
	}
	return e
}

// errorCode maps what the driver returned to gocloud's portable codes.
func errorCode(err error) gcerrors.ErrorCode {
	switch {
	case errors.Is(err, errUnimplemented):
		return gcerrors.Unimplemented
	case errors.Is(err, ErrBucketNotExist):
		return gcerrors.NotFound
	}
	if c, ok := drvhttp.ContextCode(err); ok {
		return c
	}
	var ge *googleapi.Error
	if !errors.As(err, &ge) {
		return gcerrors.Unknown
	}
	return drvhttp.StatusCode(ge.Code)
}

// sendError strips the query from a failed request's URL (a resumable
// session's upload_id).
func sendError(err error) error { return drvhttp.StripQuery(err) }
