package task

import (
	"os"
	"path/filepath"
	"testing"
)

// TestRunnerTempDirsAreTheirOwn: two runners of one task and incarnation
// (a paused one finishing its final flush, and the one a resume started)
// get different temp dirs, so the first one's cleanup leaves the second's
// alone.
func TestRunnerTempDirsAreTheirOwn(t *testing.T) {
	work := t.TempDir()
	old, err := runnerTempDir(work, "pitr", 4)
	if err != nil {
		t.Fatal(err)
	}
	resumed, err := runnerTempDir(work, "pitr", 4)
	if err != nil {
		t.Fatal(err)
	}
	if old == resumed {
		t.Fatalf("both runners got %s", old)
	}
	if err := os.WriteFile(filepath.Join(resumed, "spill"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(old) // the paused runner ends
	if _, err := os.Stat(filepath.Join(resumed, "spill")); err != nil {
		t.Fatalf("the resumed runner's temp file is gone after the old runner ended: %v", err)
	}
}
