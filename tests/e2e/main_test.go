package e2e

import (
	"flag"
	"os"
	"strconv"
	"testing"

	"logbackup/playground"
)

// parallelLongTests is how many of this package's parallel tests run at
// once when -test.parallel is not given. Its parallel tests each run their
// own cluster and spend most of their time waiting (outages, retry
// budgets, flush ticks), so Go's default of GOMAXPROCS (2 on the CI
// machine) left the package's wall time at the sum of their waits.
const parallelLongTests = 4

func TestMain(m *testing.M) {
	// The playground starts its agents by running the current binary
	// again — this test binary, in these tests.
	playground.RunAgentIfAsked()
	flag.Parse()
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "test.parallel" })
	if !given {
		if err := flag.Set("test.parallel", strconv.Itoa(parallelLongTests)); err != nil {
			panic(err)
		}
	}
	os.Exit(m.Run())
}
