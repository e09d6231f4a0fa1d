package s3driver

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"gocloud.dev/gcerrors"

	"logbackup/storage/internal/drvhttp"
)

// Error is S3's answer to a request that failed: its HTTP status and the
// error document's code and message.
type Error struct {
	Method    string
	Status    int
	Code      string // S3's <Code>: "NoSuchKey", "AccessDenied", "SlowDown", …
	Message   string // one line
	RequestID string
}

func (e *Error) Error() string {
	s := fmt.Sprintf("s3 answered %s with %d %s", e.Method, e.Status, e.Code)
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.RequestID != "" {
		s += " (request id " + e.RequestID + ")"
	}
	return s
}

// ErrorCode is S3's error code (as smithy.APIError names it).
func (e *Error) ErrorCode() string { return e.Code }

// HTTPStatusCode is the answer's HTTP status.
func (e *Error) HTTPStatusCode() int { return e.Status }

// SendError is a request that got no answer, or an answer that could not
// be read whole: a refused or dropped connection, a reset, a timeout.
type SendError struct {
	Method string
	Err    error
}

func (e *SendError) Error() string { return "s3 " + e.Method + ": " + e.Err.Error() }
func (e *SendError) Unwrap() error { return e.Err }

// errUnimplemented is what the driver answers for what it does not do.
var errUnimplemented = errors.New("s3: not implemented by this driver")

// maxErrorBody bounds how much of an error answer is read: S3's XML
// error is small, a proxy's HTML page need not be.
const maxErrorBody = 64 << 10

// responseError turns a non-success answer into an *Error. It reads and
// closes the body. Only the code and the message are kept: S3 echoes the
// request back in some error documents (a signature mismatch's canonical
// request), and errors end up in logs and in a task's LastError.
func responseError(method string, resp *http.Response) error {
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &Error{Method: method, Status: resp.StatusCode, RequestID: resp.Header.Get("X-Amz-Request-Id")}
	var doc struct {
		Code      string `xml:"Code"`
		Message   string `xml:"Message"`
		RequestID string `xml:"RequestId"`
	}
	if len(bytes.TrimSpace(body)) > 0 && xml.Unmarshal(body, &doc) == nil && doc.Code != "" {
		e.Code, e.Message = doc.Code, drvhttp.OneLine(doc.Message, 300)
		if doc.RequestID != "" {
			e.RequestID = doc.RequestID
		}
		return e
	}
	// No error document: a HEAD, or something that is not S3 in between.
	switch resp.StatusCode {
	case http.StatusNotFound:
		e.Code = "NotFound"
	case http.StatusForbidden:
		e.Code = "Forbidden"
	default:
		e.Code = strings.ReplaceAll(http.StatusText(resp.StatusCode), " ", "")
		if s := drvhttp.OneLine(string(body), 200); s != "" && !strings.HasPrefix(s, "<") {
			e.Message = s
		}
	}
	return e
}

// errorInBody reads the error document S3 may send with a 200 answer to
// CompleteMultipartUpload: the request failed after the status was sent.
// It returns nil when body is not one. The status given to the error is
// the one the code would have come with (500 InternalError, 503
// SlowDown, 400 for a request S3 refuses), so it is retried or not as if
// it had come that way.
func errorInBody(method string, body []byte) error {
	var doc struct {
		XMLName xml.Name
		Code    string `xml:"Code"`
		Message string `xml:"Message"`
	}
	if xml.Unmarshal(body, &doc) != nil || doc.XMLName.Local != "Error" {
		return nil
	}
	status := http.StatusBadRequest
	switch doc.Code {
	case "InternalError":
		status = http.StatusInternalServerError
	case "SlowDown", "ServiceUnavailable":
		status = http.StatusServiceUnavailable
	}
	return &Error{Method: method, Status: status, Code: doc.Code, Message: drvhttp.OneLine(doc.Message, 300)}
}

// sendError is a failure to send or to read an answer, without the
// request's query (a multipart upload's id).
func sendError(method string, err error) error {
	err = drvhttp.StripQuery(err)
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err // the caller's deadline, not the network's failure
	}
	return &SendError{Method: method, Err: err}
}

// errorCode maps what the driver returned to gocloud's portable codes.
func errorCode(err error) gcerrors.ErrorCode {
	if errors.Is(err, errUnimplemented) {
		return gcerrors.Unimplemented
	}
	if c, ok := drvhttp.ContextCode(err); ok {
		return c
	}
	var e *Error
	if !errors.As(err, &e) {
		return gcerrors.Unknown
	}
	switch e.Code {
	case "NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchUpload":
		return gcerrors.NotFound
	case "PreconditionFailed":
		return gcerrors.FailedPrecondition
	}
	return drvhttp.StatusCode(e.Status)
}

// asError serves blob's ErrorAs for *Error and *SendError targets.
func asError(err error, target any) bool {
	switch t := target.(type) {
	case **Error:
		return errors.As(err, t)
	case **SendError:
		return errors.As(err, t)
	}
	return false
}

// etagMD5 is the object's MD5 when its ETag is one: a single-part upload
// without KMS encryption. A multipart ETag ("…-3") is not.
func etagMD5(etag string) []byte {
	s := strings.Trim(etag, `"`)
	if len(s) != 32 {
		return nil
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil
	}
	return b
}
