package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	pd "github.com/tikv/pd/client"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/streamagent"
	"logbackup/tests/eventually"
	"logbackup/tests/simcluster"
)

// moveTxnSafePoint moves PD's txn safe point as TiDB's GC worker does at
// the start of a GC round (gc_worker's service safepoint), leaving the GC
// safe point behind, and fails unless it reached ts.
func moveTxnSafePoint(t *testing.T, ctx context.Context, pdc pd.Client, ts uint64) {
	t.Helper()
	got, err := pdc.UpdateServiceGCSafePoint(ctx, "gc_worker", math.MaxInt64, ts)
	if err != nil || got != ts {
		t.Fatalf("moving the txn safe point to %d: reached %d, %v", ts, got, err)
	}
}

// storageFiles lists every file under a local storage directory.
func storageFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// gcView is the GC part of `status --json`.
type gcView struct {
	Name         string `json:"name"`
	Status       string `json:"status"`
	Checkpoint   uint64 `json:"checkpoint"`
	GCSafePoint  uint64 `json:"gc_safepoint"`
	TxnSafePoint uint64 `json:"txn_safepoint"`
	GCPassed     bool   `json:"gc_safepoint_passed"`
	PDStores     []struct {
		StoreID       uint64 `json:"store_id"`
		Address       string `json:"address"`
		NoAgent       bool   `json:"no_agent"`
		LeaderRegions int    `json:"leader_regions"`
		Disconnected  bool   `json:"disconnected"`
	} `json:"pd_stores"`
}

func gcStatus(t *testing.T, r brRun, task string) gcView {
	t.Helper()
	out := r.ok("stream", "status", "--task-name", task, "--json")
	var got []gcView
	if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 1 {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return got[0]
}

// TestStartRefusedAtOrBelowTxnSafePoint: during a GC round PD's txn safe
// point runs ahead of its GC safe point, and PD refuses any barrier below
// it. `start` refuses a start at or below the GC safe point and one between
// the two safe points (rc 1, the reason, the next step) and writes nothing
// to storage, etcd or PD; a plain start on the same storage then works.
func TestStartRefusedAtOrBelowTxnSafePoint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, cli, c := cliCluster(t)
	dir := filepath.Join(t.TempDir(), "b")
	gcTS, _ := c.TSO(ctx)
	if sp, err := c.SetGCSafePoint(ctx, gcTS); err != nil || sp != gcTS {
		t.Fatalf("GC safe point %d, %v", sp, err)
	}
	between, _ := c.TSO(ctx)
	txnTS, _ := c.TSO(ctx)
	moveTxnSafePoint(t, ctx, c.PD(), txnTS)
	if gc := c.GCSafePoint(); gc != gcTS {
		t.Fatalf("the GC safe point moved to %d with the txn safe point", gc)
	}
	if got, err := meta.TxnSafePoint(ctx, c.PD()); err != nil || got != txnTS {
		t.Fatalf("meta.TxnSafePoint = %d, %v; want %d", got, err, txnTS)
	}
	etcdBefore, spsBefore := snapshot(t, cli), safePoints(c)
	for _, tc := range []struct {
		what string
		ts   uint64
	}{{"between the GC and the txn safe point", between}, {"at the txn safe point", txnTS}, {"at the GC safe point", gcTS}, {"below the GC safe point", gcTS - 1}} {
		res := r.fails("txn safe point", "stream", "start", "--task-name", "pitr", "--storage", "local://"+dir, "--start-ts", fmt.Sprint(tc.ts))
		if res.code != 1 || !strings.Contains(res.stderr, "omit it to start now") || !strings.Contains(res.stderr, br.FormatTS(txnTS, time.Local)) {
			t.Fatalf("%s: rc %d, stderr %q: want rc 1 naming the txn safe point as a datetime and the next step", tc.what, res.code, res.stderr)
		}
		if files := storageFiles(t, dir); len(files) != 0 {
			t.Fatalf("%s: the refused start wrote to storage: %v", tc.what, files)
		}
		sameSnapshot(t, "a refused start ("+tc.what+")", etcdBefore, snapshot(t, cli))
		if sps := safePoints(c); strings.Join(sps, ",") != strings.Join(spsBefore, ",") {
			t.Fatalf("%s: the refused start changed PD's service safepoints: %v → %v", tc.what, spsBefore, sps)
		}
	}
	// The hint's own advice works on the same storage.
	r.ok("stream", "start", "--task-name", "pitr", "--storage", "local://"+dir)
	if st := statusOf(t, r, "pitr"); st.StartTS <= txnTS {
		t.Fatalf("the plain start starts at %d, not after the txn safe point %d", st.StartTS, txnTS)
	}
}

// TestStartAfreshOnStorageWithoutLogData: a storage that holds backup.lock
// and a root backupmeta but no log data (what a start that failed after
// writing them left, or a task stopped before its first flush) does not
// stop a later start once GC has passed its start: there is nothing to
// continue, so it starts afresh. A storage with log data GC has passed is
// still refused.
func TestStartAfreshOnStorageWithoutLogData(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, _, c := cliCluster(t)
	dir := filepath.Join(t.TempDir(), "b")
	r.ok("stream", "start", "--task-name", "pitr", "--storage", "local://"+dir)
	first := statusOf(t, r, "pitr").StartTS
	r.ok("stream", "stop", "--task-name", "pitr")
	// BR's start barrier (br-<uuid>) expires with its TTL; GC passes.
	c.AdvancePDClock(31 * time.Minute)
	now, _ := c.TSO(ctx)
	moveTxnSafePoint(t, ctx, c.PD(), now)

	out := r.ok("stream", "start", "--task-name", "again", "--storage", "local://"+dir)
	if !strings.Contains(out, "starting it afresh") {
		t.Fatalf("start on a storage without log data says:\n%s", out)
	}
	st := statusOf(t, r, "again")
	if st.StartTS <= now {
		t.Fatalf("restarted at %d, not after the txn safe point %d (first start %d)", st.StartTS, now, first)
	}
	raw, err := os.ReadFile(filepath.Join(dir, br.BackupMetaFile))
	if err != nil {
		t.Fatal(err)
	}
	var bm brpb.BackupMeta
	if err := bm.Unmarshal(raw); err != nil || bm.StartVersion != st.StartTS || bm.ClusterId != c.ClusterID() {
		t.Fatalf("root backupmeta start %d cluster %d (%v), want %d and %d", bm.StartVersion, bm.ClusterId, err, st.StartTS, c.ClusterID())
	}
	r.ok("stream", "stop", "--task-name", "again")

	// With log data in it, the storage continues or nothing.
	if err := os.MkdirAll(filepath.Join(dir, "v1", "backupmeta"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "v1", "backupmeta", "0000000000000001-x.meta"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.AdvancePDClock(31 * time.Minute)
	now, _ = c.TSO(ctx)
	moveTxnSafePoint(t, ctx, c.PD(), now)
	before := storageFiles(t, dir)
	res := r.fails("another storage path", "stream", "start", "--task-name", "third", "--storage", "local://"+dir)
	if res.code != 1 || !strings.Contains(res.stderr, "txn safe point") {
		t.Fatalf("rc %d, stderr %q", res.code, res.stderr)
	}
	if after := storageFiles(t, dir); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Fatalf("the refused start changed the storage: %v → %v", before, after)
	}
}

// TestResumeRefusedPastTxnSafePoint: once the pause safepoint has expired
// and a GC round has moved PD's txn safe point past the checkpoint (the GC
// safe point still below it), PD will not hold GC at the checkpoint any
// more: resume refuses with rc 1, both ts as datetimes and the next step,
// status says so, and the task stays paused.
func TestResumeRefusedPastTxnSafePoint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, _, c := cliCluster(t)
	r.ok("stream", "start", "--task-name", "pitr", "--storage", "local://"+filepath.Join(t.TempDir(), "b"))
	r.ok("stream", "pause", "--task-name", "pitr", "--gc-ttl", "1h")
	if v := gcStatus(t, r, "pitr"); v.GCPassed {
		t.Fatalf("status says GC passed while the pause safepoint holds it: %+v", v)
	}
	cp := statusOf(t, r, "pitr").Checkpoint
	c.AdvancePDClock(2 * time.Hour) // the start and pause safepoints expire
	txn, _ := c.TSO(ctx)
	moveTxnSafePoint(t, ctx, c.PD(), txn)
	if gc := c.GCSafePoint(); gc >= cp {
		t.Fatalf("the GC safe point %d passed the checkpoint %d: the test needs it below", gc, cp)
	}
	res := r.fails("txn safe point", "stream", "resume", "--task-name", "pitr")
	for _, want := range []string{br.FormatTS(cp, time.Local), br.FormatTS(txn, time.Local), "start a new task"} {
		if res.code != 1 || !strings.Contains(res.stderr, want) {
			t.Fatalf("resume: rc %d, stderr %q lacks %q", res.code, res.stderr, want)
		}
	}
	v := gcStatus(t, r, "pitr")
	if v.Status != "PAUSE" || !v.GCPassed || v.TxnSafePoint != txn || v.GCSafePoint >= cp {
		t.Fatalf("status after the refused resume: %+v", v)
	}
	if table := r.ok("stream", "status", "--task-name", "pitr"); !strings.Contains(table, "txn safe point") || !strings.Contains(table, "cannot resume without loss") {
		t.Fatalf("status table does not say GC passed the checkpoint:\n%s", table)
	}
	if _, ok := c.ServiceSafePoints()[br.PauseSafePointID("pitr")]; ok {
		t.Fatal("the refused resume left a pause safepoint")
	}
}

// TestStatusNamesStoresPDListsWithoutAgent: status cross-checks PD's store
// list: a store leading regions of the task with no live agent is named
// with its address, and a store PD has not heard from for more than 20 s
// (PD keeps it Up) is shown as disconnected, in the table and the JSON.
func TestStatusNamesStoresPDListsWithoutAgent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := startPDCluster(t, ctx, simcluster.Config{Stores: 2, SplitKeys: [][]byte{[]byte("t5")}})
	s1, s2 := c.StoreIDs()[0], c.StoreIDs()[1]
	if err := c.TransferLeader(c.RegionByKey([]byte("t5")).Meta.Id, s2); err != nil {
		t.Fatal(err)
	}
	e := pdEtcd{c}
	r := brRun{t: t, ep: e.Endpoint()}
	h := &harness{t: t, ctx: ctx, c: c, etcd: e, m: meta.NewClient(e.Client(t))}
	_, stop := h.agent(s1, nil, nil)
	defer stop()
	eventually.True(t, 30*time.Second, func() bool {
		agents, err := h.m.Agents(ctx)
		return err == nil && agents[s1] != nil
	}, "the agent of store 1 to register")
	r.ok("stream", "start", "--task-name", "pitr", "--storage", "local://"+filepath.Join(t.TempDir(), "b"))

	v := gcStatus(t, r, "pitr")
	if len(v.PDStores) != 1 || v.PDStores[0].StoreID != s2 || v.PDStores[0].Address != c.StoreAddr(s2) || !v.PDStores[0].NoAgent ||
		v.PDStores[0].LeaderRegions != 1 || v.PDStores[0].Disconnected {
		t.Fatalf("pd_stores %+v, want store %d (%s) with no agent and one leader", v.PDStores, s2, c.StoreAddr(s2))
	}
	want := fmt.Sprintf("store %d (%s): no agent", s2, c.StoreAddr(s2))
	if table := r.ok("stream", "status", "--task-name", "pitr"); !strings.Contains(table, want) {
		t.Fatalf("status table lacks %q:\n%s", want, table)
	}

	// Store 2 stops: its leader moves to store 1, and once PD has not
	// heard from it for 20 s it is disconnected.
	c.StoreDown(s2)
	if v := gcStatus(t, r, "pitr"); len(v.PDStores) != 0 {
		t.Fatalf("a store silent for less than 20 s, leading nothing, is named: %+v", v.PDStores)
	}
	c.AdvancePDClock(21 * time.Second)
	v = gcStatus(t, r, "pitr")
	if len(v.PDStores) != 1 || v.PDStores[0].StoreID != s2 || !v.PDStores[0].Disconnected || v.PDStores[0].NoAgent {
		t.Fatalf("pd_stores %+v, want store %d disconnected", v.PDStores, s2)
	}
	// 21 s and however long the test took since: the seconds are not fixed.
	want = fmt.Sprintf("store %d (%s): disconnected (PD last heard from it 2", s2, c.StoreAddr(s2))
	if table := r.ok("stream", "status", "--task-name", "pitr"); !strings.Contains(table, want) {
		t.Fatalf("status table lacks %q:\n%s", want, table)
	}
}

// gcReadCounter counts the GC safe point reads an agent sends to PD. A spy
// around the simulated PD's real client: PD logs deprecation WARN lines on
// every such read, which is what the count stands for.
type gcReadCounter struct {
	pd.Client
	reads atomic.Int64
}

func (g *gcReadCounter) UpdateGCSafePoint(ctx context.Context, sp uint64) (uint64, error) {
	g.reads.Add(1)
	return g.Client.UpdateGCSafePoint(ctx, sp)
}

// TestCoordinatorReadsGCSafePointOncePerMinute: the elected coordinator
// advances the global checkpoint every tick, but reads PD's GC safe point
// (for its metric) at most once a minute.
func TestCoordinatorReadsGCSafePointOncePerMinute(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h := newHarness(t, ctx, simcluster.Config{Stores: 1}, "local://"+t.TempDir(), 0)
	spy := &gcReadCounter{Client: h.c.PD()}
	_, stop := h.agent(h.c.StoreIDs()[0], nil, func(cfg *streamagent.Config) { cfg.PD = spy })
	defer stop()
	// Each advance of the global checkpoint is at least one coordinator
	// tick.
	for i := 0; i < 5; i++ {
		ts, err := h.c.Put(ctx, []byte(fmt.Sprintf("t%d", i)), []byte("v"))
		if err != nil {
			t.Fatal(err)
		}
		h.waitGlobal(ts)
	}
	if n := spy.reads.Load(); n != 1 {
		t.Fatalf("the coordinator read PD's GC safe point %d times in under a minute, want once", n)
	}
}

// TestAgentRefusesCheckpointPastTxnSafePoint: an agent starting a task
// whose checkpoint PD's txn safe point has passed (the GC safe point still
// below it, as during a GC round) refuses to observe from it, with TiKV's
// GCSafepointExceeded, instead of rescanning versions GC may remove.
func TestAgentRefusesCheckpointPastTxnSafePoint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h := newHarness(t, ctx, simcluster.Config{Stores: 1}, "local://"+t.TempDir(), 0)
	h.c.AdvancePDClock(31 * time.Minute) // BR's start barrier expires
	now, _ := h.c.TSO(ctx)
	moveTxnSafePoint(t, ctx, h.c.PD(), now)
	if gc := h.c.GCSafePoint(); gc >= h.startTS {
		t.Fatalf("GC safe point %d: the test needs it below the start %d", gc, h.startTS)
	}
	_, stop := h.agent(h.c.StoreIDs()[0], nil, nil)
	defer stop()
	eventually.True(t, 20*time.Second, func() bool {
		errsByStore, err := h.m.LastErrors(ctx, "pitr")
		if err != nil {
			t.Fatal(err)
		}
		e := errsByStore[h.c.StoreIDs()[0]]
		if e != nil && (e.ErrorCode != "KV:LogBackup:GCSafepointExceeded" || !strings.Contains(e.ErrorMessage, "txn safe point")) {
			t.Fatalf("last error %s: %s", e.ErrorCode, e.ErrorMessage)
		}
		return e != nil
	}, "a LastError: the agent must not observe from a checkpoint PD's txn safe point has passed")
}
