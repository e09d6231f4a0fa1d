package e2e

import (
	"strings"
	"testing"
)

// TestCLIExitCodes: a command group without a subcommand, an unknown
// subcommand and a command missing a required flag exit non-zero with a
// hint, never the help text and exit 0 (which a cron job would take for
// success).
func TestCLIExitCodes(t *testing.T) {
	r := brRun{t: t}
	dir := "local://" + t.TempDir()
	cases := []struct {
		name string
		want string
		args []string
	}{
		{"br alone", "missing command", nil},
		{"stream group", "missing subcommand", []string{"stream"}},
		{"log group", "missing subcommand", []string{"log"}},
		{"unknown subcommand", "unknown command", []string{"log", "bogus"}},
		{"unknown flag", "unknown flag", []string{"stream", "status", "--bogus"}},
		{"start without task", "--task-name", []string{"stream", "start", "--storage", dir}},
		{"pause without task", "--task-name", []string{"stream", "pause"}},
		{"resume without task", "--task-name", []string{"stream", "resume"}},
		{"stop without task", "--task-name", []string{"stream", "stop"}},
		{"history without task", "--task-name", []string{"stream", "history"}},
		{"verify without storage", "--storage", []string{"stream", "verify"}},
		{"truncate without until", "--until", []string{"log", "truncate", "--storage", dir, "-y"}},
		{"truncate without storage", "--storage", []string{"log", "truncate", "--until", "400036290571534337", "-y"}},
		{"metadata without storage", "--storage", []string{"stream", "metadata"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := brRun{t: t}.fails(c.want, c.args...)
			if !strings.Contains(res.stderr, "Hint:") {
				t.Fatalf("br %s: no hint in %q", strings.Join(c.args, " "), res.stderr)
			}
		})
	}
	// Help is still help.
	if out := r.ok("stream", "--help"); !strings.Contains(out, "truncate") {
		t.Fatalf("stream --help does not list truncate:\n%s", out)
	}
}
