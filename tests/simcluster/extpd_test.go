package simcluster_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	pd "github.com/tikv/pd/client"

	"logbackup/meta"
	"logbackup/tests/eventually"
	"logbackup/tests/realpd"
	"logbackup/tests/simcluster"
)

// startExternal starts a real PD and a simulated cluster whose stores
// join it, and a pd client on that PD as an agent has one.
func startExternal(t *testing.T, ctx context.Context, cfg simcluster.Config) (*realpd.Server, *simcluster.Cluster, pd.Client) {
	t.Helper()
	s := realpd.Start(t)
	cfg.ExternalPD = s.Addr()
	c, err := simcluster.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	pdc, err := meta.DialPD(ctx, meta.DialConfig{Endpoints: []string{s.Addr()}, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pdc.Close)
	return s, c, pdc
}

// pdDiff describes, through a pd client of the test's own, the first
// difference between the regions PD lists (ranges, epochs, leaders) and
// the cluster's; "" when none.
func pdDiff(t *testing.T, ctx context.Context, c *simcluster.Cluster, pdc pd.Client) string {
	t.Helper()
	want := c.Regions()
	sctx, cancel := meta.PDCallContext(ctx, 10*time.Second)
	defer cancel()
	got, err := pdc.ScanRegions(sctx, nil, nil, 1000)
	if err != nil {
		return err.Error()
	}
	if len(got) != len(want) {
		return fmt.Sprintf("PD lists %d regions, the cluster has %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.Meta.Id != w.Meta.Id || !bytes.Equal(g.Meta.StartKey, w.Meta.StartKey) || !bytes.Equal(g.Meta.EndKey, w.Meta.EndKey) ||
			g.Meta.RegionEpoch.GetVersion() != w.Meta.RegionEpoch.GetVersion() || g.Meta.RegionEpoch.GetConfVer() != w.Meta.RegionEpoch.GetConfVer() {
			return fmt.Sprintf("region %d: PD has %v, the cluster %v", w.Meta.Id, g.Meta, w.Meta)
		}
		if g.Leader.GetStoreId() != w.LeaderStore || g.Leader.GetId() != w.LeaderPeer.Id {
			return fmt.Sprintf("region %d: PD's leader is %v, the cluster's %v", w.Meta.Id, g.Leader, w.LeaderPeer)
		}
	}
	return ""
}

// requirePDRegions waits until PD lists exactly the cluster's regions, as
// the stores' own heartbeats tell it (not WaitPDSynced's re-reports).
func requirePDRegions(t *testing.T, ctx context.Context, c *simcluster.Cluster, pdc pd.Client) {
	t.Helper()
	eventually.NoError(t, 30*time.Second, func(context.Context) error {
		if diff := pdDiff(t, ctx, c, pdc); diff != "" {
			return errors.New(diff)
		}
		return nil
	}, "the stores' heartbeats to bring PD up to date")
}

// TestExternalPD runs the simulated stores against a real PD: it is
// bootstrapped by them, lists them at their CDC addresses, follows splits,
// merges and leader moves as TiKV reports them, hands out the cluster's
// timestamps, and learns everything again after a restart.
func TestExternalPD(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, c, pdc := startExternal(t, ctx, simcluster.Config{Stores: 3, SplitKeys: [][]byte{[]byte("g"), []byte("p")}})

	if got := pdc.GetClusterID(ctx); got != c.ClusterID() {
		t.Fatalf("PD's cluster id %d, the cluster's %d", got, c.ClusterID())
	}
	if c.PDAddr() != s.Addr() {
		t.Fatalf("PDAddr %q, want the external PD %q", c.PDAddr(), s.Addr())
	}
	stores, err := pdc.GetAllStores(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(stores) != len(c.StoreIDs()) {
		t.Fatalf("PD lists %d stores, the cluster has %d: %v", len(stores), len(c.StoreIDs()), stores)
	}
	for _, st := range stores {
		if st.Address != c.StoreAddr(st.Id) || st.Address == "" || st.Version != "8.5.6" || st.State != metapb.StoreState_Up {
			t.Fatalf("PD's store %v; the cluster serves store %d at %q", st, st.Id, c.StoreAddr(st.Id))
		}
	}
	requirePDRegions(t, ctx, c, pdc)

	// One clock: the cluster's timestamps and PD's interleave.
	a, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p, l, err := pdc.GetTS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b := uint64(p)<<18 | uint64(l)
	commit, err := c.Put(ctx, []byte("k1"), []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	if !(a < b && b < commit) {
		t.Fatalf("cluster ts %d, PD ts %d, commit ts %d: not one clock", a, b, commit)
	}

	// GC state is the external PD's: the GC worker's moves through the
	// cluster, a barrier through its in-process PD(), both seen by PD.
	if sp, err := c.SetGCSafePoint(ctx, a); err != nil || sp != a {
		t.Fatalf("SetGCSafePoint(%d) = %d, %v", a, sp, err)
	}
	if min, err := pdc.UpdateServiceGCSafePoint(ctx, "no-such-barrier", 0, 0); err != nil || min != a {
		t.Fatalf("PD's txn safe point %d (%v), want %d", min, err, a)
	}
	if _, err := c.PD().UpdateServiceGCSafePoint(ctx, "svc", 3600, commit); err != nil {
		t.Fatal(err)
	}
	sps := c.ServiceSafePoints()
	if sps["gc_worker"].SafePoint != a || !sps["gc_worker"].ExpiresAt.IsZero() || sps["svc"].SafePoint != commit ||
		time.Until(sps["svc"].ExpiresAt) > time.Hour+time.Minute || time.Until(sps["svc"].ExpiresAt) < 50*time.Minute {
		t.Fatalf("service safepoints in PD: %v", sps)
	}
	if got := c.GCSafePoint(); got != a {
		t.Fatalf("GC safe point %d, want %d", got, a)
	}

	// Splits, merges and leader moves, each seen by PD as TiKV reports it.
	for _, k := range []string{"c", "j", "m", "s", "v"} {
		if _, err := c.Split([]byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	requirePDRegions(t, ctx, c, pdc)
	// [g, j) was split more often than [c, g), and [c, j) than [, c):
	// mocktikv alone would give each survivor a version below the
	// absorbed region's, which PD refuses as stale.
	for _, k := range []string{"c", "a"} {
		if err := c.Merge([]byte(k)); err != nil {
			t.Fatal(err)
		}
		// WaitPDSynced returns once PD has it all.
		if err := c.WaitPDSynced(ctx); err != nil {
			t.Fatal(err)
		}
		if diff := pdDiff(t, ctx, c, pdc); diff != "" {
			t.Fatalf("after WaitPDSynced: %s", diff)
		}
	}
	for i, r := range c.Regions() {
		to := c.StoreIDs()[i%len(c.StoreIDs())]
		if err := c.TransferLeader(r.Meta.Id, to); err != nil {
			t.Fatal(err)
		}
	}
	requirePDRegions(t, ctx, c, pdc)

	// A restart, with a split and a leader move while PD is down: PD keeps
	// stores and regions but not leaders until the stores' heartbeats tell
	// it again; timestamps go on past the old ones.
	s.Stop()
	if _, err := c.Split([]byte("u")); err != nil {
		t.Fatal(err)
	}
	if err := c.TransferLeader(c.RegionByKey([]byte("u")).Meta.Id, c.StoreIDs()[2]); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	var after uint64
	for after == 0 {
		if ts, err := c.TSO(ctx); err == nil {
			after = ts
		} else if ctx.Err() != nil {
			t.Fatalf("no timestamp after PD's restart: %v", err)
		}
	}
	if after <= commit {
		t.Fatalf("a timestamp after PD's restart %d is not above one before %d", after, commit)
	}
	if _, err := c.Split([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := c.TransferLeader(c.RegionByKey([]byte("x")).Meta.Id, c.StoreIDs()[1]); err != nil {
		t.Fatal(err)
	}
	requirePDRegions(t, ctx, c, pdc)
	if _, err := c.Put(ctx, []byte("k2"), []byte("v2")); err != nil {
		t.Fatal(err)
	}
	if err := c.CheckLedger(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestExternalPDRefusesBootstrapped: a PD that another cluster bootstrapped
// is refused at Start with the reason, not joined with clashing ids.
func TestExternalPDRefusesBootstrapped(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, _, _ := startExternal(t, ctx, simcluster.Config{Stores: 1})
	_, err := simcluster.Start(ctx, simcluster.Config{Stores: 1, ExternalPD: s.Addr()})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("already bootstrapped")) {
		t.Fatalf("a second cluster on a bootstrapped PD: %v", err)
	}
}

// TestExternalPDStoreDown: a down store stops its heartbeats, so PD shows
// it disconnected (PD's own rule: 20 s without one), and back up it is Up
// again.
func TestExternalPDStoreDown(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, c, pdc := startExternal(t, ctx, simcluster.Config{Stores: 3})
	down := c.StoreIDs()[2]
	waitStoreState(t, ctx, s, down, "Up")
	c.StoreDown(down)
	waitStoreState(t, ctx, s, down, "Disconnected")
	requirePDRegions(t, ctx, c, pdc) // its leaders moved, as PD was told
	for _, r := range c.Regions() {
		if r.LeaderStore == down {
			t.Fatalf("region %d is led by the down store", r.Meta.Id)
		}
	}
	c.StoreUp(down)
	waitStoreState(t, ctx, s, down, "Up")
}

// waitStoreState waits until PD's HTTP API shows the store in state (its
// state_name: Up, Disconnected, Down, Offline, Tombstone).
func waitStoreState(t *testing.T, ctx context.Context, s *realpd.Server, id uint64, state string) {
	t.Helper()
	eventually.NoError(t, untilDone(ctx), func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/pd/api/v1/store/%d", s.URL(), id), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var info struct {
			Store struct {
				StateName string `json:"state_name"`
			} `json:"store"`
		}
		if err := json.Unmarshal(body, &info); err != nil {
			return err
		}
		if info.Store.StateName != state {
			return fmt.Errorf("%q in PD", info.Store.StateName)
		}
		return nil
	}, "store %d to be %q in PD", id, state)
}

// untilDone is the time left before ctx's deadline: a wait as long as the
// test's own budget.
func untilDone(ctx context.Context) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return time.Until(d)
	}
	return time.Minute
}

// TestExternalPDJoinLater: with JoinPDLater PD stays unbootstrapped, with
// no stores, while the cluster already takes its cluster id and
// timestamps from it; JoinPD then bootstraps it as the first TiKV would.
func TestExternalPDJoinLater(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, c, pdc := startExternal(t, ctx, simcluster.Config{Stores: 2, SplitKeys: [][]byte{[]byte("m")}, JoinPDLater: true})
	sc, err := realpd.Dial(ctx, s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if ok, err := sc.IsBootstrapped(ctx); err != nil || ok {
		t.Fatalf("before JoinPD: bootstrapped=%v err=%v", ok, err)
	}
	if c.ClusterID() != sc.ClusterID() {
		t.Fatalf("cluster id %d, PD's %d", c.ClusterID(), sc.ClusterID())
	}
	before, err := c.Put(ctx, []byte("k"), []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.JoinPD(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, err := sc.IsBootstrapped(ctx); err != nil || !ok {
		t.Fatalf("after JoinPD: bootstrapped=%v err=%v", ok, err)
	}
	requirePDRegions(t, ctx, c, pdc)
	p, l, err := pdc.GetTS(ctx)
	if err != nil || uint64(p)<<18|uint64(l) <= before {
		t.Fatalf("PD's ts %d after a commit at %d (%v): not one clock", uint64(p)<<18|uint64(l), before, err)
	}
	if err := c.JoinPD(ctx); err == nil {
		t.Fatal("a second JoinPD was accepted")
	}
}

// TestExternalPDBadConfig: an unreachable external PD, or one combined
// with serving PD, is a clear error at Start, within the caller's
// deadline.
func TestExternalPDBadConfig(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := simcluster.Start(ctx, simcluster.Config{Stores: 1, ExternalPD: "127.0.0.1:1"})
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("Start with an unreachable PD: %v", err)
	}
	_, err = simcluster.Start(context.Background(), simcluster.Config{Stores: 1, ExternalPD: "127.0.0.1:1", ServePD: true})
	if err == nil || !strings.Contains(err.Error(), "ServePD") {
		t.Fatalf("Start with ExternalPD and ServePD: %v", err)
	}
}

// TestExternalPDMergeMissedThenSplit: PD is down while a region it knows
// is merged away and the survivor is split left of that region's range.
// The new region overlaps what PD still has of the absorbed one, and PD
// takes it only if its version is not below that region's: TiKV gives a
// split's new region the split region's version, which mocktikv (version
// 1) does not by itself. Found by TestRealPDAgentsBackUpThroughTopologyChanges
// (seed 1796665420524999375): PD kept the absorbed region for good.
func TestExternalPDMergeMissedThenSplit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, c, pdc := startExternal(t, ctx, simcluster.Config{Stores: 1, SplitKeys: [][]byte{[]byte("g"), []byte("p")}})
	for _, k := range []string{"j", "m"} {
		if _, err := c.Split([]byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	requirePDRegions(t, ctx, c, pdc) // PD knows [j, m)
	s.Stop()
	if err := c.Merge([]byte("g")); err != nil { // [g, j) absorbs [j, m)
		t.Fatal(err)
	}
	newID, err := c.Split([]byte("h")) // [g, h) and [h, m), over [j, m)
	if err != nil {
		t.Fatal(err)
	}
	split, n := c.RegionByKey([]byte("g")), c.RegionByKey([]byte("h"))
	if n.Meta.Id != newID || n.Meta.RegionEpoch.GetVersion() < split.Meta.RegionEpoch.GetVersion() {
		t.Fatalf("the split's new region %v has a version below the split region's %v", n.Meta, split.Meta)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	if err := c.WaitPDSynced(wctx); err != nil {
		t.Fatal(err)
	}
}
