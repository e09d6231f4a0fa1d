package e2e

import (
	"os"
	"testing"

	"logbackup/playground"
)

func TestMain(m *testing.M) {
	// The playground starts its agents by running the current binary
	// again — this test binary, in these tests.
	playground.RunAgentIfAsked()
	os.Exit(m.Run())
}
