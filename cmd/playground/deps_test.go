package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestReleaseBinariesLinkNoSimulator: br and streamagent, the binaries
// people deploy, link neither the simulated cluster (nor anything else
// under tests/) nor client-go's mock TiKV; only the playground does.
func TestReleaseBinariesLinkNoSimulator(t *testing.T) {
	deps := func(pkgs ...string) []string {
		t.Helper()
		out, err := exec.Command("go", append([]string{"list", "-deps"}, pkgs...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("go list: %v\n%s", err, out)
		}
		return strings.Fields(string(out))
	}
	forbidden := func(p string) bool {
		return strings.HasPrefix(p, "logbackup/tests/") || strings.Contains(p, "/mockstore") ||
			strings.Contains(p, "/mocktikv") || strings.HasSuffix(p, "client-go/v2/testutils")
	}
	for _, p := range deps("logbackup/cmd/br", "logbackup/cmd/streamagent") {
		if forbidden(p) {
			t.Errorf("a release binary links %s", p)
		}
	}
	// The check itself sees such packages where they are linked.
	found := false
	for _, p := range deps("logbackup/cmd/playground") {
		found = found || forbidden(p)
	}
	if !found {
		t.Fatal("the playground links no simulator either: the check cannot see it")
	}
}
