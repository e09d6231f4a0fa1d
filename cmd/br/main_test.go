package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"logbackup/tests/simcluster"
)

// TestMain lets a test run this binary's main as a child process, since
// what it changes is process-wide.
func TestMain(m *testing.M) {
	if os.Getenv("LOGBACKUP_BR_RUN_MAIN") == "1" {
		main()
	}
	os.Exit(m.Run())
}

// runBR runs `br args…` as a process and returns its stdout and stderr.
func runBR(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), "LOGBACKUP_BR_RUN_MAIN=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// TestClientLibraryLogs: the pd and TiKV clients log through a
// process-wide logger that writes to stdout unless told otherwise. In the
// br process their lines go to --log-file with the command's own, and
// without a log file nowhere: stdout carries the command's output only.
func TestClientLibraryLogs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := simcluster.Start(ctx, simcluster.Config{Stores: 1, ServePD: true, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.CreateDemoSchema(ctx); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	logPath := filepath.Join(dir, "br.log")
	// A filter makes start use both clients: PD's, and client-go's for the
	// schema.
	stdout, stderr, err := runBR(t, "log", "start", "--task-name", "pitr", "-u", c.PDAddr(), "-s", "local://"+filepath.Join(dir, "b"),
		"-f", "shop.*", "--log-file", logPath, "--check-requirements=false")
	if err != nil {
		t.Fatalf("start: %v\nstdout: %s\nstderr: %s", err, stdout, stderr)
	}
	if strings.Contains(stdout, "[INFO]") || strings.Contains(stdout, "[WARN]") || !strings.HasPrefix(stdout, "Table filter") {
		t.Fatalf("stdout carries more than the command's output:\n%s", stdout)
	}
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`msg="command started"`, `msg="table filter resolved"`, "[pd]", "[INFO]"} {
		if !strings.Contains(string(b), want) {
			t.Fatalf("the log file lacks %q:\n%s", want, b)
		}
	}

	stdout, stderr, err = runBR(t, "log", "status", "--json", "-u", c.PDAddr())
	if err != nil || !strings.HasPrefix(stdout, "[{") || strings.Count(stdout, "\n") != 1 {
		t.Fatalf("status --json without a log file: %v\nstdout: %s\nstderr: %s", err, stdout, stderr)
	}
}
