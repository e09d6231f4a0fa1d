package task

import (
	"bytes"
	"context"
	"testing"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/errorpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/client-go/v2/util/codec"
	"github.com/tikv/pd/client/clients/router"

	"logbackup/streamagent/errs"
	"logbackup/streamagent/spans"
)

// Placement on fakes: the harness's runner is driven by hand on the test's
// goroutine (its loop is not started), with PD's regions set by the test
// and an EventFeed stream that records the requests sent.

func newPlacementHarness(t *testing.T) (*harness, *fakeFeed) {
	h := newHarness(t, nil)
	feed := &fakeFeed{}
	h.fs.stream, h.fs.cancel = feed, func() {}
	h.r.feed.stream = h.fs // open already: placement registers on it, never dials
	return h, feed
}

// regionError hands the loop region 10's error, as TiKV sends it.
func (h *harness) regionError(e *cdcpb.Error) {
	h.handle(streamEvent{stream: h.fs, ev: &cdcpb.ChangeDataEvent{Events: []*cdcpb.Event{{RegionId: 10, RequestId: 1,
		Event: &cdcpb.Event_Error{Error: e}}}}})
}

func ek(k string) []byte { return codec.EncodeBytes(nil, []byte(k)) }

// region is what PD says of a region: its range (encoded keys; "" is
// unbounded), epoch version and leader's store.
func region(id uint64, start, end []byte, version, leader uint64) *router.Region {
	return &router.Region{Meta: &metapb.Region{Id: id, StartKey: start, EndKey: end, RegionEpoch: &metapb.RegionEpoch{Version: version, ConfVer: 1}},
		Leader: &metapb.Peer{Id: id*10 + leader, StoreId: leader}}
}

// registers are the regions registered on the feed, by region id.
func registers(feed *fakeFeed) map[uint64]*cdcpb.ChangeDataRequest {
	out := map[uint64]*cdcpb.ChangeDataRequest{}
	for _, r := range feed.sent {
		if r.GetRegister() != nil {
			out[r.RegionId] = r
		}
	}
	return out
}

// TestRegionErrorPaths: each cdcpb region error takes its path. A region
// that moved, split, vanished or is busy is dropped, and its range waits
// to be placed again from PD; another cluster's TiKV or an incompatible
// one stops the task with its code, since no re-placing heals it.
func TestRegionErrorPaths(t *testing.T) {
	cases := []struct {
		name   string
		err    *cdcpb.Error
		reason string    // dropped, with this region event
		fatal  errs.Code // or the task stops with this code
	}{
		{"not leader", &cdcpb.Error{NotLeader: &errorpb.NotLeader{RegionId: 10}}, "not-leader", ""},
		{"epoch not match", &cdcpb.Error{EpochNotMatch: &errorpb.EpochNotMatch{}}, "epoch-not-match", ""},
		{"region not found", &cdcpb.Error{RegionNotFound: &errorpb.RegionNotFound{RegionId: 10}}, "region-not-found", ""},
		{"server is busy", &cdcpb.Error{ServerIsBusy: &errorpb.ServerIsBusy{Reason: "busy"}}, "server-is-busy", ""},
		{"congested", &cdcpb.Error{Congested: &cdcpb.Congested{RegionId: 10}}, "congested", ""},
		{"duplicate request", &cdcpb.Error{DuplicateRequest: &cdcpb.DuplicateRequest{RegionId: 10}}, "other", ""},
		{"no variant", &cdcpb.Error{}, "other", ""},
		{"cluster id mismatch", &cdcpb.Error{ClusterIdMismatch: &cdcpb.ClusterIDMismatch{Current: 1, Request: 2}}, "", errs.CodeClusterIDMismatch},
		{"compatibility", &cdcpb.Error{Compatibility: &cdcpb.Compatibility{RequiredVersion: "9.0.0"}}, "", errs.CodeIncompatible},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, _ := newPlacementHarness(t)
			piece := h.r.regions.subs[1].pieces
			h.regionError(c.err)
			r := h.r
			if c.fatal != "" {
				if r.fatal == nil || r.fatal.Info.Code != c.fatal {
					t.Fatalf("fatal %v, want the task stopped with %s", r.fatal, c.fatal)
				}
				return
			}
			if r.fatal != nil {
				t.Fatalf("the task stopped (%v); want the region dropped and placed again", r.fatal)
			}
			if len(r.regions.subs) != 0 || len(r.regions.byRegion) != 0 {
				t.Fatalf("region 10 is still subscribed: %d subscriptions", len(r.regions.subs))
			}
			if !sameSpans(r.regions.pending, piece) {
				t.Fatalf("pending %v, want the region's range %v", r.regions.pending, piece)
			}
			if r.regions.scanReason != c.reason {
				t.Fatalf("rescan reason %q, want %q", r.regions.scanReason, c.reason)
			}
		})
	}
}

// TestLeaderMovedAway: a region whose leader left the store is dropped
// and not subscribed again while PD says another store leads it (that
// store's agent takes it); once the leader is back, a reconcile finds it
// and it is registered again from the range's checkpoint.
func TestLeaderMovedAway(t *testing.T) {
	h, feed := newPlacementHarness(t)
	ctx := context.Background()
	whole := h.r.regions.subs[1].pieces[0]
	h.regionError(&cdcpb.Error{NotLeader: &errorpb.NotLeader{RegionId: 10, Leader: &metapb.Peer{StoreId: testStore + 1}}})
	h.pd.setRegions(region(10, whole.Start, whole.End, 3, testStore+1))
	h.r.placePending(ctx)
	if len(h.r.regions.subs) != 0 || len(registers(feed)) != 0 {
		t.Fatalf("a region led by another store was subscribed: %v", feed.sent)
	}
	if len(h.r.regions.pending) != 0 {
		t.Fatalf("pending %v: a range led elsewhere is that store's, not held here", h.r.regions.pending)
	}

	h.pd.setRegions(region(10, whole.Start, whole.End, 4, testStore))
	h.r.regions.reconcile(ctx)
	if !sameSpans(h.r.regions.pending, []spans.Span{whole}) || h.r.regions.scanReason != "leader-gained" {
		t.Fatalf("after the leader came back: pending %v (%q), want the whole range as leader-gained", h.r.regions.pending, h.r.regions.scanReason)
	}
	h.r.placePending(ctx)
	reg := registers(feed)[10]
	if reg == nil || len(h.r.regions.subs) != 1 {
		t.Fatalf("region 10 not registered again: %v", feed.sent)
	}
	if reg.RegionEpoch.GetVersion() != 4 || reg.CheckpointTs != h.startTS || !bytes.Equal(reg.StartKey, whole.Start) || !bytes.Equal(reg.EndKey, whole.End) {
		t.Fatalf("register %v, want epoch 4 from the task's start over the whole range", reg)
	}
}

// TestSplitReplacesPieces: after an epoch-not-match the range is placed
// again from PD: each piece of the split this store leads gets its own
// subscription with the new epoch, and a piece led elsewhere gets none.
func TestSplitReplacesPieces(t *testing.T) {
	for _, otherLeader := range []uint64{testStore, testStore + 1} {
		h, feed := newPlacementHarness(t)
		whole := h.r.regions.subs[1].pieces[0]
		h.regionError(&cdcpb.Error{EpochNotMatch: &errorpb.EpochNotMatch{}})
		mid := ek("m")
		h.pd.setRegions(region(10, whole.Start, mid, 4, testStore), region(11, mid, whole.End, 4, otherLeader))
		h.r.placePending(context.Background())
		reg := registers(feed)
		want := map[uint64]spans.Span{10: {Start: whole.Start, End: mid}}
		if otherLeader == testStore {
			want[11] = spans.Span{Start: mid, End: whole.End}
		}
		if len(reg) != len(want) || len(h.r.regions.subs) != len(want) {
			t.Fatalf("right half led by store %d: registered %d regions (%d subscriptions), want %d", otherLeader, len(reg), len(h.r.regions.subs), len(want))
		}
		for id, sp := range want {
			r, sub := reg[id], h.r.regions.byRegion[id]
			if r == nil || sub == nil {
				t.Fatalf("region %d not subscribed", id)
			}
			if !bytes.Equal(r.StartKey, sp.Start) || !bytes.Equal(r.EndKey, sp.End) || r.RegionEpoch.GetVersion() != 4 || r.CheckpointTs != h.startTS {
				t.Fatalf("region %d registered as %v, want %v at epoch 4 from the task's start", id, r, sp)
			}
			if !sameSpans(sub.pieces, []spans.Span{sp}) {
				t.Fatalf("region %d observes %v, want %v", id, sub.pieces, sp)
			}
		}
		if len(h.r.regions.pending) != 0 {
			t.Fatalf("pending %v after placing", h.r.regions.pending)
		}
	}
}

// TestScanningCount: the count of subscriptions still in their initial
// scan, which the stats publish every 50 ms without walking them, follows
// every change: a scan ending, a region dropped mid-scan or after it, a
// split placing new regions, the task stopping.
func TestScanningCount(t *testing.T) {
	h, _ := newPlacementHarness(t)
	check := func(when string, want int) {
		t.Helper()
		recount := 0
		for _, sub := range h.r.regions.subs {
			if !sub.m.Initialized() {
				recount++
			}
		}
		h.r.publishStats()
		if h.r.regions.scanning != recount || recount != want || h.r.stats.Scanning.Load() != int64(want) {
			t.Fatalf("%s: counted %d, %d by walking the subscriptions, %d published; want %d", when, h.r.regions.scanning, recount, h.r.stats.Scanning.Load(), want)
		}
	}
	check("subscribed", 1)
	h.handle(streamEvent{stream: h.fs, ev: &cdcpb.ChangeDataEvent{Events: []*cdcpb.Event{{RegionId: 10, RequestId: 1,
		Event: &cdcpb.Event_Entries_{Entries: &cdcpb.Event_Entries{Entries: []*cdcpb.Event_Row{{Type: cdcpb.Event_INITIALIZED}}}}}}}})
	check("scan over", 0)
	whole := h.r.regions.subs[1].pieces[0]
	h.regionError(&cdcpb.Error{EpochNotMatch: &errorpb.EpochNotMatch{}})
	check("dropped after its scan", 0)
	mid := ek("m")
	h.pd.setRegions(region(10, whole.Start, mid, 4, testStore), region(11, mid, whole.End, 4, testStore))
	h.r.placePending(context.Background())
	check("split placed", 2)
	sub := h.r.regions.byRegion[11]
	h.r.regions.drop(sub, "test")
	check("dropped mid-scan", 1)
	h.r.regions.unsubscribe(sub) // twice: counted once
	check("forgotten again", 1)
}

func sameSpans(a, b []spans.Span) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i].Start, b[i].Start) || !bytes.Equal(a[i].End, b[i].End) {
			return false
		}
	}
	return true
}

// handle has intake take one event as the loop does, outside the loop.
func (h *harness) handle(e streamEvent) {
	if f := h.r.in.handle(e, h.r.builder); f != nil {
		h.r.fatal = f
	}
}
