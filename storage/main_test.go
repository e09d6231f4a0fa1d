package storage_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind: a stuck
// retry, an upload still running, connections a closed storage kept.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
