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
	b.WriteString("Codes keep TiKV's `KV:LogBackup:` namespace; the last column names the TiKV code each corresponds to, so\n")
	b.WriteString("runbooks keyed on TiKV's codes keep working. **Retryable** errors are retried with backoff and counted in\n")
	b.WriteString("`logbackup_agent_errors_total{code}` / `logbackup_agent_retries_total{code}` (and `tikv_log_backup_errors{type}`).\n")
	b.WriteString("Past the retry budget (30 failures or 10 minutes) a retryable error becomes fatal and keeps its own code, with\n")
	b.WriteString("the budget in the message, as TiKV keeps `Io` after its flush-failure threshold. **Fatal** errors write a LastError\n")
	b.WriteString("to `/tidb/br-stream/last-error/<task>/<store>`, pause the task with severity ERROR and count\n")
	b.WriteString("`logbackup_agent_fatal_errors_total{code}` (and `tikv_log_backup_fatal_errors{type}`). Fix the cause, then\n")
	b.WriteString("`br stream resume --task-name T --clear-error`. A pause by a retryable code (the budget ran out) is resumed\n")
	b.WriteString("automatically once the failing dependency answers again (see docs/ARCHITECTURE.md, automatic recovery).\n\n")
	b.WriteString("| code | class | cause | what to do | TiKV code |\n|---|---|---|---|---|\n")
	codes := Codes()
	sort.Slice(codes, func(i, j int) bool { return codes[i] < codes[j] })
	for _, c := range codes {
		info := Lookup(c)
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s |\n", c, info.Class, info.Cause, info.Action, TiKVCode(c))
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
