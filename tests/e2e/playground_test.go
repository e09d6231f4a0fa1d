package e2e

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"logbackup/br/playground"
)

// TestPlayground runs README's main job briefly: everything starts, the
// task runs, and the final verification passes. Then `br stream verify`
// reads the same storage through the CLI.
func TestPlayground(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	err := playground.Run(ctx, playground.Options{Dir: dir, EtcdAddr: "127.0.0.1:0", Duration: 3 * time.Second,
		Rate: 50, FlushInterval: 500 * time.Millisecond}, &out)
	if err != nil {
		t.Fatalf("playground: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "verify: OK") {
		t.Fatalf("no passing verify in:\n%s", out.String())
	}
	r := brRun{t: t}
	got := r.ok("stream", "verify", "--storage", "local://"+filepath.Join(dir, "backup"))
	for _, want := range []string{"checksums: all", "changes:", "restorable:", "chain proven unbroken"} {
		if !strings.Contains(got, want) {
			t.Fatalf("verify output lacks %q:\n%s", want, got)
		}
	}
	r.fails("missing --storage", "stream", "verify")

	// A flipped byte in any data file is caught.
	logs, _ := filepath.Glob(filepath.Join(dir, "backup", "v1", "*", "*", "*", "*.log"))
	if len(logs) == 0 {
		t.Fatal("no data files written")
	}
	b, err := os.ReadFile(logs[0])
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x55
	if err := os.WriteFile(logs[0], b, 0o644); err != nil {
		t.Fatal(err)
	}
	r.fails("verify failed", "stream", "verify", "--storage", "local://"+filepath.Join(dir, "backup"))
}
