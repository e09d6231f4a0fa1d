package realpd_test

import (
	"context"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/pd/client/opt"

	"logbackup/meta"
	"logbackup/tests/realpd"
)

// TestRealPDStates drives a real pd-server through the states the agent
// must survive and checks the facts the agent relies on: unbootstrapped,
// bootstrapped by a store, a tombstone that the pd client returns as
// (nil, nil), a txn safe point ahead of the GC safe point that refuses a
// barrier below it, and a restart keeping the cluster.
func TestRealPDStates(t *testing.T) {
	s := realpd.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := realpd.Dial(ctx, s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ok, err := c.IsBootstrapped(ctx); err != nil || ok {
		t.Fatalf("a fresh PD: bootstrapped=%v err=%v, want false", ok, err)
	}
	if _, err := c.GetStore(ctx, 1); err == nil {
		t.Fatal("GetStore on an unbootstrapped PD answered without an error")
	}
	ids := make([]uint64, 4)
	for i := range ids {
		if ids[i], err = c.AllocID(ctx); err != nil {
			t.Fatal(err)
		}
	}
	store1 := &metapb.Store{Id: ids[0], Address: "127.0.0.1:1", Version: "8.5.6"}
	region := &metapb.Region{Id: ids[1], RegionEpoch: &metapb.RegionEpoch{ConfVer: 1, Version: 1},
		Peers: []*metapb.Peer{{Id: ids[2], StoreId: ids[0]}}}
	if err := c.Bootstrap(ctx, store1, region); err != nil {
		t.Fatal(err)
	}
	store2 := &metapb.Store{Id: ids[3], Address: "127.0.0.1:2", Version: "8.5.6"}
	if err := c.PutStore(ctx, store2); err != nil {
		t.Fatal(err)
	}
	for _, id := range []uint64{ids[0], ids[3]} {
		if err := c.StoreHeartbeat(ctx, id, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.RegionHeartbeat(ctx, region, region.Peers[0], 1); err != nil {
		t.Fatal(err)
	}

	pdc, err := meta.DialPD(ctx, meta.DialConfig{Endpoints: []string{s.Addr()}, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer pdc.Close()
	if err := c.Tombstone(ctx, store2.Id); err != nil {
		t.Fatal(err)
	}
	// The pd client hides a tombstone behind (nil, nil).
	got, err := pdc.GetStore(ctx, store2.Id)
	if err != nil || got != nil {
		t.Fatalf("GetStore(tombstone) = %v, %v; the agent relies on (nil, nil)", got, err)
	}
	all, err := pdc.GetAllStores(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var tomb bool
	for _, st := range all {
		tomb = tomb || (st.Id == store2.Id && st.State == metapb.StoreState_Tombstone)
	}
	if !tomb {
		t.Fatalf("GetAllStores does not list store %d as a tombstone: %v", store2.Id, all)
	}
	live, err := pdc.GetAllStores(ctx, opt.WithExcludeTombstone())
	if err != nil || len(live) != 1 {
		t.Fatalf("GetAllStores(exclude tombstones) = %v, %v", live, err)
	}

	// A GC round in progress: the txn safe point ahead of the GC safe point.
	phys, logical, err := pdc.GetTS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cur := uint64(phys)<<18 | uint64(logical)
	txn := cur - (10000 << 18) // ten seconds ago
	if got, err := c.SetTxnSafePoint(ctx, txn); err != nil || got != txn {
		t.Fatalf("SetTxnSafePoint = %d, %v; want %d", got, err, txn)
	}
	if gc, err := meta.GCSafePoint(ctx, pdc); err != nil || gc >= txn {
		t.Fatalf("GC safe point %d (err %v) should still be below the txn safe point %d", gc, err, txn)
	}
	// A barrier below the txn safe point is refused; deleting a barrier
	// that does not exist answers the txn safe point.
	if err := meta.SetServiceSafePoint(ctx, pdc, "probe", time.Minute, txn-1); err == nil {
		t.Fatal("a barrier below the txn safe point was accepted")
	}
	min, err := pdc.UpdateServiceGCSafePoint(ctx, "no-such-barrier", 0, 0)
	if err != nil || min != txn {
		t.Fatalf("deleting a missing barrier answered %d, %v; want the txn safe point %d", min, err, txn)
	}

	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	c2, err := realpd.Dial(ctx, s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if c2.ClusterID() != c.ClusterID() {
		t.Fatalf("cluster id changed across a restart: %d → %d", c.ClusterID(), c2.ClusterID())
	}
	if ok, err := c2.IsBootstrapped(ctx); err != nil || !ok {
		t.Fatalf("after restart: bootstrapped=%v err=%v", ok, err)
	}
}
