package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"logbackup/meta"
	"logbackup/storage"
	"logbackup/tests/s3test"
	"logbackup/tests/simcluster"
)

// TestBRDocsInvocations runs, in order, the `br log` command lines of BR's
// log backup manual (pingcap/docs br/br-pitr-manual.md, "TiDB Log Backup
// and PITR Command Manual") with their documented flags, spelled as the
// manual spells them (--flag=value, quoted datetimes), against the
// simulated cluster and the loopback S3 server, and checks the effect of
// each. Only the storage URL differs: the manual's bucket with the
// loopback endpoint added.
func TestBRDocsInvocations(t *testing.T) {
	s3Env(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s3 := s3test.Start(t, "backup-101")
	c, _ := demoCluster(t, ctx)
	pdIP := c.PDAddr()
	storageURL := s3.URL("backup-101", "logbackup")
	m := meta.NewClient(pdEtcd{c}.Client(t))
	r := brRun{t: t} // -u is in each row, as in the manual

	task := func(t *testing.T) *meta.TaskStatus {
		t.Helper()
		ts, err := m.GetTask(ctx, "pitr")
		if err != nil {
			t.Fatal(err)
		}
		return ts
	}
	expiresIn := func(t *testing.T, id string) time.Duration {
		t.Helper()
		sp, ok := c.ServiceSafePoints()[id]
		if !ok {
			t.Fatalf("no GC safepoint %q: %v", id, c.ServiceSafePoints())
		}
		return time.Until(sp.ExpiresAt).Round(time.Minute)
	}
	// A start in the past, after the schema exists (a restart resolves the
	// filter at the storage's checkpoint, which is this start).
	now, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	startedAt := time.UnixMilli(int64(now >> 18)).Add(-time.Millisecond)
	rows := []struct {
		doc   string
		args  []string
		check func(t *testing.T, out string)
	}{
		{"tiup br log start --task-name=pitr --pd=\"${PD_IP}:2379\" --storage='s3://backup-101/logbackup?access-key=${access-key}&secret-access-key=${secret-access-key}'",
			[]string{"log", "start", "--task-name=pitr", "--pd=" + pdIP, "--storage=" + storageURL,
				"--start-ts=" + startedAt.Format("2006-01-02 15:04:05.000-0700")},
			func(t *testing.T, out string) {
				ti := task(t).Info
				if s := ti.Storage.GetS3(); s.Bucket != "backup-101" || s.Prefix != "logbackup" || ti.TableFilter[0] != "*.*" {
					t.Fatalf("task info %+v", ti)
				}
				if got := time.UnixMilli(int64(ti.StartTs >> 18)); !got.Equal(startedAt) {
					t.Fatalf("start ts %s, want %s", got, startedAt)
				}
				st, err := storage.OpenURL(ctx, storageURL)
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				for _, f := range []string{"backup.lock", "backupmeta"} {
					if ok, err := st.Exists(ctx, f); !ok || err != nil {
						t.Fatalf("%s not written: %v", f, err)
					}
				}
				if got := expiresIn(t, startSafePointID(t, c)); got < 29*time.Minute || got > 30*time.Minute { // --gc-ttl default 1800
					t.Fatalf("start safepoint expires in %s, want 30 m", got)
				}
			}},
		{"tiup br log status --task-name=pitr --pd=\"${PD_IP}:2379\"",
			[]string{"log", "status", "--task-name=pitr", "--pd=" + pdIP},
			func(t *testing.T, out string) {
				for _, want := range []string{"name: pitr", "status: ● NORMAL", "storage: s3://backup-101/logbackup", "checkpoint[global]:"} {
					if !strings.Contains(out, want) {
						t.Fatalf("status lacks %q:\n%s", want, out)
					}
				}
				if strings.Contains(out, s3test.SecretKey) {
					t.Fatal("status shows the secret key")
				}
			}},
		{"tiup br log status --task-name=pitr --json (the manual's --json flag)",
			[]string{"log", "status", "--task-name=pitr", "--json", "--pd=" + pdIP},
			func(t *testing.T, out string) {
				var got []statusJSON
				if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 1 || got[0].Name != "pitr" || got[0].Status != "NORMAL" {
					t.Fatalf("status --json: %v\n%s", err, out)
				}
			}},
		{"tiup br log pause --task-name=pitr --pd=\"${PD_IP}:2379\"",
			[]string{"log", "pause", "--task-name=pitr", "--pd=" + pdIP},
			func(t *testing.T, out string) {
				if !task(t).Pause.Paused {
					t.Fatal("not paused")
				}
				if got := expiresIn(t, "pitr_pause_safepoint"); got < 24*time.Hour-time.Minute || got > 24*time.Hour { // --gc-ttl default 86400
					t.Fatalf("pause safepoint expires in %s, want 24h", got)
				}
			}},
		{"tiup br log resume --task-name=pitr --pd=\"${PD_IP}:2379\"",
			[]string{"log", "resume", "--task-name=pitr", "--pd=" + pdIP},
			func(t *testing.T, out string) {
				if task(t).Pause.Paused {
					t.Fatal("still paused")
				}
			}},
		{"tiup br log pause --task-name=pitr --gc-ttl 3600 (the manual's --gc-ttl int)",
			[]string{"log", "pause", "--task-name=pitr", "--gc-ttl", "3600", "--pd=" + pdIP},
			func(t *testing.T, out string) {
				if got := expiresIn(t, "pitr_pause_safepoint"); got < time.Hour-time.Minute || got > time.Hour {
					t.Fatalf("pause safepoint expires in %s, want 1h", got)
				}
			}},
		{"tiup br log resume --task-name=pitr", []string{"log", "resume", "--task-name=pitr", "--pd=" + pdIP}, nil},
		{"tiup br log metadata --storage='s3://backup-101/logbackup?access-key=${access-key}&secret-access-key=${secret-access-key}'",
			[]string{"log", "metadata", "--storage=" + storageURL},
			func(t *testing.T, out string) {
				want := fmt.Sprintf("[log-min-ts=%d]", task(t).Info.StartTs)
				if !strings.HasPrefix(out, `["log metadata"] [log-min-ts=`) || !strings.Contains(out, want) || !strings.Contains(out, "[log-max-ts=") {
					t.Fatalf("metadata: %s (want %s)", out, want)
				}
			}},
		{"tiup br log metadata with --s3.* flags (storage.md: flags instead of URL parameters; keys from AWS_* variables)",
			[]string{"log", "metadata", "-s", "s3://backup-101/logbackup", "--s3.endpoint=" + s3.Endpoint(), "--s3.region=" + s3test.Region},
			func(t *testing.T, out string) {
				if !strings.Contains(out, fmt.Sprintf("[log-min-ts=%d]", task(t).Info.StartTs)) {
					t.Fatalf("metadata through flags: %s", out)
				}
			}},
		{"tiup br log truncate --until='2022-07-26 21:20:00+0800' --storage='s3://backup-101/logbackup?...' --dry-run",
			[]string{"log", "truncate", "--until=2022-07-26 21:20:00+0800", "--storage=" + storageURL, "--dry-run"},
			func(t *testing.T, out string) {
				// 2022-07-26 21:20:00+0800 is 434855372390400000, before the log.
				for _, want := range []string{"We are going to truncate 0 files", "(434855372390400000)", "Dry run: nothing was changed."} {
					if !strings.Contains(out, want) {
						t.Fatalf("truncate --dry-run output lacks %q:\n%s", want, out)
					}
				}
			}},
		{"tiup br log truncate --until='2022-07-26 21:20:00+0800' --storage='s3://...' -y",
			[]string{"log", "truncate", "--until=2022-07-26 21:20:00+0800", "--storage=" + storageURL, "-y"},
			func(t *testing.T, out string) {
				st, err := storage.OpenURL(ctx, storageURL)
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				if ok, _ := st.Exists(ctx, "backupmeta"); !ok {
					t.Fatal("truncate to before the start removed the root backupmeta")
				}
			}},
		{"tiup br log stop --task-name=pitr --pd=\"${PD_IP}:2379\"",
			[]string{"log", "stop", "--task-name=pitr", "--pd=" + pdIP},
			func(t *testing.T, out string) {
				if keys := snapshot(t, pdEtcd{c}.Client(t)); len(keysUnder(keys, "/tidb/br-stream/info/")) != 0 {
					t.Fatalf("stop left %v", keys)
				}
			}},
		{"tiup br log start --task-name=pitr --pd ... --storage ... (restart in the original --storage directory: start-ts from the last checkpoint)",
			[]string{"log", "start", "--task-name=pitr", "--pd", pdIP, "--storage", storageURL, "-f", "shop.*"},
			func(t *testing.T, out string) {
				ti := task(t).Info
				if !strings.Contains(out, "continuing it from its last checkpoint") || len(ti.TableFilter) != 1 || ti.TableFilter[0] != "shop.*" {
					t.Fatalf("restart: %+v\n%s", ti, out)
				}
			}},
		{"tiup br log start --log.crypter.method aes128-ctr --log.crypter.key 0123456789abcdef0123456789abcdef (v8.4 encryption: refused, plaintext only)",
			[]string{"log", "start", "--task-name=pitr-with-encryption", "--pd", pdIP, "--storage", s3.URL("backup-101", "enc"),
				"--log.crypter.method", "aes128-ctr", "--log.crypter.key", "0123456789abcdef0123456789abcdef"},
			nil},
	}
	for i, row := range rows {
		ok := t.Run(fmt.Sprintf("%02d", i), func(t *testing.T) {
			t.Logf("BR manual: %s", row.doc)
			r := brRun{t: t, ep: r.ep}
			if strings.Contains(row.doc, "refused") {
				res := r.fails("not supported", row.args...)
				if !strings.Contains(res.stderr, "Hint:") {
					t.Fatalf("no hint: %s", res.stderr)
				}
				return
			}
			out := r.ok(row.args...)
			if row.check != nil {
				row.check(t, out)
			}
		})
		if !ok {
			t.FailNow() // later rows depend on the earlier ones
		}
	}
}

// startSafePointID is the id of the GC safepoint `start` set (br-<uuid>).
func startSafePointID(t *testing.T, c *simcluster.Cluster) string {
	t.Helper()
	for id := range c.ServiceSafePoints() {
		if strings.HasPrefix(id, "br-") {
			return id
		}
	}
	t.Fatalf("no br-* start safepoint: %v", c.ServiceSafePoints())
	return ""
}

func keysUnder(m map[string]string, prefix string) []string {
	var out []string
	for k := range m {
		if strings.HasPrefix(k, prefix) {
			out = append(out, k)
		}
	}
	return out
}
