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
	b.WriteString("`br stream resume --task-name T --clear-error`. A pause by one of the codes under *Recovered automatically*\n")
	b.WriteString("below is resumed by the coordinator once the failing dependency answers again.\n\n")
	b.WriteString("| code | class | cause | what to do | TiKV code |\n|---|---|---|---|---|\n")
	codes := Codes()
	sort.Slice(codes, func(i, j int) bool { return codes[i] < codes[j] })
	for _, c := range codes {
		info := Lookup(c)
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s |\n", c, info.Class, info.Cause, info.Action, TiKVCode(c))
	}
	b.WriteString("\n## Recovered automatically\n\n")
	b.WriteString("A task paused by one of these codes (only ever through the retry budget: they are retryable) is not left for\n")
	b.WriteString("a person. The elected coordinator probes the dependency the code names — one prober per task, within a second of\n")
	b.WriteString("the pause, then every 5 s ±20% and never more than 10 s apart, for as long as the pause lasts — and resumes the\n")
	b.WriteString("task on the first healthy probe: LastErrors cleared and the pause removed in one transaction, fenced to the task's\n")
	b.WriteString("incarnation and to the pause it read. A long outage costs only probes (`logbackup_agent_recovery_probes_total`).\n")
	b.WriteString("What is bounded is resumes that fail again after a healthy probe (the task pauses again before its checkpoint\n")
	b.WriteString("passes the resume: a flapping or partial fault): 30 s, doubling, between them, and after 5 the task stays in\n")
	b.WriteString("ERROR with a LastError and pause payload saying \"automatic recovery gave up\", for a person to fix and\n")
	b.WriteString("`resume --clear-error`. `br stream status` shows the `auto-recovery` row, `br stream history` each resume and its\n")
	b.WriteString("outcome. Any other code, and a pause by a person, is never resumed automatically. See docs/ARCHITECTURE.md,\n")
	b.WriteString("automatic recovery.\n\n")
	b.WriteString("| code | probed | the probe |\n|---|---|---|\n")
	for _, r := range autoRecovered {
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", r.code, r.probed, r.probe)
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

// autoRecovered is what the coordinator recovers by itself and how
// (streamagent's recoverable table; TestRecoverableCodesDocumented in
// streamagent keeps the two in step).
var autoRecovered = []struct {
	code          Code
	probed, probe string
}{
	{CodeStorageUnavailable, "storage", "write, read back and delete a ~60-byte object under the task's prefix (3 requests, one attempt each)"},
	{CodeStorageThrottled, "storage", "the same"},
	{CodeEtcdUnavailable, "etcd", "one count-only linearizable `Get` of the task's info key (needs a quorum); while etcd is down the pause cannot even be written, so the first probe after it lands succeeds"},
	{CodePD, "pd", "one `GetTS`"},
	{CodeNetwork, "storage + pd + etcd", "the code does not say which dependency failed: each in turn, stopping at the first failure"},
	{CodeDeadline, "storage + pd + etcd", "the same"},
	{CodeGRPC, "storage + pd + etcd", "the same"},
}
