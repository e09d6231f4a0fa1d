package simcluster_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"logbackup/tests/simcluster"
)

// TestResolvedTsHeldByOpenPrewrite: the resolved ts never passes an open
// lock's start ts and never goes backwards; after the commit it passes.
func TestResolvedTsHeldByOpenPrewrite(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	r := c.RegionByKey([]byte("k"))
	f := openFeed(t, c, r.LeaderStore)
	f.register(r, 7, 0)
	f.items(5*time.Second, isInitialized)
	open, err := c.Prewrite(ctx, simcluster.Mutation{Key: []byte("k"), Value: []byte("v")})
	if err != nil {
		t.Fatal(err)
	}
	var last uint64
	seen := 0
	f.items(10*time.Second, func(it item) bool {
		if it.resolved == nil {
			return false
		}
		// EventFeed (v1) batches name regions with request_id 0.
		if it.resolved.RequestId != 0 || len(it.resolved.Regions) != 1 || it.resolved.Regions[0] != r.Meta.Id {
			t.Fatalf("resolved ts for the wrong subscription: %+v", it.resolved)
		}
		if it.resolved.Ts < last {
			t.Fatalf("resolved ts went back from %d to %d", last, it.resolved.Ts)
		}
		last = it.resolved.Ts
		if last > open.StartTS {
			t.Fatalf("resolved ts %d passed the open prewrite %d", last, open.StartTS)
		}
		seen++
		return last == open.StartTS
	})
	// Several more rounds: still held.
	for i := 0; i < 3; i++ {
		c.ResolveOnce(ctx)
	}
	cts, err := open.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.items(10*time.Second, func(it item) bool {
		if it.resolved == nil {
			return false
		}
		if it.resolved.Ts < last {
			t.Fatalf("resolved ts went back")
		}
		last = it.resolved.Ts
		return last >= cts
	})
}

func TestRegionErrorsOnTopologyChanges(t *testing.T) {
	c := start(t, "m")
	left := c.RegionByKey([]byte("a"))
	f := openFeed(t, c, left.LeaderStore)
	f.register(left, 1, 0)
	f.items(5*time.Second, isInitialized)

	// Split: epoch_not_match listing both halves.
	if _, err := c.Split([]byte("f")); err != nil {
		t.Fatal(err)
	}
	// TiKV sends epoch_not_match with both halves or region_not_found,
	// whichever notice wins; the simulator picks one from its seed.
	its := f.items(5*time.Second, isError)
	if e := its[len(its)-1].ev.GetError(); !(e.EpochNotMatch != nil && len(e.EpochNotMatch.CurrentRegions) == 2 || e.RegionNotFound != nil) {
		t.Fatalf("split: %v", e)
	}

	// Leader transfer: not_leader naming the new store.
	a := c.RegionByKey([]byte("a"))
	f.register(a, 2, 0)
	f.items(5*time.Second, isInitialized)
	to := c.StoreIDs()[0]
	if to == a.LeaderStore {
		to = c.StoreIDs()[1]
	}
	if err := c.TransferLeader(a.Meta.Id, to); err != nil {
		t.Fatal(err)
	}
	its = f.items(5*time.Second, isError)
	if e := its[len(its)-1].ev.GetError().NotLeader; e == nil || e.Leader.StoreId != to {
		t.Fatalf("leader transfer: %v", its[len(its)-1].ev.GetError())
	}
	// No rows for that region reach the old leader's stream any more.
	put(t, c, "a", "after-transfer")
	nf := openFeed(t, c, to)
	a = c.RegionByKey([]byte("a"))
	nf.register(a, 3, 0)
	if got := rows(nf.items(5*time.Second, isInitialized)); strings.Join(got, ",") != "COMMITTED a=after-transfer,INITIALIZED" {
		t.Fatalf("new leader's scan: %v", got)
	}

	// Merge [a,f) with [f,m): the left one gets epoch_not_match (with no
	// regions) or region_not_found, the right one region_not_found.
	right := c.RegionByKey([]byte("g"))
	rf := openFeed(t, c, right.LeaderStore)
	rf.register(right, 4, 0)
	rf.items(5*time.Second, isInitialized)
	if err := c.Merge([]byte("a")); err != nil {
		t.Fatal(err)
	}
	its = nf.items(5*time.Second, isError)
	if e := its[len(its)-1].ev.GetError(); e.EpochNotMatch == nil && e.RegionNotFound == nil {
		t.Fatalf("merge target: %v", e)
	}
	its = rf.items(5*time.Second, isError)
	if its[len(its)-1].ev.GetError().RegionNotFound == nil {
		t.Fatalf("merge source: %v", its[len(its)-1].ev.GetError())
	}
}

func TestDeregister(t *testing.T) {
	c := start(t)
	r := c.RegionByKey([]byte("a"))
	f := openFeed(t, c, r.LeaderStore)
	f.register(r, 1, 0)
	f.items(5*time.Second, isInitialized)
	if err := f.stream.Send(&cdcpb.ChangeDataRequest{RegionId: r.Meta.Id, RequestId: 1,
		Request: &cdcpb.ChangeDataRequest_Deregister_{Deregister: &cdcpb.ChangeDataRequest_Deregister{}}}); err != nil {
		t.Fatal(err)
	}
	// Register a second request id as a marker: once its INITIALIZED
	// arrives, the deregister (sent earlier on the same stream) is applied.
	f.register(r, 2, 0)
	f.items(5*time.Second, isInitialized)
	put(t, c, "a", "x")
	its := f.items(5*time.Second, func(it item) bool {
		e := it.ev.GetEntries()
		return e != nil && e.Entries[0].Type == cdcpb.Event_COMMIT
	})
	for _, it := range its {
		if it.ev != nil && it.ev.RequestId == 1 {
			t.Fatalf("row for a deregistered request: %v", it.ev)
		}
	}
}

func TestFaults(t *testing.T) {
	c := start(t)
	r := c.RegionByKey([]byte("a"))
	store := r.LeaderStore

	c.FailRegistrations(store, 1, nil)
	f := openFeed(t, c, store)
	c.DelayEvents(store, 0)
	f.register(r, 1, 0)
	its := f.items(5*time.Second, isError)
	if its[len(its)-1].ev.GetError().ServerIsBusy == nil {
		t.Fatalf("want server_is_busy, got %v", its[len(its)-1].ev.GetError())
	}
	c.FailRegistrations(store, 1, simcluster.Congested(r.Meta.Id))
	f.register(r, 2, 0)
	its = f.items(5*time.Second, isError)
	if its[len(its)-1].ev.GetError().Congested == nil {
		t.Fatalf("want congested, got %v", its[len(its)-1].ev.GetError())
	}
	f.register(r, 3, 0) // the fault is spent
	f.items(5*time.Second, isInitialized)

	// Stall: rows queue up and arrive after the stall ends, in order.
	c.StallStreams(store, true)
	put(t, c, "a", "1")
	put(t, c, "a", "2")
	select {
	case ev := <-f.events:
		for _, e := range ev.Events {
			if e.GetEntries() != nil {
				t.Fatalf("event sent while stalled: %v", ev)
			}
		}
	case <-time.After(200 * time.Millisecond):
	}
	c.StallStreams(store, false)
	commits := 0
	got := rows(f.items(5*time.Second, func(it item) bool {
		if e := it.ev.GetEntries(); e != nil && e.Entries[0].Type == cdcpb.Event_COMMIT {
			commits++
		}
		return commits == 2
	}))
	if strings.Join(got, ", ") != "PREWRITE a=1, COMMIT a=1, PREWRITE a=2, COMMIT a=2" {
		t.Fatalf("rows after the stall: %v", got)
	}

	// Drop: the client sees Unavailable.
	c.DropStreams(store)
	select {
	case err := <-f.errc:
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("dropped stream ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("dropped stream did not end")
	}

	// Restart on the same port: a new stream works.
	addr := c.StoreAddr(store)
	if err := c.RestartCDC(store); err != nil {
		t.Fatal(err)
	}
	if c.StoreAddr(store) != addr {
		t.Fatalf("restart moved the server from %s to %s", addr, c.StoreAddr(store))
	}
	g := openFeed(t, c, store)
	g.register(c.RegionByKey([]byte("a")), 9, 0)
	// The scan sends a key's versions newest first, as TiKV's delta scanner.
	if got := rows(g.items(5*time.Second, isInitialized)); strings.Join(got, ",") != "COMMITTED a=2,COMMITTED a=1,INITIALIZED" {
		t.Fatalf("after restart: %v", got)
	}
}

func TestEventFeedV2Unimplemented(t *testing.T) {
	c := start(t)
	conn, err := grpc.NewClient(c.StoreAddr(c.StoreIDs()[0]), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s, err := cdcpb.NewChangeDataClient(conn).EventFeedV2(context.Background())
	if err == nil {
		_, err = s.Recv()
	}
	if status.Code(err) != codes.Unimplemented || errors.Is(err, io.EOF) {
		t.Fatalf("EventFeedV2: %v", err)
	}
}

func TestStoreDownUpAndCongestion(t *testing.T) {
	c, err := simcluster.Start(context.Background(), simcluster.Config{StreamQueueLimit: 8, ResolvedTsInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	r := c.RegionByKey([]byte("a"))
	store := r.LeaderStore

	// Down: open streams break, new ones are refused; up: served again.
	f := openFeed(t, c, store)
	f.register(r, 1, 0)
	f.items(5*time.Second, isInitialized)
	c.StoreDown(store)
	select {
	case err := <-f.errc:
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("stream of a downed store ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stream of a downed store did not end")
	}
	down := openFeed(t, c, store)
	select {
	case err := <-down.errc:
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("new stream to a downed store: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a downed store accepted a stream")
	}
	// The down store's leaders moved to live peers, as raft would elect.
	if moved := c.RegionByKey([]byte("a")); moved.LeaderStore == store {
		t.Fatalf("region %d still led by the down store %d", moved.Meta.Id, store)
	}
	c.StoreUp(store)
	if err := c.TransferLeader(r.Meta.Id, store); err != nil {
		t.Fatal(err)
	}
	r = c.RegionByKey([]byte("a"))
	g := openFeed(t, c, store)
	g.register(r, 2, 0)
	g.items(5*time.Second, isInitialized)

	// Congestion: a stalled stream whose queue passes the limit loses its
	// subscriptions with `congested`.
	c.StallStreams(store, true)
	for i := 0; i < 6; i++ {
		put(t, c, fmt.Sprintf("a%d", i), "v")
	}
	c.StallStreams(store, false)
	its := g.items(5*time.Second, isError)
	if its[len(its)-1].ev.GetError().Congested == nil {
		t.Fatalf("want congested, got %v", its[len(its)-1].ev.GetError())
	}

	// Delay: events still arrive, later.
	c.DelayEvents(store, 50*time.Millisecond)
	h := openFeed(t, c, store)
	began := time.Now()
	h.register(c.RegionByKey([]byte("a")), 3, 0)
	h.items(5*time.Second, isInitialized)
	if time.Since(began) < 50*time.Millisecond {
		t.Fatalf("delayed store answered in %s", time.Since(began))
	}
}
