package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/pingcap/kvproto/pkg/encryptionpb"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	pd "github.com/tikv/pd/client"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/streamagent"
	"logbackup/streamagent/logfile"
	"logbackup/tests/eventually"
	"logbackup/tests/simcluster"
)

// waitLastError waits for a store's LastError of task pitr and returns it.
func waitLastError(t *testing.T, ctx context.Context, m *meta.Client) *brpb.StreamBackupError {
	t.Helper()
	return waitLastErrorWithin(t, m, 30*time.Second)
}

// waitLastErrorWithin waits up to d for a LastError of task pitr with the
// task paused as ERROR, and returns it.
func waitLastErrorWithin(t *testing.T, m *meta.Client, d time.Duration) *brpb.StreamBackupError {
	t.Helper()
	var last *brpb.StreamBackupError
	eventually.NoError(t, d, func(ctx context.Context) error {
		le, err := m.LastErrors(ctx, "pitr")
		if err != nil {
			return err
		}
		for _, e := range le {
			last = e
		}
		if last == nil {
			return errors.New("no LastError yet")
		}
		st, err := m.GetTask(ctx, "pitr")
		if err != nil {
			return err
		}
		if !st.Pause.V2.IsError() {
			return errors.New("a LastError but no ERROR pause yet")
		}
		return nil
	}, "a LastError and an ERROR pause")
	return last
}

// TestRegionErrorsThatNeverHeal: a TiKV of another cluster answers every
// registration with cluster_id_mismatch. Retrying forever (drop and
// rescan, as before) would hide a misconfigured agent behind a growing
// lag; the error is classified where it arrives and pauses the task with a
// LastError naming the code.
func TestRegionErrorsThatNeverHeal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "b")
	h := newHarness(t, ctx, simcluster.Config{Stores: 1}, "local://"+dir, 0)
	// A storage without an owner record (as TiDB's BR leaves one): with
	// it, the agent's first flush could also stop on the record naming a
	// cluster other than the one the agent was told, which is not what
	// this test is about.
	if err := os.Remove(filepath.Join(dir, logfile.OwnerFile)); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	_, stop := h.agent(1, reg, func(cfg *streamagent.Config) { cfg.ClusterID = h.c.ClusterID() + 1 })
	defer stop()
	e := waitLastError(t, ctx, h.m)
	if e.ErrorCode != "KV:LogBackup:ClusterIDMismatch" || !strings.Contains(e.ErrorMessage, "[store = 1]") {
		t.Fatalf("LastError %s: %s", e.ErrorCode, e.ErrorMessage)
	}
	if n := testutil.ToFloat64(counterVec(t, reg, "logbackup_agent_fatal_errors_total", "KV:LogBackup:ClusterIDMismatch")); n != 1 {
		t.Fatalf("fatal errors counted: %v", n)
	}
}

// TestEncryptedTaskRefused: a task whose info asks for log encryption is
// never written in plaintext: the agent refuses it with a LastError that
// says so, and writes no data file.
func TestEncryptedTaskRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "b")
	h := newHarness(t, ctx, simcluster.Config{Stores: 1}, "local://"+dir, 0)
	// What BR ≥ 8.4 writes for `--log.crypter.method aes128-ctr`.
	st, err := h.m.GetTask(ctx, "pitr")
	if err != nil {
		t.Fatal(err)
	}
	info := st.Info
	info.SecurityConfig = &brpb.StreamBackupTaskSecurityConfig{Encryption: &brpb.StreamBackupTaskSecurityConfig_PlaintextDataKey{
		PlaintextDataKey: &brpb.CipherInfo{CipherType: encryptionpb.EncryptionMethod_AES128_CTR, CipherKey: []byte("0123456789abcdef")}}}
	raw, err := meta.EncodeTaskInfo(info)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.etcd.Client(t).Put(ctx, meta.InfoKey("pitr"), string(raw)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.c.Put(ctx, []byte("t1"), []byte("secret")); err != nil {
		t.Fatal(err)
	}
	_, stop := h.agent(1, nil, nil)
	defer stop()
	e := waitLastError(t, ctx, h.m)
	if e.ErrorCode != "KV:LogBackup:Encryption" || !strings.Contains(e.ErrorMessage, "encryption") {
		t.Fatalf("LastError %s: %s", e.ErrorCode, e.ErrorMessage)
	}
	if strings.Contains(e.ErrorMessage, "0123456789abcdef") {
		t.Fatal("the data key leaked into the LastError")
	}
	var logs []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".log") {
			logs = append(logs, p)
		}
		return nil
	})
	if len(logs) > 0 {
		t.Fatalf("data written for an encrypted task: %v", logs)
	}
}

// TestRetryBudgetKeepsTheCode: a retryable error past the budget pauses
// the task with its own code (what failed), the budget in the message.
func TestRetryBudgetKeepsTheCode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	h := newHarness(t, ctx, simcluster.Config{Stores: 1}, "local://"+filepath.Join(dir, "b"), 0)
	_, stop := h.agent(1, nil, func(cfg *streamagent.Config) {
		cfg.RetryBudget = streamagent.RetryBudget{Attempts: 2, Duration: time.Hour}
		cfg.PD = &failingTSO{Client: h.c.PD()}
	})
	defer stop()
	if _, err := h.c.Put(ctx, []byte("t1"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	e := waitLastError(t, ctx, h.m)
	if e.ErrorCode != "KV:LogBackup:Pd" || !strings.Contains(e.ErrorMessage, "retry budget exhausted") {
		t.Fatalf("LastError %s: %s", e.ErrorCode, e.ErrorMessage)
	}
	_ = br.Stop(ctx, h.env(), "pitr", io.Discard)
}

func counterVec(t *testing.T, reg *prometheus.Registry, name, code string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == code {
					c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
					c.Add(m.GetCounter().GetValue())
					return c
				}
			}
		}
	}
	t.Fatalf("no %s{%s}", name, code)
	return nil
}

var errNoTSO = errors.New("injected: PD has no TSO leader")

// failingTSO is PD whose TSO fails: every flush needs one.
type failingTSO struct{ pd.Client }

func (f *failingTSO) GetTS(context.Context) (int64, int64, error) {
	return 0, 0, fmt.Errorf("get ts: %w", errNoTSO)
}
