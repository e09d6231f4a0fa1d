package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/client-go/v2/oracle"
	pd "github.com/tikv/pd/client"
	clientv3 "go.etcd.io/etcd/client/v3"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/proto/lbpb"
	"logbackup/tests/eventually"
	"logbackup/tests/realpd"
)

// realCluster is a real pd-server bootstrapped by one store (store) with
// one region over the whole key space led by it, as a TiKV's first start
// leaves it; br talks to it with -u, PD and its etcd on one address.
type realCluster struct {
	s      *realpd.Server
	c      *realpd.Client
	pdc    pd.Client
	cli    *clientv3.Client
	r      brRun
	store  *metapb.Store
	region *metapb.Region
}

func startRealCluster(t *testing.T, ctx context.Context) *realCluster {
	t.Helper()
	s := realpd.Start(t)
	c, err := realpd.Dial(ctx, s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ids := make([]uint64, 4)
	for i := range ids {
		if ids[i], err = c.AllocID(ctx); err != nil {
			t.Fatal(err)
		}
	}
	store := &metapb.Store{Id: ids[0], Address: "127.0.0.1:1", Version: "8.5.6"}
	region := &metapb.Region{Id: ids[1], RegionEpoch: &metapb.RegionEpoch{ConfVer: 1, Version: 1},
		Peers: []*metapb.Peer{{Id: ids[2], StoreId: ids[0]}}}
	if err := c.Bootstrap(ctx, store, region); err != nil {
		t.Fatal(err)
	}
	if err := c.StoreHeartbeat(ctx, store.Id, 1); err != nil {
		t.Fatal(err)
	}
	if err := c.RegionHeartbeat(ctx, region, region.Peers[0], 1); err != nil {
		t.Fatal(err)
	}
	pdc, err := meta.DialPD(ctx, meta.DialConfig{Endpoints: []string{s.Addr()}, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pdc.Close)
	cli, err := meta.Dial(ctx, meta.DialConfig{Endpoints: []string{s.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return &realCluster{s: s, c: c, pdc: pdc, cli: cli, r: brRun{t: t, ep: s.Addr()}, store: store, region: region}
}

func (rc *realCluster) tso(t *testing.T, ctx context.Context) uint64 {
	t.Helper()
	phys, logical, err := rc.pdc.GetTS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return oracle.ComposeTS(phys, logical)
}

// serviceSafePoints lists PD's service safepoints as PD's own HTTP API
// shows them (pd-ctl service-gc-safepoint), id=ts, gc_worker left out.
func (rc *realCluster) serviceSafePoints(t *testing.T, ctx context.Context) []string {
	t.Helper()
	var out []string
	for id, sp := range safePointsInPD(t, ctx, rc.s) {
		if id != "gc_worker" {
			out = append(out, fmt.Sprintf("%s=%d", id, sp.SafePoint))
		}
	}
	sort.Strings(out)
	return out
}

// ago is a ts d before ts.
func ago(ts uint64, d time.Duration) uint64 { return ts - uint64(d.Milliseconds())<<18 }

// TestRealPDStartGCChecks: against a real PD in the middle of a GC round
// (txn safe point ahead of the GC safe point), start refuses a start ts
// below, at and above the GC safe point up to the txn safe point — rc 1,
// the reason, the next step — and writes nothing to storage, etcd or PD;
// a plain start on the same storage then works and holds BR's barrier at
// its start − 1.
func TestRealPDStartGCChecks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rc := startRealCluster(t, ctx)
	now := rc.tso(t, ctx)
	gcTS, between, txnTS := ago(now, 20*time.Second), ago(now, 10*time.Second), ago(now, 5*time.Second)
	if got, err := rc.c.SetTxnSafePoint(ctx, gcTS); err != nil || got != gcTS {
		t.Fatalf("txn safe point %d, %v", got, err)
	}
	if got, err := rc.c.SetGCSafePoint(ctx, gcTS); err != nil || got != gcTS {
		t.Fatalf("GC safe point %d, %v", got, err)
	}
	if got, err := rc.c.SetTxnSafePoint(ctx, txnTS); err != nil || got != txnTS {
		t.Fatalf("txn safe point %d, %v", got, err)
	}
	if gc, err := meta.GCSafePoint(ctx, rc.pdc); err != nil || gc != gcTS {
		t.Fatalf("meta.GCSafePoint = %d, %v; want %d", gc, err, gcTS)
	}
	if txn, err := meta.TxnSafePoint(ctx, rc.pdc); err != nil || txn != txnTS {
		t.Fatalf("meta.TxnSafePoint = %d, %v; want %d", txn, err, txnTS)
	}
	dir := filepath.Join(t.TempDir(), "b")
	etcdBefore, spsBefore := snapshot(t, rc.cli), rc.serviceSafePoints(t, ctx)
	for _, tc := range []struct {
		what string
		ts   uint64
	}{{"between the GC and the txn safe point", between}, {"at the txn safe point", txnTS}, {"at the GC safe point", gcTS}, {"below the GC safe point", gcTS - 1}} {
		res := rc.r.fails("txn safe point", "stream", "start", "--task-name", "pitr", "--storage", "local://"+dir, "--start-ts", fmt.Sprint(tc.ts))
		if res.code != 1 || !strings.Contains(res.stderr, "omit it to start now") || !strings.Contains(res.stderr, br.FormatTS(txnTS, time.Local)) {
			t.Fatalf("%s: rc %d, stderr %q", tc.what, res.code, res.stderr)
		}
		if files := storageFiles(t, dir); len(files) != 0 {
			t.Fatalf("%s: the refused start wrote to storage: %v", tc.what, files)
		}
		sameSnapshot(t, "a refused start ("+tc.what+")", etcdBefore, snapshot(t, rc.cli))
		if sps := rc.serviceSafePoints(t, ctx); strings.Join(sps, ",") != strings.Join(spsBefore, ",") {
			t.Fatalf("%s: the refused start changed PD's service safepoints: %v → %v", tc.what, spsBefore, sps)
		}
	}
	rc.r.ok("stream", "start", "--task-name", "pitr", "--storage", "local://"+dir)
	st := statusOf(t, rc.r, "pitr")
	if st.StartTS <= txnTS {
		t.Fatalf("plain start at %d, not after the txn safe point %d", st.StartTS, txnTS)
	}
	if id, ok := hasPrefix(rc.serviceSafePoints(t, ctx), "br-"); !ok || !strings.HasSuffix(id, fmt.Sprintf("=%d", st.StartTS-1)) {
		t.Fatalf("no br-<uuid> barrier at start − 1 (%d): %v", st.StartTS-1, rc.serviceSafePoints(t, ctx))
	}
	rc.r.ok("stream", "stop", "--task-name", "pitr")

	// The storage holds backup.lock but no log data; once GC passes its
	// start, the next plain start begins it afresh.
	passTxnSafePoint(t, ctx, rc)
	out := rc.r.ok("stream", "start", "--task-name", "again", "--storage", "local://"+dir)
	if !strings.Contains(out, "starting it afresh") {
		t.Fatalf("start on a storage without log data says:\n%s", out)
	}
	rc.r.ok("stream", "stop", "--task-name", "again")
}

// passTxnSafePoint moves PD's txn safe point to now as TiDB's GC worker
// does every round, once the barriers holding it have expired, and returns
// it.
func passTxnSafePoint(t *testing.T, ctx context.Context, rc *realCluster) uint64 {
	t.Helper()
	// The barriers' TTLs running out, without waiting for them: br's
	// --gc-ttl is at least 240 s.
	for id := range safePointsInPD(t, ctx, rc.s) {
		if id == "gc_worker" {
			continue
		}
		if _, err := rc.pdc.UpdateServiceGCSafePoint(ctx, id, 0, 0); err != nil {
			t.Fatalf("expire the GC barrier %s: %v", id, err)
		}
	}
	var got uint64
	eventually.NoError(t, 30*time.Second, func(ctx context.Context) error {
		target := rc.tso(t, ctx)
		var err error
		if got, err = rc.c.SetTxnSafePoint(ctx, target); err != nil {
			t.Fatal(err)
		}
		if got != target {
			return fmt.Errorf("the txn safe point stays at %d: %v", got, rc.serviceSafePoints(t, ctx))
		}
		return nil
	}, "the txn safe point to move to PD's now")
	return got
}

// TestRealPDResumeRefusedPastTxnSafePoint: once the pause safepoint has
// expired and the txn safe point has passed the checkpoint (the GC safe
// point still below it), a real PD refuses the pause safepoint, and so
// does resume: rc 1, both ts as datetimes, the next step; the task stays
// paused and status says GC has passed its checkpoint.
func TestRealPDResumeRefusedPastTxnSafePoint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rc := startRealCluster(t, ctx)
	rc.r.ok("stream", "start", "--task-name", "pitr", "--storage", "local://"+filepath.Join(t.TempDir(), "b"))
	rc.r.ok("stream", "pause", "--task-name", "pitr")
	cp := statusOf(t, rc.r, "pitr").Checkpoint
	txn := passTxnSafePoint(t, ctx, rc)
	if gc, err := meta.GCSafePoint(ctx, rc.pdc); err != nil || gc >= cp {
		t.Fatalf("GC safe point %d (%v): the test needs it below the checkpoint %d", gc, err, cp)
	}
	res := rc.r.fails("txn safe point", "stream", "resume", "--task-name", "pitr")
	for _, want := range []string{br.FormatTS(cp, time.Local), br.FormatTS(txn, time.Local), "start a new task"} {
		if res.code != 1 || !strings.Contains(res.stderr, want) {
			t.Fatalf("resume: rc %d, stderr %q lacks %q", res.code, res.stderr, want)
		}
	}
	if v := gcStatus(t, rc.r, "pitr"); v.Status != "PAUSE" || !v.GCPassed || v.TxnSafePoint != txn {
		t.Fatalf("status after the refused resume: %+v", v)
	}
}

// TestRealPDStatusNamesStores: status cross-checks a real PD's stores: the
// store leading the task's region with no agent is named until an agent
// registers for it; a store PD never heard from, and one it has not heard
// from for 20 s (PD keeps both Up), are disconnected; a TiFlash store and a
// tombstone are left out.
func TestRealPDStatusNamesStores(t *testing.T) {
	t.Parallel() // its own cluster, mostly waiting: runs beside the other long tests (see TestMain)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rc := startRealCluster(t, ctx)
	ids := make([]uint64, 4)
	for i := range ids {
		var err error
		if ids[i], err = rc.c.AllocID(ctx); err != nil {
			t.Fatal(err)
		}
	}
	silent := &metapb.Store{Id: ids[0], Address: "127.0.0.1:2", Version: "8.5.6"}
	tiflash := &metapb.Store{Id: ids[1], Address: "127.0.0.1:3", Version: "8.5.6",
		Labels: []*metapb.StoreLabel{{Key: "engine", Value: "tiflash"}}}
	gone := &metapb.Store{Id: ids[2], Address: "127.0.0.1:4", Version: "8.5.6"}
	never := &metapb.Store{Id: ids[3], Address: "127.0.0.1:5", Version: "8.5.6"}
	for _, s := range []*metapb.Store{silent, tiflash, gone, never} {
		if err := rc.c.PutStore(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []*metapb.Store{silent, gone} {
		if err := rc.c.StoreHeartbeat(ctx, s.Id, 0); err != nil {
			t.Fatal(err)
		}
	}
	silentSince := time.Now()
	if err := rc.c.Tombstone(ctx, gone.Id); err != nil {
		t.Fatal(err)
	}
	if err := rc.c.StoreHeartbeat(ctx, rc.store.Id, 1); err != nil { // the tombstone wait may have taken 10 s
		t.Fatal(err)
	}
	rc.r.ok("stream", "start", "--task-name", "pitr", "--storage", "local://"+filepath.Join(t.TempDir(), "b"))

	wantNoAgent := fmt.Sprintf("store %d (%s): no agent", rc.store.Id, rc.store.Address)
	wantNever := fmt.Sprintf("store %d (%s): disconnected (PD never had a heartbeat from it)", never.Id, never.Address)
	wantSilent := fmt.Sprintf("store %d (%s): disconnected (PD last heard from it", silent.Id, silent.Address)
	// PD takes the region heartbeat in, and the silent store's 20 s pass,
	// while store 1 keeps heartbeating as a TiKV does every 10 s.
	var v gcView
	lastBeat := time.Now()
	eventually.NoError(t, 60*time.Second, func(ctx context.Context) error {
		if time.Since(lastBeat) > 5*time.Second {
			if err := rc.c.StoreHeartbeat(ctx, rc.store.Id, 1); err != nil {
				t.Fatal(err)
			}
			lastBeat = time.Now()
		}
		v = gcStatus(t, rc.r, "pitr")
		if len(v.PDStores) == 3 {
			return nil
		}
		for _, p := range v.PDStores {
			if p.StoreID == silent.Id && time.Since(silentSince) < 19*time.Second {
				t.Fatalf("store %d shown disconnected %s after its heartbeat: %+v", silent.Id, time.Since(silentSince), v.PDStores)
			}
		}
		return fmt.Errorf("pd_stores %+v", v.PDStores)
	}, "pd_stores to list stores %d (no agent), %d and %d (disconnected)", rc.store.Id, silent.Id, never.Id)
	if p := v.PDStores[0]; p.StoreID != rc.store.Id || !p.NoAgent || p.LeaderRegions != 1 || p.Disconnected || p.Address != rc.store.Address {
		t.Fatalf("first pd_stores row %+v, want store %d with no agent", p, rc.store.Id)
	}
	for i, s := range []*metapb.Store{silent, never} {
		if p := v.PDStores[i+1]; p.StoreID != s.Id || p.NoAgent || !p.Disconnected {
			t.Fatalf("pd_stores row %+v, want store %d disconnected", p, s.Id)
		}
	}
	table := rc.r.ok("stream", "status", "--task-name", "pitr")
	for _, want := range []string{wantNoAgent, wantSilent, wantNever} {
		if !strings.Contains(table, want) {
			t.Fatalf("status lacks %q:\n%s", want, table)
		}
	}

	actx, stopAgent := context.WithCancel(ctx)
	defer stopAgent()
	if _, err := meta.NewClient(rc.cli).RegisterAgent(actx, &lbpb.AgentRegistration{StoreId: rc.store.Id, Hostname: "h1", Version: "v"}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if v := gcStatus(t, rc.r, "pitr"); len(v.PDStores) != 2 || v.PDStores[0].StoreID != silent.Id {
		t.Fatalf("with an agent for store %d: pd_stores %+v", rc.store.Id, v.PDStores)
	}
}
