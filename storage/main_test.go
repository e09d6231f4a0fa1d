package storage_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind: a stuck
// retry, an upload still running, connections a closed storage kept.
//
// One exception: the AWS SDK's credential cache fetches instance-metadata
// credentials on a goroutine detached from the caller's context (so one
// caller's cancel cannot fail the others) and bounded by the metadata
// client's own timeouts. TestS3MissingCredentialsDoNotHang returns while
// that fetch is still running, by design.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/aws/aws-sdk-go-v2/credentials/ec2rolecreds.(*Provider).Retrieve"))
}
