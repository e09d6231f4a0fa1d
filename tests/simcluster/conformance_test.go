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
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/client-go/v2/txnkv/transaction"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"logbackup/tests/simcluster"
)

func start(t *testing.T, splits ...string) *simcluster.Cluster {
	t.Helper()
	var keys [][]byte
	for _, s := range splits {
		keys = append(keys, []byte(s))
	}
	c, err := simcluster.Start(context.Background(), simcluster.Config{SplitKeys: keys, ResolvedTsInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// feed is a plain gRPC EventFeed client, as an agent would open.
type feed struct {
	t      testing.TB
	c      *simcluster.Cluster
	stream cdcpb.ChangeData_EventFeedClient
	events chan *cdcpb.ChangeDataEvent
	errc   chan error
	cancel context.CancelFunc
}

func openFeed(t testing.TB, c *simcluster.Cluster, store uint64) *feed {
	t.Helper()
	conn, err := grpc.NewClient(c.StoreAddr(store), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := cdcpb.NewChangeDataClient(conn).EventFeed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f := &feed{t: t, c: c, stream: stream, events: make(chan *cdcpb.ChangeDataEvent, 1<<16), errc: make(chan error, 1), cancel: cancel}
	go func() {
		for {
			ev, err := stream.Recv()
			if err != nil {
				f.errc <- err
				close(f.events)
				return
			}
			f.events <- ev
		}
	}()
	t.Cleanup(func() { cancel(); conn.Close() })
	return f
}

func (f *feed) register(r simcluster.RegionInfo, reqID, checkpoint uint64) {
	f.registerRange(r.Meta, reqID, checkpoint, r.Meta.StartKey, r.Meta.EndKey)
}

func (f *feed) registerRange(m *metapb.Region, reqID, checkpoint uint64, start, end []byte) {
	f.t.Helper()
	err := f.stream.Send(&cdcpb.ChangeDataRequest{
		Header: &cdcpb.Header{ClusterId: f.c.ClusterID()}, RegionId: m.Id, RegionEpoch: m.RegionEpoch,
		CheckpointTs: checkpoint, StartKey: start, EndKey: end, RequestId: reqID,
		Request: &cdcpb.ChangeDataRequest_Register_{Register: &cdcpb.ChangeDataRequest_Register{}},
	})
	if err != nil {
		f.t.Fatal(err)
	}
}

// next returns the next event of any kind, flattening ChangeDataEvents.
type item struct {
	ev       *cdcpb.Event
	resolved *cdcpb.ResolvedTs
}

func (f *feed) items(d time.Duration, until func(item) bool) []item {
	f.t.Helper()
	var out []item
	deadline := time.After(d)
	for {
		select {
		case cde, ok := <-f.events:
			if !ok {
				f.t.Fatalf("stream ended: %v (got %d items)", <-f.errc, len(out))
			}
			var its []item
			for _, e := range cde.Events {
				its = append(its, item{ev: e})
			}
			if cde.ResolvedTs != nil {
				its = append(its, item{resolved: cde.ResolvedTs})
			}
			for _, it := range its {
				out = append(out, it)
				if until(it) {
					return out
				}
			}
		case <-deadline:
			f.t.Fatalf("condition not met within %s; got %d items", d, len(out))
		}
	}
}

// rows returns the rows of entries events, described compactly.
func rows(its []item) []string {
	var out []string
	for _, it := range its {
		if it.ev == nil {
			continue
		}
		if e := it.ev.GetEntries(); e != nil {
			for _, r := range e.Entries {
				s := r.Type.String()
				if r.Type != cdcpb.Event_INITIALIZED {
					s += fmt.Sprintf(" %s", r.Key)
					if len(r.Value) > 0 {
						s += "=" + string(r.Value)
					}
					if r.OpType == cdcpb.Event_Row_DELETE {
						s += " (del)"
					}
				}
				out = append(out, s)
			}
		}
	}
	return out
}

func isInitialized(it item) bool {
	if e := it.ev.GetEntries(); e != nil {
		for _, r := range e.Entries {
			if r.Type == cdcpb.Event_INITIALIZED {
				return true
			}
		}
	}
	return false
}

func isError(it item) bool { return it.ev != nil && it.ev.GetError() != nil }

func put(t *testing.T, c *simcluster.Cluster, kvs ...string) uint64 {
	t.Helper()
	ts, err := c.Txn(context.Background(), func(txn *transaction.KVTxn) error {
		for i := 0; i+1 < len(kvs); i += 2 {
			if kvs[i+1] == "" {
				if err := txn.Delete([]byte(kvs[i])); err != nil {
					return err
				}
				continue
			}
			if err := txn.Set([]byte(kvs[i]), []byte(kvs[i+1])); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func commitTS(t *testing.T, c *simcluster.Cluster, key string, startTS uint64) uint64 {
	for _, v := range c.Versions([]byte(key)) {
		if v.StartTS == startTS {
			return v.CommitTS
		}
	}
	t.Fatalf("no version of %q from txn %d", key, startTS)
	return 0
}

func TestRegistrationChecks(t *testing.T) {
	c := start(t, "m")
	r := c.RegionByKey([]byte("a"))
	other := c.StoreIDs()[0]
	for _, s := range c.StoreIDs() {
		if s != r.LeaderStore {
			other = s
		}
	}
	f := openFeed(t, c, other)
	f.register(r, 1, 0)
	its := f.items(5*time.Second, isError)
	nl := its[len(its)-1].ev.GetError().NotLeader
	if nl == nil || nl.Leader.GetStoreId() != r.LeaderStore {
		t.Fatalf("want not_leader naming store %d, got %v", r.LeaderStore, its[len(its)-1].ev.GetError())
	}

	lf := openFeed(t, c, r.LeaderStore)
	stale := *r.Meta
	stale.RegionEpoch = &metapb.RegionEpoch{Version: r.Meta.RegionEpoch.Version - 1, ConfVer: r.Meta.RegionEpoch.ConfVer}
	lf.registerRange(&stale, 2, 0, nil, nil)
	its = lf.items(5*time.Second, isError)
	if e := its[len(its)-1].ev.GetError().EpochNotMatch; e == nil || len(e.CurrentRegions) != 1 || e.CurrentRegions[0].Id != r.Meta.Id {
		t.Fatalf("want epoch_not_match with the current region, got %v", its[len(its)-1].ev.GetError())
	}
	gone := *r.Meta
	gone.Id = 999999
	lf.registerRange(&gone, 3, 0, nil, nil)
	its = lf.items(5*time.Second, isError)
	if its[len(its)-1].ev.GetError().RegionNotFound == nil {
		t.Fatalf("want region_not_found, got %v", its[len(its)-1].ev.GetError())
	}
	err := lf.stream.Send(&cdcpb.ChangeDataRequest{Header: &cdcpb.Header{ClusterId: c.ClusterID() + 1}, RegionId: r.Meta.Id,
		RegionEpoch: r.Meta.RegionEpoch, RequestId: 4, Request: &cdcpb.ChangeDataRequest_Register_{Register: &cdcpb.ChangeDataRequest_Register{}}})
	if err != nil {
		t.Fatal(err)
	}
	its = lf.items(5*time.Second, isError)
	if its[len(its)-1].ev.GetError().ClusterIdMismatch == nil {
		t.Fatalf("want cluster_id_mismatch, got %v", its[len(its)-1].ev.GetError())
	}
	lf.register(r, 5, 0)
	lf.items(5*time.Second, isInitialized)
	lf.register(r, 5, 0)
	its = lf.items(5*time.Second, isError)
	if its[len(its)-1].ev.GetError().DuplicateRequest == nil {
		t.Fatalf("want duplicate_request, got %v", its[len(its)-1].ev.GetError())
	}
}

func TestInitialScanAndLiveRows(t *testing.T) {
	c := start(t, "m")
	ctx := context.Background()
	t1 := put(t, c, "a1", "old")
	cp := commitTS(t, c, "a1", t1)
	put(t, c, "a2", "new", "z9", "other-region")
	open, err := c.Prewrite(ctx, simcluster.Mutation{Key: []byte("a3"), Value: []byte("locked")})
	if err != nil {
		t.Fatal(err)
	}
	r := c.RegionByKey([]byte("a1"))
	f := openFeed(t, c, r.LeaderStore)
	f.register(r, 1, cp)
	got := rows(f.items(5*time.Second, isInitialized))
	if want := "COMMITTED a2=new, PREWRITE a3=locked, INITIALIZED"; strings.Join(got, ", ") != want {
		t.Fatalf("initial scan: %s\nwant %s", strings.Join(got, ", "), want)
	}
	if _, err := open.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	put(t, c, "a4", "v4")
	put(t, c, "a2", "") // delete
	rb, err := c.Prewrite(ctx, simcluster.Mutation{Key: []byte("a5"), Value: []byte("never")})
	if err != nil {
		t.Fatal(err)
	}
	if err := rb.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	got = rows(f.items(5*time.Second, func(it item) bool {
		e := it.ev.GetEntries()
		return e != nil && e.Entries[len(e.Entries)-1].Type == cdcpb.Event_ROLLBACK
	}))
	want := "COMMIT a3, PREWRITE a4=v4, COMMIT a4, PREWRITE a2 (del), COMMIT a2 (del), PREWRITE a5=never, ROLLBACK a5"
	if strings.Join(got, ", ") != want {
		t.Fatalf("live rows:\n got %s\nwant %s", strings.Join(got, ", "), want)
	}
}

func TestKeyRangeFilter(t *testing.T) {
	c := start(t)
	put(t, c, "a", "1", "b", "2", "c", "3")
	r := c.RegionByKey([]byte("a"))
	f := openFeed(t, c, r.LeaderStore)
	f.registerRange(r.Meta, 1, 0, simcluster.EncodeKey([]byte("b")), simcluster.EncodeKey([]byte("c")))
	if got := strings.Join(rows(f.items(5*time.Second, isInitialized)), ", "); got != "COMMITTED b=2, INITIALIZED" {
		t.Fatalf("sub-range scan: %s", got)
	}
	put(t, c, "a", "x", "b", "y")
	got := rows(f.items(5*time.Second, func(it item) bool {
		e := it.ev.GetEntries()
		return e != nil && e.Entries[0].Type == cdcpb.Event_COMMIT
	}))
	if strings.Join(got, ", ") != "PREWRITE b=y, COMMIT b" {
		t.Fatalf("live rows outside the range leaked: %v", got)
	}
}

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
		if it.resolved.RequestId != 7 || len(it.resolved.Regions) != 1 || it.resolved.Regions[0] != r.Meta.Id {
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
	its := f.items(5*time.Second, isError)
	if e := its[len(its)-1].ev.GetError().EpochNotMatch; e == nil || len(e.CurrentRegions) != 2 {
		t.Fatalf("split: %v", its[len(its)-1].ev.GetError())
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

	// Merge [a,f) with [f,m): the left one gets epoch_not_match, the right
	// one region_not_found.
	right := c.RegionByKey([]byte("g"))
	rf := openFeed(t, c, right.LeaderStore)
	rf.register(right, 4, 0)
	rf.items(5*time.Second, isInitialized)
	if err := c.Merge([]byte("a")); err != nil {
		t.Fatal(err)
	}
	its = nf.items(5*time.Second, isError)
	if its[len(its)-1].ev.GetError().EpochNotMatch == nil {
		t.Fatalf("merge target: %v", its[len(its)-1].ev.GetError())
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
	if strings.Join(got, ", ") != "PREWRITE a=1, COMMIT a, PREWRITE a=2, COMMIT a" {
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
	if got := rows(g.items(5*time.Second, isInitialized)); strings.Join(got, ",") != "COMMITTED a=1,COMMITTED a=2,INITIALIZED" {
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
	c.StoreUp(store)
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
