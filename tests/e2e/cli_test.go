package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"logbackup/br/cli"
	"logbackup/meta"
	"logbackup/tests/s3test"
)

// brRun runs the br command line in-process, as a user would from a shell.
type brRun struct {
	t  *testing.T
	ep string
}

type result struct {
	code           int
	stdout, stderr string
}

func (r brRun) run(args ...string) result {
	r.t.Helper()
	var out, errb bytes.Buffer
	full := append([]string{}, args...)
	if r.ep != "" {
		full = append(full, "-u", r.ep)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code := cli.Main(ctx, full, &out, &errb)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

func (r brRun) ok(args ...string) string {
	r.t.Helper()
	res := r.run(args...)
	if res.code != 0 {
		r.t.Fatalf("br %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), res.code, res.stdout, res.stderr)
	}
	return res.stdout
}

func (r brRun) fails(wantInStderr string, args ...string) result {
	r.t.Helper()
	res := r.run(args...)
	if res.code == 0 {
		r.t.Fatalf("br %s: succeeded, want failure mentioning %q\nstdout: %s", strings.Join(args, " "), wantInStderr, res.stdout)
	}
	if !strings.Contains(res.stderr, wantInStderr) {
		r.t.Fatalf("br %s: stderr %q does not mention %q", strings.Join(args, " "), res.stderr, wantInStderr)
	}
	return res
}

// snapshot returns every key and value under /tidb/br-stream/.
func snapshot(t *testing.T, cli *clientv3.Client) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "/tidb/br-stream/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, kv := range resp.Kvs {
		m[string(kv.Key)] = string(kv.Value)
	}
	return m
}

func sameSnapshot(t *testing.T, what string, before, after map[string]string) {
	t.Helper()
	if len(before) != len(after) {
		t.Fatalf("%s changed etcd: %d keys before, %d after", what, len(before), len(after))
	}
	for k, v := range before {
		if after[k] != v {
			t.Fatalf("%s changed key %q", what, k)
		}
	}
}

type statusJSON struct {
	Name       string `json:"name"`
	Status     string `json:"status"`
	State      string `json:"state"`
	StartTS    uint64 `json:"start_ts"`
	Storage    string `json:"storage"`
	Checkpoint uint64 `json:"checkpoint"`
	Progress   []struct {
		StoreID    uint64 `json:"store_id"`
		Checkpoint uint64 `json:"checkpoint"`
	} `json:"progress"`
	LastErrors []struct {
		StoreID   uint64 `json:"store_id"`
		LastError struct {
			HappenAt     uint64 `json:"happen_at"`
			ErrorCode    string `json:"error_code"`
			ErrorMessage string `json:"error_message"`
			StoreID      uint64 `json:"store_id"`
		} `json:"last_error"`
	} `json:"last_errors"`
	TableFilter []string `json:"table_filter"`
}

func statusOf(t *testing.T, r brRun, task string) statusJSON {
	t.Helper()
	out := r.ok("stream", "status", "--task-name", task, "--json")
	var got []statusJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, out)
	}
	if len(got) != 1 || got[0].Name != task {
		t.Fatalf("status --json: want one task %q, got %s", task, out)
	}
	return got[0]
}

// TestCLILifecycle walks a task through start, an agent's error report,
// refused and accepted resumes, a manual pause and stop.
func TestCLILifecycle(t *testing.T) {
	r, cli, _ := cliCluster(t)
	mc := meta.NewClient(cli)
	dir := t.TempDir()
	storageURL := "local://" + filepath.Join(dir, "backup")

	if out := r.ok("stream", "status"); !strings.Contains(out, "No Task Yet") {
		t.Fatalf("empty status: %q", out)
	}
	out := r.ok("stream", "start", "--task-name", "pitr", "--storage", storageURL, "--start-ts", "2024-06-20 08:38:49+0000")
	if !strings.Contains(out, `"pitr" started`) {
		t.Fatalf("start output: %q", out)
	}
	for _, f := range []string{"backup.lock", "backupmeta"} {
		if _, err := os.Stat(filepath.Join(dir, "backup", f)); err != nil {
			t.Fatalf("start did not write %s: %v", f, err)
		}
	}

	table := r.ok("stream", "status", "--task-name", "pitr")
	for _, want := range []string{"name: pitr", "status: ● NORMAL", "start: 2024-06-20", "storage: local://", "checkpoint[global]: 2024-06-20", "gap="} {
		if !strings.Contains(table, want) {
			t.Fatalf("status table lacks %q:\n%s", want, table)
		}
	}
	st := statusOf(t, r, "pitr")
	if st.Status != "NORMAL" || st.StartTS == 0 || st.Checkpoint != st.StartTS || len(st.TableFilter) != 1 {
		t.Fatalf("status json: %+v", st)
	}

	// An agent on store 21 hits a fatal error: LastError + ERROR pause.
	ctx := context.Background()
	lastErr := &brpb.StreamBackupError{
		HappenAt: uint64(time.Now().UnixMilli()), ErrorCode: "KV:LogBackup:StorageAccessDenied",
		ErrorMessage: "[store = 21] access denied writing v1/...: fix the credentials", StoreId: 21,
	}
	if err := mc.ReportLastError(ctx, "pitr", lastErr); err != nil {
		t.Fatal(err)
	}
	if err := mc.PauseTask(ctx, "pitr", meta.NewErrorPause("tikv-21", 42, time.Now(), lastErr)); err != nil {
		t.Fatal(err)
	}
	if _, err := mc.AdvanceStoreCheckpoint(ctx, "pitr", 21, st.StartTS+10); err != nil {
		t.Fatal(err)
	}
	table = r.ok("log", "status", "--task-name", "pitr") // BR's spelling works too
	for _, want := range []string{
		"status: ○ ERROR", "error[store=21]: KV:LogBackup:StorageAccessDenied",
		"error-message[store=21]: [store = 21] access denied", "error-happen-at[store=21]:",
		"pause-operator: tikv-21", "pause-operator-pid: 42", "pause-payload[errcode]: KV:LogBackup:StorageAccessDenied",
		"checkpoint[store=21]:",
	} {
		if !strings.Contains(table, want) {
			t.Fatalf("error status lacks %q:\n%s", want, table)
		}
	}
	st = statusOf(t, r, "pitr")
	if st.Status != "ERROR" || len(st.LastErrors) != 1 || st.LastErrors[0].StoreID != 21 ||
		st.LastErrors[0].LastError.ErrorCode != lastErr.ErrorCode || len(st.Progress) != 1 || st.Progress[0].StoreID != 21 {
		t.Fatalf("error status json: %+v", st)
	}

	before := snapshot(t, cli)
	res := r.fails("--clear-error", "stream", "resume", "--task-name", "pitr")
	if !strings.Contains(res.stdout, "store 21: KV:LogBackup:StorageAccessDenied") {
		t.Fatalf("refused resume does not show the error: %q", res.stdout)
	}
	sameSnapshot(t, "refused resume", before, snapshot(t, cli))

	r.ok("stream", "resume", "--task-name", "pitr", "--clear-error")
	if st = statusOf(t, r, "pitr"); st.Status != "NORMAL" || len(st.LastErrors) != 0 {
		t.Fatalf("after resume --clear-error: %+v", st)
	}
	for k := range snapshot(t, cli) {
		if strings.HasPrefix(k, "/tidb/br-stream/last-error/") || strings.HasPrefix(k, "/tidb/br-stream/pause/") {
			t.Fatalf("key %q left after resume --clear-error", k)
		}
	}
	if out := r.ok("stream", "resume", "--task-name", "pitr"); !strings.Contains(out, "active already") {
		t.Fatalf("resume of a running task: %q", out)
	}

	r.ok("stream", "pause", "--task-name", "pitr", "--message", "maintenance window")
	table = r.ok("stream", "status", "--task-name", "pitr")
	for _, want := range []string{"status: ● PAUSE", "pause-payload: maintenance window", "pause-operator-pid:"} {
		if !strings.Contains(table, want) {
			t.Fatalf("paused status lacks %q:\n%s", want, table)
		}
	}
	r.fails("paused already", "stream", "pause", "--task-name", "pitr")
	r.ok("stream", "resume", "--task-name", "pitr") // a manual pause needs no --clear-error
	if st = statusOf(t, r, "pitr"); st.Status != "NORMAL" {
		t.Fatalf("after manual resume: %+v", st)
	}

	r.ok("stream", "stop", "--task-name", "pitr")
	if left := snapshot(t, cli); len(left) != 0 {
		t.Fatalf("stop left keys: %v", left)
	}
}

// TestCLIBadInputs checks that each bad input gets a clear error and leaves
// etcd exactly as it was.
func TestCLIBadInputs(t *testing.T) {
	r, cli, _ := cliCluster(t)
	dir := t.TempDir()
	good := "local://" + filepath.Join(dir, "good")
	r.ok("stream", "start", "--task-name", "pitr", "--storage", good)

	notADir := filepath.Join(dir, "file")
	if err := os.WriteFile(notADir, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	s3 := s3test.Start(t, "exists")
	cases := []struct {
		name string
		want string
		args []string
	}{
		{"bad task name", "invalid task name", []string{"stream", "start", "--task-name", "bad-name!", "--storage", good}},
		{"long task name", "at most 128", []string{"stream", "start", "--task-name", strings.Repeat("x", 129), "--storage", good}},
		{"datetime without a zone", "must set timezone", []string{"stream", "start", "--task-name", "t2", "--storage", good, "--start-ts", "2024-01-01 00:00:00"}},
		{"missing task name", "--task-name", []string{"stream", "start", "--storage", good}},
		{"duplicate task", "only one task", []string{"stream", "start", "--task-name", "other", "--storage", "local://" + filepath.Join(dir, "other")}},
		{"unknown task pause", `"nope" not found`, []string{"stream", "pause", "--task-name", "nope"}},
		{"unknown task resume", `"nope" not found`, []string{"stream", "resume", "--task-name", "nope"}},
		{"unknown task stop", `"nope" not found`, []string{"stream", "stop", "--task-name", "nope"}},
		{"unknown task status", `"nope" not found`, []string{"stream", "status", "--task-name", "nope"}},
		{"bad start ts", "invalid --start-ts", []string{"stream", "start", "--task-name", "t2", "--storage", good, "--start-ts", "yesterday"}},
		{"future start ts", "after the current time", []string{"stream", "start", "--task-name", "t2", "--storage", good, "--start-ts", "2037-01-01 00:00:00+0000"}},
		{"bad end ts", "--end-ts", []string{"stream", "start", "--task-name", "t2", "--storage", good, "--end-ts", "1"}},
		{"unknown scheme", "invalid storage URL", []string{"stream", "start", "--task-name", "t2", "--storage", "ftp://host/x"}},
		{"relative local path", "invalid storage URL", []string{"stream", "start", "--task-name", "t2", "--storage", "local://relative/path"}},
		{"missing bucket", "invalid storage URL", []string{"stream", "start", "--task-name", "t2", "--storage", "s3:///prefix"}},
		{"mem storage", "cannot hold a task", []string{"stream", "start", "--task-name", "t2", "--storage", "mem://"}},
		{"bad filter", "invalid --filter", []string{"stream", "start", "--task-name", "t2", "--storage", good, "--filter", "db.t\\x"}},
		{"unknown flag", "unknown flag", []string{"stream", "status", "--bogus"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := snapshot(t, cli)
			r := brRun{t: t, ep: r.ep}
			r.fails(c.want, c.args...)
			sameSnapshot(t, c.name, before, snapshot(t, cli))
		})
	}

	// Storage failures need no running task to be refused first.
	r.ok("stream", "stop", "--task-name", "pitr")
	storageCases := []struct {
		name string
		url  string
	}{
		{"unwritable local storage", "local://" + filepath.Join(notADir, "sub")},
		{"s3 bucket missing", s3.URL("missing", "log")},
	}
	for _, c := range storageCases {
		t.Run(c.name, func(t *testing.T) {
			before := snapshot(t, cli)
			r := brRun{t: t, ep: r.ep}
			res := r.fails("storage", "stream", "start", "--task-name", "t3", "--storage", c.url)
			if !strings.Contains(res.stderr, "Hint:") {
				t.Fatalf("no hint: %q", res.stderr)
			}
			sameSnapshot(t, c.name, before, snapshot(t, cli))
		})
	}
}

// TestCLIUnreachableEtcd: a dead endpoint is reported within the dial
// timeout, with a non-zero exit code.
func TestCLIUnreachableEtcd(t *testing.T) {
	r := brRun{t: t}
	began := time.Now()
	res := r.fails("cannot connect to etcd", "stream", "status", "-u", "127.0.0.1:1", "--dial-timeout", "1s")
	if took := time.Since(began); took > 10*time.Second {
		t.Fatalf("unreachable etcd took %s to report", took)
	}
	if !strings.Contains(res.stderr, "Hint:") {
		t.Fatalf("no hint: %q", res.stderr)
	}
}

// TestCLICorruptValues puts garbage under each key kind of a task. One
// corrupt record never locks the operator out: status shows it (key, why)
// with the rest of the task and exits 0; the commands that act on the
// task refuse with an error naming the key and change nothing, except the
// ones that repair: resume --clear-error replaces a corrupt pause or last
// error, and stop removes whatever the task's keys hold.
func TestCLICorruptValues(t *testing.T) {
	garbage := "\xff\x00not-a-valid-value\x01\x02\x03"
	future := string([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) // a checkpoint ts of 0xFF…FF
	keys := []struct {
		kind, key, value string
		refused          [][]string // fail naming the key, change nothing
		repair           []string   // then succeeds
	}{
		{"info", "/tidb/br-stream/info/pitr", garbage, [][]string{{"stream", "pause", "--task-name", "pitr"}, {"stream", "resume", "--task-name", "pitr", "--clear-error"}},
			[]string{"stream", "stop", "--task-name", "pitr"}},
		{"pause", "/tidb/br-stream/pause/pitr", "{not json", [][]string{{"stream", "resume", "--task-name", "pitr"}},
			[]string{"stream", "resume", "--task-name", "pitr", "--clear-error"}},
		{"last error", "/tidb/br-stream/last-error/pitr/1", garbage, [][]string{{"stream", "resume", "--task-name", "pitr"}},
			[]string{"stream", "resume", "--task-name", "pitr", "--clear-error"}},
		{"history", "", garbage, nil, []string{"stream", "stop", "--task-name", "pitr"}},
		{"store checkpoint", "/tidb/br-stream/checkpoint/pitr/store/1", garbage, nil, []string{"stream", "stop", "--task-name", "pitr"}},
		{"global checkpoint", "/tidb/br-stream/checkpoint/pitr/central_global", future, nil, []string{"stream", "stop", "--task-name", "pitr"}},
		{"storage checkpoint", "/tidb/br-stream/storage-checkpoint/pitr/1", garbage, nil, []string{"stream", "stop", "--task-name", "pitr"}},
	}
	for _, k := range keys {
		t.Run(k.kind, func(t *testing.T) {
			r, cli, _ := cliCluster(t)
			r.ok("stream", "start", "--task-name", "pitr", "--storage", "local://"+t.TempDir())
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			key := k.key
			if key == "" { // one record of the current incarnation's history
				st, err := meta.NewClient(cli).GetTask(ctx, "pitr")
				if err != nil {
					t.Fatal(err)
				}
				key = meta.HistoryPrefix("pitr", st.Incarnation) + "00000000000000000001-00000000000000000001-1"
			}
			if k.kind == "last error" || k.kind == "pause" {
				r.ok("stream", "pause", "--task-name", "pitr")
			}
			if _, err := cli.Put(ctx, key, k.value); err != nil {
				t.Fatal(err)
			}
			table := r.ok("stream", "status", "--task-name", "pitr")
			if !strings.Contains(table, "corrupt[1]") || !strings.Contains(table, key) {
				t.Fatalf("status does not show the corrupt record %s:\n%s", key, table)
			}
			js := r.ok("stream", "status", "--task-name", "pitr", "--json")
			if !strings.Contains(js, `"corrupt_records":[{"key":`) {
				t.Fatalf("status --json lacks corrupt_records: %s", js)
			}
			hist := r.ok("stream", "history", "--task-name", "pitr")
			if k.kind == "history" && !strings.Contains(hist, "unreadable record "+key) {
				t.Fatalf("history does not show the unreadable record:\n%s", hist)
			}
			before := snapshot(t, cli)
			for _, args := range k.refused {
				res := r.fails("pitr", args...)
				if !strings.Contains(res.stderr+res.stdout, "info") && !strings.Contains(res.stderr+res.stdout, key) && !strings.Contains(res.stderr, "--clear-error") {
					t.Fatalf("br %v: error says neither the key nor the way out: %q", args, res.stderr)
				}
			}
			sameSnapshot(t, fmt.Sprintf("refused commands on corrupt %s", k.kind), before, snapshot(t, cli))
			r.ok(k.repair...)
			if k.repair[1] == "stop" {
				if left := snapshot(t, cli); len(left) > 0 {
					for key := range left {
						if !strings.Contains(key, "/stream-agent/agents/") {
							t.Fatalf("stop left %s", key)
						}
					}
				}
				return
			}
			if table := r.ok("stream", "status", "--task-name", "pitr"); strings.Contains(table, "corrupt[") || !strings.Contains(table, "NORMAL") {
				t.Fatalf("after the repair:\n%s", table)
			}
		})
	}
}

// TestCLIHidesCredentials: a secret in the storage URL never reaches status
// output, start output or errors.
func TestCLIHidesCredentials(t *testing.T) {
	r, _, _ := cliCluster(t)
	s3 := s3test.Start(t, "bk")
	url := s3.URL("bk", "log")
	if !strings.Contains(url, "secret") {
		t.Fatalf("fixture URL carries no secret to hide: %s", url)
	}
	secret := secretOf(t, url)
	out := r.ok("stream", "start", "--task-name", "pitr", "--storage", url)
	table := r.ok("stream", "status")
	js := r.ok("stream", "status", "--json")
	// An error path that echoes the URL.
	res := r.run("stream", "start", "--task-name", "pitr2", "--storage", strings.Replace(url, "bk", "missing", 1))
	for what, s := range map[string]string{"start": out, "status": table, "json": js, "error": res.stderr + res.stdout} {
		if strings.Contains(s, secret) {
			t.Fatalf("%s output leaks the secret:\n%s", what, s)
		}
	}
	if !strings.Contains(table, "s3://bk/log") {
		t.Fatalf("status does not show the storage: %s", table)
	}
}

// secretOf extracts the secret-access-key parameter of an s3 URL.
func secretOf(t *testing.T, url string) string {
	t.Helper()
	for _, kv := range strings.Split(url[strings.Index(url, "?")+1:], "&") {
		k, v, _ := strings.Cut(kv, "=")
		if k == "secret-access-key" || k == "secret_access_key" {
			return v
		}
	}
	t.Fatalf("no secret-access-key in %s", url)
	return ""
}

// TestCLIUnknownStorageParameterWarns: as BR, an unknown URL parameter is
// ignored with a warning naming it (never its value), not refused.
func TestCLIUnknownStorageParameterWarns(t *testing.T) {
	r, _, _ := cliCluster(t)
	out := r.ok("stream", "start", "--task-name", "pitr", "--storage", "local://"+t.TempDir()+"?acess-key=SECRETVALUE")
	if !strings.Contains(out, "warning:") || !strings.Contains(out, "acess-key") || strings.Contains(out, "SECRETVALUE") {
		t.Fatalf("start output: %s", out)
	}
}
