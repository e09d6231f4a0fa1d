package simcluster

import (
	"math"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/pingcap/kvproto/pkg/pdpb"
	"github.com/tikv/pd/client/clients/router"
)

// TestPDClockBatches: a batch is count consecutive logicals at one
// physical, never crossing the 18-bit logical range, and batches never
// overlap.
func TestPDClockBatches(t *testing.T) {
	var c pdClock
	var lastEnd uint64
	for _, count := range []uint32{1, 5, maxLogical / 2, maxLogical / 2, 7, maxLogical - 1} {
		p, l, err := c.allocate(count)
		if err != nil {
			t.Fatal(err)
		}
		first := l - int64(count) + 1
		if first < 0 || l >= maxLogical {
			t.Fatalf("count %d: logicals [%d, %d] outside [0, %d)", count, first, l, maxLogical)
		}
		if start := composeTS(p, first); start <= lastEnd {
			t.Fatalf("count %d: batch starts at %d, previous ended at %d", count, start, lastEnd)
		}
		lastEnd = composeTS(p, l)
	}
	for _, bad := range []uint32{0, maxLogical} {
		if _, _, err := c.allocate(bad); err == nil {
			t.Errorf("count %d: no error", bad)
		}
	}
}

func region(id uint64, start, end string) *router.Region {
	return &router.Region{Meta: &metapb.Region{Id: id, StartKey: []byte(start), EndKey: []byte(end)},
		Leader: &metapb.Peer{Id: id * 10, StoreId: 1}}
}

func ids(rs []*router.Region) []uint64 {
	var out []uint64
	for _, r := range rs {
		out = append(out, r.Meta.Id)
	}
	return out
}

func sameIDs(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestRegionIndexHoles: PD's region tree can have holes (a region not yet
// reported); the simulated topology never does, so the rules for them are
// checked here on a hand-made index: search misses the hole, prev needs
// adjacency, scans skip it, and a batch scan that must cover its ranges
// fails with REGIONS_NOT_CONTAIN_ALL_KEY_RANGE.
func TestRegionIndexHoles(t *testing.T) {
	x := regionIndex{region(1, "", "b"), region(2, "b", "d"), region(3, "f", "h"), region(4, "h", "")}
	if r := x.search([]byte("e")); r != nil {
		t.Fatalf("search in the hole: %d", r.Meta.Id)
	}
	if r := x.search([]byte("g")); r == nil || r.Meta.Id != 3 {
		t.Fatalf("search g: %v", r)
	}
	if r := x.prev([]byte("g")); r != nil {
		t.Fatalf("prev across the hole: %d", r.Meta.Id)
	}
	if r := x.prev([]byte("c")); r == nil || r.Meta.Id != 1 {
		t.Fatalf("prev c: %v", r)
	}
	if got := ids(x.scan([]byte("e"), nil, 0)); !sameIDs(got, []uint64{3, 4}) {
		t.Fatalf("scan from the hole: %v", got)
	}
	if got := ids(x.scan([]byte("a"), []byte("f"), 0)); !sameIDs(got, []uint64{1, 2}) {
		t.Fatalf("scan [a, f): %v", got)
	}
	kr := func(s, e string) *pdpb.KeyRange { return &pdpb.KeyRange{StartKey: []byte(s), EndKey: []byte(e)} }
	got, perr := x.batchScan([]*pdpb.KeyRange{kr("a", "c"), kr("c", "g")}, 0, false)
	if perr != nil || !sameIDs(ids(got), []uint64{1, 2, 3}) {
		t.Fatalf("batch scan over the hole: %v, %v", ids(got), perr)
	}
	if _, perr := x.batchScan([]*pdpb.KeyRange{kr("a", "c"), kr("c", "g")}, 0, true); perr.GetType() != pdpb.ErrorType_REGIONS_NOT_CONTAIN_ALL_KEY_RANGE {
		t.Fatalf("contain-all over the hole: %v", perr)
	}
	if _, perr := x.batchScan([]*pdpb.KeyRange{kr("a", "e")}, 0, true); perr.GetType() != pdpb.ErrorType_REGIONS_NOT_CONTAIN_ALL_KEY_RANGE {
		t.Fatalf("contain-all ending in the hole: %v", perr)
	}
	if got, perr := x.batchScan([]*pdpb.KeyRange{kr("f", "z")}, 0, true); perr != nil || !sameIDs(ids(got), []uint64{3, 4}) {
		t.Fatalf("contain-all without a hole: %v, %v", ids(got), perr)
	}
	// One region spanning two ranges is listed once.
	if got, _ := x.batchScan([]*pdpb.KeyRange{kr("b", "bb"), kr("c", "cc")}, 0, false); !sameIDs(ids(got), []uint64{2}) {
		t.Fatalf("shared region: %v", ids(got))
	}
}

// TestGCStatesExpiry: TTLs round up to a whole second and expire strictly
// after it; a TTL past what a duration holds never expires; expired
// barriers leave etcd when the txn safe point next moves.
func TestGCStatesExpiry(t *testing.T) {
	g := &gcStates{barriers: map[string]gcBarrier{}}
	now := time.Unix(1000, 500_000_000)
	if _, _, _, err := g.updateServiceSafePoint(7, "a", 10, 100, now); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := g.updateServiceSafePoint(7, "forever", math.MaxInt64, 200, now); err != nil {
		t.Fatal(err)
	}
	if exp := g.barriers["a"].expires; !exp.Equal(time.Unix(1011, 0)) {
		t.Fatalf("a expires %v, want 1011 s (rounded up)", exp)
	}
	if !g.barriers["forever"].expires.IsZero() {
		t.Fatal("an infinite TTL expires")
	}
	if _, ok := g.serviceSafePoints(time.Unix(1011, 0))["a"]; !ok {
		t.Fatal("a expired at its expiry instant")
	}
	later := time.Unix(1011, 1)
	if _, ok := g.serviceSafePoints(later)["a"]; ok {
		t.Fatal("a alive after expiry")
	}
	reached, blocker, writes, err := g.advanceTxnSafePoint(7, 300, later)
	if err != nil || reached != 200 || blocker != "forever" {
		t.Fatalf("advance: %d %q %v", reached, blocker, err)
	}
	deleted := false
	for _, w := range writes {
		if w.delete && w.key == barrierKey(7, "a") {
			deleted = true
		}
	}
	if !deleted || len(g.barriers) != 1 {
		t.Fatalf("expired barrier not dropped: writes %v, barriers %v", writes, g.barriers)
	}
	if _, _, _, err := g.updateServiceSafePoint(7, "", 10, 1, later); err == nil {
		t.Fatal("empty service id accepted")
	}
}
