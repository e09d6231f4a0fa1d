package storage

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"strings"
	"syscall"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"gocloud.dev/gcerrors"
	"google.golang.org/api/googleapi"

	"logbackup/storage/internal/gcsjson"
	"logbackup/storage/internal/s3driver"
)

// ErrorKind is what a failed storage operation means to its caller, the
// same whichever backend failed: a read-only local disk and an S3 403 are
// both KindAccessDenied, a full disk and a bucket quota both KindQuota.
type ErrorKind int

const (
	KindOther        ErrorKind = iota // none of the below (a bad name, an unknown error)
	KindNotFound                      // the object, bucket or container does not exist
	KindAccessDenied                  // refused: permissions, credentials, a read-only filesystem
	KindQuota                         // out of space or over a quota or size limit
	KindThrottled                     // the service asked us to slow down; retried
	KindTransient                     // a server error, a timeout, a dropped connection; retried
)

func (k ErrorKind) String() string {
	switch k {
	case KindNotFound:
		return "not-found"
	case KindAccessDenied:
		return "access-denied"
	case KindQuota:
		return "quota"
	case KindThrottled:
		return "throttled"
	case KindTransient:
		return "transient"
	}
	return "other"
}

// Sentinels for errors.Is: every *OpError of that kind matches them.
var (
	ErrAccessDenied  = errors.New("storage: access denied")
	ErrQuotaExceeded = errors.New("storage: out of space or quota")
)

// Is lets errors.Is(err, ErrAccessDenied) and errors.Is(err,
// ErrQuotaExceeded) hold for every backend's failure of that kind.
func (e *OpError) Is(target error) bool {
	switch target {
	case ErrAccessDenied:
		return e.kind() == KindAccessDenied
	case ErrQuotaExceeded:
		return e.kind() == KindQuota
	}
	return false
}

// kind is Kind, or decided from the cause for an OpError built without
// one.
func (e *OpError) kind() ErrorKind {
	if e.Kind != KindOther {
		return e.Kind
	}
	return kindOf(e.Err)
}

// KindOf says what kind of failure err is. For an *OpError in the chain
// it is the kind the storage decided when the operation failed.
func KindOf(err error) ErrorKind {
	var op *OpError
	if errors.As(err, &op) {
		return op.kind()
	}
	return kindOf(err)
}

// Error codes cloud services answer for a full store, a quota or an
// object over a size limit (S3, Ceph, MinIO, Azure).
var quotaCodes = map[string]bool{
	"EntityTooLarge": true, "QuotaExceeded": true, "XMinioStorageFull": true, "StorageFull": true,
	"InsufficientStorage": true, "RequestBodyTooLarge": true, "ContentLengthLargerThanTierLimit": true,
	"BlockCountExceedsLimit": true, "storageQuotaExceeded": true,
}

// Error codes that mean the credentials or the policy refuse us,
// whatever HTTP status carries them (S3 answers some with 400).
var deniedCodes = map[string]bool{
	"AccessDenied": true, "AllAccessDisabled": true, "AccountProblem": true, "InvalidAccessKeyId": true,
	"SignatureDoesNotMatch": true, "InvalidToken": true, "ExpiredToken": true, "TokenRefreshRequired": true,
	"InvalidSecurity": true, "AuthenticationFailed": true, "AuthorizationFailure": true,
	"AuthorizationPermissionMismatch": true, "InsufficientAccountPermissions": true, "AccountIsDisabled": true,
	"InvalidAuthenticationInfo": true, "NoAuthenticationInformation": true, "forbidden": true,
}

// kindOf classifies a backend's raw error. Quota comes first: Ceph
// answers a full quota with 403 QuotaExceeded, which is no permission
// problem.
func kindOf(err error) ErrorKind {
	if err == nil {
		return KindOther
	}
	code, status := serviceCode(err), httpStatus(err)
	switch {
	case quotaCodes[code], status == http.StatusInsufficientStorage, status == http.StatusRequestEntityTooLarge,
		errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return KindQuota
	case errors.Is(err, ErrCredentials), deniedCodes[code], status == http.StatusForbidden, status == http.StatusUnauthorized,
		gcerrors.Code(err) == gcerrors.PermissionDenied,
		errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EROFS):
		// fs.ErrPermission is EACCES and EPERM.
		return KindAccessDenied
	case errors.Is(err, ErrNotExist), status == http.StatusNotFound, gcerrors.Code(err) == gcerrors.NotFound:
		return KindNotFound
	case status == http.StatusTooManyRequests, code == "Throttling", code == "ThrottlingException",
		code == "rateLimitExceeded", gcerrors.Code(err) == gcerrors.ResourceExhausted:
		// (S3's 503 SlowDown and Azure's 503 ServerBusy stay transient:
		// unavailable, as any 5xx.)
		return KindThrottled
	case transient(err):
		return KindTransient
	}
	return KindOther
}

// serviceCode is the error code a cloud service answered with (S3's
// <Code>, Azure's x-ms-error-code, GCS's first reason), or "".
func serviceCode(err error) string {
	var se *s3driver.Error
	if errors.As(err, &se) {
		return se.Code
	}
	var ze *azcore.ResponseError
	if errors.As(err, &ze) {
		return ze.ErrorCode
	}
	var ge *googleapi.Error
	if errors.As(err, &ge) && len(ge.Errors) > 0 {
		return ge.Errors[0].Reason
	}
	return ""
}

// azureError shortens the Azure SDK's error, whose message spans a dozen
// lines (the request, the response body), to one line for logs and
// LastError; the SDK's error stays reachable for errors.As.
type azureError struct {
	re  *azcore.ResponseError
	err error
}

func (e *azureError) Error() string {
	code := e.re.ErrorCode
	if code == "" {
		code = http.StatusText(e.re.StatusCode)
	}
	short := fmt.Sprintf("azure answered %d %s", e.re.StatusCode, code)
	if req := e.re.RawResponse; req != nil && req.Request != nil {
		short = req.Request.Method + " " + req.Request.URL.Path + ": " + short
	}
	// Keep what wraps the SDK's error ("gave up after 4 attempts: ").
	if full, sdk := e.err.Error(), e.re.Error(); strings.Contains(full, sdk) {
		return strings.Replace(full, sdk, short, 1)
	}
	return short
}

func (e *azureError) Unwrap() error { return e.err }

// shortAzure replaces an Azure SDK error's text with one line.
func shortAzure(err error) error {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return &azureError{re: re, err: err}
	}
	return err
}

// IsBucketMissing reports whether err says the bucket (S3, GCS) or the
// container (Azure) itself does not exist, as opposed to an object in it:
// the storage URL names something nobody has created yet.
func IsBucketMissing(err error) bool {
	switch serviceCode(err) {
	case "NoSuchBucket", "ContainerNotFound":
		return true
	}
	// A write has no object to miss: a write answered "not found" means
	// the bucket is missing. GCS says no more than 404 notFound to an
	// upload into a missing bucket.
	var op *OpError
	if errors.As(err, &op) && op.Op == "write" && KindOf(err) == KindNotFound {
		return true
	}
	// The GCS driver's own finding: a listing answered 404.
	return errors.Is(err, gcsjson.ErrBucketNotExist)
}
