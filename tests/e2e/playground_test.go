package e2e

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"logbackup/playground"
)

// TestPlayground runs README's main job briefly: the cluster serving PD,
// one agent process per store, the task started through `br stream
// start`'s code, and the final verification passes. Then `br stream
// verify` reads the same storage through the CLI.
func TestPlayground(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	err := playground.Run(ctx, playground.Options{Dir: dir, Duration: 3 * time.Second, Rate: 50, FlushInterval: time.Second}, &out)
	if err != nil {
		t.Fatalf("playground: %v\n%s", err, out.String())
	}
	for _, want := range []string{"verify: OK", "agent of store 1: http://127.0.0.1:", "/metrics", filepath.Join(dir, "agent-1.log")} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("no %q in:\n%s", want, out.String())
		}
	}
	// The agents were processes of their own, with their own logs.
	logs, _ := filepath.Glob(filepath.Join(dir, "agent-*.log"))
	if len(logs) != 3 {
		t.Fatalf("agent logs: %v", logs)
	}
	b, err := os.ReadFile(logs[0])
	if err != nil || !bytes.Contains(b, []byte("stream agent started")) {
		t.Fatalf("agent log %s lacks the agent's start (%v):\n%s", logs[0], err, b)
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
	files, _ := filepath.Glob(filepath.Join(dir, "backup", "v1", "*", "*", "*", "*.log"))
	if len(files) == 0 {
		t.Fatal("no data files written")
	}
	b, err = os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x55
	if err := os.WriteFile(files[0], b, 0o644); err != nil {
		t.Fatal(err)
	}
	r.fails("verify failed", "stream", "verify", "--storage", "local://"+filepath.Join(dir, "backup"))
}
