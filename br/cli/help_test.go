package cli

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// ownFlags is the "Flags:" section of a command's help, without the
// "Global Flags:" that follow it.
func ownFlags(t *testing.T, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if code := Main(ctx, append(args, "--help"), &stdout, &stderr); code != 0 {
		t.Fatalf("br %v --help: exit %d: %s", args, code, stderr.String())
	}
	help := stdout.String()
	own, _, _ := strings.Cut(help, "Global Flags:")
	_, own, ok := strings.Cut(own, "\nFlags:\n")
	if !ok {
		t.Fatalf("br %v --help has no Flags section:\n%s", args, help)
	}
	return own
}

// TestCommandsListTheFlagsTheyNeed: a command's own help lists the root
// flags it needs (-s/--storage for those that read or write a storage,
// -u/--pd for those that need etcd), not only under "Global Flags", where
// they were lost among the twenty storage backend flags.
func TestCommandsListTheFlagsTheyNeed(t *testing.T) {
	for cmd, want := range map[string][]string{
		"start":    {"-s, --storage", "-u, --pd"},
		"status":   {"-u, --pd"},
		"pause":    {"-u, --pd"},
		"resume":   {"-u, --pd"},
		"stop":     {"-u, --pd"},
		"history":  {"-u, --pd"},
		"verify":   {"-s, --storage"},
		"truncate": {"-s, --storage"},
		"metadata": {"-s, --storage"},
	} {
		own := ownFlags(t, "stream", cmd)
		for _, w := range want {
			if !strings.Contains(own, w) {
				t.Errorf("`br stream %s --help` does not list %s among its own flags:\n%s", cmd, w, own)
			}
		}
	}
	// The flags still parse as before, in either place on the line.
	var stdout, stderr bytes.Buffer
	if code := Main(context.Background(), []string{"-s", "local:///nonexistent-dir-xyz", "log", "metadata"}, &stdout, &stderr); code == 0 ||
		strings.Contains(stderr.String(), "unknown") {
		t.Fatalf("-s before the command: exit %d, %s", code, stderr.String())
	}
}

// TestGCTTLTooShortRefused: a --gc-ttl that cannot hold GC back long
// enough (0, which used to mean 1800 s silently, or less than an agent
// flush plus a minute) is refused before anything connects, naming the
// minimum; the help says so too.
func TestGCTTLTooShortRefused(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	accepted := make(chan struct{}, 16)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			c.Close()
		}
	}()
	pd := lis.Addr().String()
	for _, args := range [][]string{
		{"stream", "start", "--task-name", "t", "-s", "local:///tmp/x", "--gc-ttl", "0"},
		{"stream", "start", "--task-name", "t", "-s", "local:///tmp/x", "--gc-ttl", "60"},
		{"stream", "start", "--task-name", "t", "-s", "local:///tmp/x", "--gc-ttl", "3m59s"},
		{"stream", "pause", "--task-name", "t", "--gc-ttl", "1"},
		{"stream", "pause", "--task-name", "t", "--gc-ttl", "0"},
	} {
		var stdout, stderr bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		code := Main(ctx, append(args, "-u", pd, "--dial-timeout", "2s"), &stdout, &stderr)
		cancel()
		if code == 0 || !strings.Contains(stderr.String(), "--gc-ttl") || !strings.Contains(stderr.String(), "at least 240 seconds") {
			t.Errorf("br %v: exit %d, stderr %q; want a refusal naming the 240 s minimum", args, code, stderr.String())
		}
	}
	select {
	case <-accepted:
		t.Fatal("br connected although its --gc-ttl was refused")
	default:
	}
	for _, cmd := range []string{"start", "pause"} {
		if own := ownFlags(t, "stream", cmd); !strings.Contains(own, "at least 240") {
			t.Errorf("`br stream %s --help` does not give --gc-ttl's minimum:\n%s", cmd, own)
		}
	}
}
