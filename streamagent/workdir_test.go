package streamagent

import (
	"os"
	"path/filepath"
	"testing"
)

// TestWorkDirsNeverShared: two agents of one store under one temp dir get
// their own directories; neither start removes the other's files; a
// directory left by a dead process (its lock free) is removed by the next
// agent; a clean exit removes its own.
func TestWorkDirsNeverShared(t *testing.T) {
	base := t.TempDir()
	a, err := claimWorkDir(base, 1)
	if err != nil {
		t.Fatal(err)
	}
	spill := filepath.Join(a.path, "pitr-7", "x.temp.log")
	if err := os.MkdirAll(filepath.Dir(spill), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(spill, []byte("buffered"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A crashed agent's leftovers: an owner file nobody locks.
	dead := filepath.Join(base, "store-1-dead")
	if err := os.MkdirAll(filepath.Join(dead, "pitr-3"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dead, ownerFile), []byte("pid 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Something that is not ours.
	other := filepath.Join(base, "unrelated")
	if err := os.MkdirAll(other, 0o700); err != nil {
		t.Fatal(err)
	}

	b, err := claimWorkDir(base, 1)
	if err != nil {
		t.Fatal(err)
	}
	if a.path == b.path {
		t.Fatal("two agents share one directory")
	}
	if _, err := os.Stat(spill); err != nil {
		t.Fatalf("the second agent's start removed the first one's spill file: %v", err)
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Fatalf("a dead agent's directory was left: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatalf("a directory that is not ours was removed: %v", err)
	}
	b.release()
	if _, err := os.Stat(b.path); !os.IsNotExist(err) {
		t.Fatalf("a clean exit left its directory: %v", err)
	}
	a.release()
	if entries, _ := os.ReadDir(base); len(entries) != 1 {
		t.Fatalf("left behind: %v", entries)
	}
}
