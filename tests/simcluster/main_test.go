package simcluster_test

import (
	"os"
	"testing"

	"github.com/pingcap/log"
	"go.uber.org/zap/zapcore"
)

func TestMain(m *testing.M) {
	// client-go logs every store resolution at INFO; keep test output
	// readable.
	log.SetLevel(zapcore.ErrorLevel)
	os.Exit(m.Run())
}
