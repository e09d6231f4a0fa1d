package errs

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
)

var updateDoc = flag.Bool("update", false, "rewrite docs/ERRORS.md from the code table")

// TestErrorsDoc keeps docs/ERRORS.md in step with the code table: every
// code, its class, cause and action.
func TestErrorsDoc(t *testing.T) {
	var b strings.Builder
	b.WriteString("# Error codes\n\n")
	b.WriteString("Generated from `streamagent/errs` (`go test ./streamagent/errs -run TestErrorsDoc -update`).\n")
	b.WriteString("Codes keep TiKV's `KV:LogBackup:` namespace. **Retryable** errors are retried with backoff and\n")
	b.WriteString("counted in `logbackup_agent_errors_total{code}` / `logbackup_agent_retries_total{code}`; past the retry\n")
	b.WriteString("budget they become `KV:LogBackup:RetryBudgetExhausted`. **Fatal** errors write a LastError to\n")
	b.WriteString("`/tidb/br-stream/last-error/<task>/<store>`, pause the task with severity ERROR and count\n")
	b.WriteString("`logbackup_agent_fatal_errors_total{code}`. Fix the cause, then `br stream resume --task-name T --clear-error`;\n")
	b.WriteString("recoverable causes are resumed automatically once storage takes writes again.\n\n")
	b.WriteString("| code | class | cause | what to do |\n|---|---|---|---|\n")
	codes := Codes()
	sort.Slice(codes, func(i, j int) bool { return codes[i] < codes[j] })
	for _, c := range codes {
		info := Lookup(c)
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", c, info.Class, info.Cause, info.Action)
	}
	path := "../../docs/ERRORS.md"
	if *updateDoc {
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update)", err)
	}
	if string(got) != b.String() {
		t.Fatal("docs/ERRORS.md is out of date with the code table; run: go test ./streamagent/errs -run TestErrorsDoc -update")
	}
}
