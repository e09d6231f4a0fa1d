package azdriver

import (
	"context"
	"errors"
	"net/http"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"gocloud.dev/gcerrors"
)

// errorCode maps what the SDK returned to gocloud's portable codes, as
// gocloud's azureblob did, with one exception: a host that does not
// resolve is not NotFound. The storage reads NotFound on a read as "the
// object does not exist" (ErrNotExist), and a caller may act on that
// (an owner check accepts a storage without an owner record), so a DNS
// failure must not look like a missing object; the storage classifies
// the *net.DNSError itself, as it does for writes.
func errorCode(err error) gcerrors.ErrorCode {
	switch {
	case errors.Is(err, errUnimplemented):
		return gcerrors.Unimplemented
	case errors.Is(err, context.Canceled):
		return gcerrors.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return gcerrors.DeadlineExceeded
	}
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		return gcerrors.Unknown
	}
	switch bloberror.Code(re.ErrorCode) {
	case bloberror.AuthenticationFailed:
		return gcerrors.PermissionDenied
	case bloberror.BlobAlreadyExists, bloberror.ConditionNotMet,
		bloberror.TargetConditionNotMet, bloberror.SourceConditionNotMet:
		return gcerrors.FailedPrecondition
	case bloberror.BlobNotFound:
		return gcerrors.NotFound
	}
	if re.StatusCode == http.StatusNotFound {
		// ContainerNotFound too: the storage tells it apart by the
		// error's code (IsBucketMissing).
		return gcerrors.NotFound
	}
	return gcerrors.Unknown
}

// errorAs sets *target to the SDK's answer in err's chain.
func errorAs(err error, target any) bool {
	p, ok := target.(**azcore.ResponseError)
	return ok && errors.As(err, p)
}
