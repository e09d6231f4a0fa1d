package simcluster_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/tikv/client-go/v2/txnkv/transaction"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"logbackup/tests/eventually"
	"logbackup/tests/simcluster"
)

// TestScanInterleavesLiveRows: writes after the registration snapshot flow
// live while the scan is still being sent, as in TiKV, so a COMMIT can
// arrive before the scanned PREWRITE it belongs to.
func TestScanInterleavesLiveRows(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	put(t, c, "a", "old")
	open, err := c.Prewrite(ctx, simcluster.Mutation{Key: []byte("b"), Value: []byte("held")})
	if err != nil {
		t.Fatal(err)
	}
	r := c.RegionByKey([]byte("a"))
	c.HoldScans(r.LeaderStore, true)
	f := openFeed(t, c, r.LeaderStore)
	f.register(r, 1, 0)
	// The registration is applied (and its snapshot taken) once the store
	// counts it; poll for that rather than sleeping.
	eventually.True(t, 10*time.Second, func() bool { return c.Subscriptions(r.LeaderStore) == 1 }, "one subscription on the leader's store")
	if _, err := open.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	put(t, c, "c", "new")
	got := rows(f.items(5*time.Second, func(it item) bool {
		e := it.ev.GetEntries()
		return e != nil && e.Entries[len(e.Entries)-1].Type == cdcpb.Event_COMMIT && string(e.Entries[0].Key) == "c"
	}))
	if want := "COMMIT b=held, PREWRITE c=new, COMMIT c=new"; strings.Join(got, ", ") != want {
		t.Fatalf("live rows during the scan: %s\nwant %s", strings.Join(got, ", "), want)
	}
	c.HoldScans(r.LeaderStore, false)
	got = rows(f.items(5*time.Second, isInitialized))
	if want := "COMMITTED a=old, PREWRITE b=held, INITIALIZED"; strings.Join(got, ", ") != want {
		t.Fatalf("scan after the live rows: %s\nwant %s", strings.Join(got, ", "), want)
	}
}

// TestScanAndLiveAtomicUnderConcurrentWrites: registrations made while two
// writers race on shared keys each see every version committed after their
// checkpoint exactly once — as a COMMITTED scan row or as a COMMIT joined
// with its PREWRITE — and nothing else.
func TestScanAndLiveAtomicUnderConcurrentWrites(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	r := c.RegionByKey([]byte("k"))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		rng := rand.New(rand.NewSource(seed + int64(w)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				_, err := c.Txn(ctx, func(txn *transaction.KVTxn) error {
					for j := 0; j < 3; j++ {
						if err := txn.Set([]byte(fmt.Sprintf("k%d", rng.Intn(20))), []byte(fmt.Sprint(i))); err != nil {
							return err
						}
					}
					return nil
				})
				_ = err // write conflicts between the writers are expected
			}
		}()
	}
	type sub struct {
		f  *feed
		cp uint64
	}
	var subs []sub
	for i := 0; i < 4; i++ {
		eventually.True(t, 10*time.Second, func() bool { return len(c.Committed(0, ^uint64(0))) > 10*(i+1) }, "over %d commits", 10*(i+1))
		cp, err := c.TSO(ctx)
		if err != nil {
			t.Fatal(err)
		}
		f := openFeed(t, c, r.LeaderStore)
		f.register(r, uint64(i+1), cp)
		subs = append(subs, sub{f, cp})
	}
	eventually.True(t, 10*time.Second, func() bool { return len(c.Committed(0, ^uint64(0))) > 60 }, "over 60 commits")
	close(stop)
	wg.Wait()
	for _, tid := range c.OpenTxns() { // a failed commit can leave locks
		if err := c.ResolveTxn(ctx, tid); err != nil {
			t.Fatal(err)
		}
	}
	end, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range subs {
		seen := map[string]int{}
		prewrites := map[string]bool{}
		var held []string // COMMITs before INITIALIZED may precede their scanned PREWRITE
		initialized := false
		s.f.items(10*time.Second, func(it item) bool {
			if it.resolved != nil {
				return it.resolved.Ts >= end
			}
			for _, row := range it.ev.GetEntries().GetEntries() {
				k := fmt.Sprintf("%s@%d", row.Key, row.StartTs)
				switch row.Type {
				case cdcpb.Event_PREWRITE:
					prewrites[k] = true
				case cdcpb.Event_COMMITTED:
					seen[k]++
				case cdcpb.Event_COMMIT:
					if !prewrites[k] && initialized {
						t.Errorf("sub %d: COMMIT %s after INITIALIZED without a PREWRITE before it", i, k)
					} else if !prewrites[k] {
						held = append(held, k)
					}
					// A transaction that took its commit ts before the
					// checkpoint but committed after the snapshot is sent
					// live; a client drops it (it is not after the checkpoint).
					if row.CommitTs > s.cp {
						seen[k]++
					}
				case cdcpb.Event_INITIALIZED:
					initialized = true
					for _, h := range held {
						if !prewrites[h] {
							t.Errorf("sub %d: COMMIT %s matched no PREWRITE of the scan", i, h)
						}
					}
				}
			}
			return false
		})
		want := map[string]int{}
		for _, v := range c.Committed(s.cp, end) {
			want[fmt.Sprintf("%s@%d", v.Key, v.StartTS)] = 1
		}
		for k, n := range seen {
			if want[k] != n {
				t.Errorf("sub %d (checkpoint %d): %s delivered %d times, want %d", i, s.cp, k, n, want[k])
			}
		}
		for k := range want {
			if seen[k] == 0 {
				t.Errorf("sub %d (checkpoint %d): %s missing", i, s.cp, k)
			}
		}
	}
	if err := c.CheckLedger(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestResolvedTsLikeTiKV: TiKV's per-downstream advanced_to starts at 0, so
// a lock older than the registration's checkpoint gives a resolved ts below
// that checkpoint; a client without a version (< 4.0.8) gets deprecated
// per-region resolved ts events and no cluster-id check.
func TestResolvedTsLikeTiKV(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	open, err := c.Prewrite(ctx, simcluster.Mutation{Key: []byte("lock"), Value: []byte("v")})
	if err != nil {
		t.Fatal(err)
	}
	cp, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := c.RegionByKey([]byte("a"))
	f := openFeed(t, c, r.LeaderStore)
	f.register(r, 1, cp)
	its := f.items(5*time.Second, func(it item) bool { return it.resolved != nil })
	if got := its[len(its)-1].resolved.Ts; got != open.StartTS || got >= cp {
		t.Fatalf("resolved ts %d with a lock at %d and checkpoint %d: want the lock's start ts", got, open.StartTS, cp)
	}

	old := openFeedOpts(t, c, r.LeaderStore, "")
	m := *r.Meta
	err = old.stream.Send(&cdcpb.ChangeDataRequest{Header: &cdcpb.Header{ClusterId: c.ClusterID() + 1}, RegionId: m.Id,
		RegionEpoch: m.RegionEpoch, RequestId: 9, CheckpointTs: cp,
		Request: &cdcpb.ChangeDataRequest_Register_{Register: &cdcpb.ChangeDataRequest_Register{}}})
	if err != nil {
		t.Fatal(err)
	}
	old.items(5*time.Second, isInitialized) // no cluster-id check before 5.3.0
	its = old.items(5*time.Second, func(it item) bool {
		if it.resolved != nil {
			t.Fatalf("a store-level resolved ts to a client older than 4.0.8: %v", it.resolved)
		}
		_, ok := it.ev.Event.(*cdcpb.Event_ResolvedTs)
		return ok
	})
	if e := its[len(its)-1].ev; e.RequestId != 9 || e.RegionId != m.Id || e.GetResolvedTs() != open.StartTS {
		t.Fatalf("per-region resolved ts: %v", e)
	}
}

// TestHeartbeatResendsPrewrite: a heartbeat rewrites the lock and TiKV sends
// it again — with the value when it is short, not at all when it is long.
func TestHeartbeatResendsPrewrite(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	r := c.RegionByKey([]byte("a"))
	f := openFeed(t, c, r.LeaderStore)
	f.register(r, 1, 0)
	f.items(5*time.Second, isInitialized)
	long := strings.Repeat("L", 300)
	short, err := c.Prewrite(ctx, simcluster.Mutation{Key: []byte("s"), Value: []byte("short")})
	if err != nil {
		t.Fatal(err)
	}
	lng, err := c.Prewrite(ctx, simcluster.Mutation{Key: []byte("t"), Value: []byte(long)})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []*simcluster.OpenTxn{lng, short} {
		if err := o.Heartbeat(ctx, 3*time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := short.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	got := rows(f.items(5*time.Second, func(it item) bool {
		e := it.ev.GetEntries()
		return e != nil && e.Entries[0].Type == cdcpb.Event_COMMIT
	}))
	if want := "PREWRITE s=short, PREWRITE t=<300 bytes>, PREWRITE s=short, COMMIT s=short"; strings.Join(got, ", ") != want {
		t.Fatalf("rows: %s\nwant %s", strings.Join(got, ", "), want)
	}
}

// TestSubscriptionsEnd: deregistering a request id (without a region) and
// closing a stream remove the store's subscriptions.
func TestSubscriptionsEnd(t *testing.T) {
	c := start(t, "m")
	a, z := c.RegionByKey([]byte("a")), c.RegionByKey([]byte("z"))
	if a.LeaderStore != z.LeaderStore {
		if err := c.TransferLeader(z.Meta.Id, a.LeaderStore); err != nil {
			t.Fatal(err)
		}
		z = c.RegionByKey([]byte("z"))
	}
	store := a.LeaderStore
	f := openFeed(t, c, store)
	f.register(a, 1, 0)
	f.register(z, 1, 0)
	f.register(a, 2, 0)
	inits := 0
	f.items(5*time.Second, func(it item) bool {
		if isInitialized(it) {
			inits++
		}
		return inits == 3
	})
	if n := c.Subscriptions(store); n != 3 {
		t.Fatalf("%d subscriptions, want 3", n)
	}
	if err := f.stream.Send(&cdcpb.ChangeDataRequest{RequestId: 1,
		Request: &cdcpb.ChangeDataRequest_Deregister_{Deregister: &cdcpb.ChangeDataRequest_Deregister{}}}); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, func() bool { return c.Subscriptions(store) == 1 }, "store %d's subscription", store)
	f.cancel()
	eventually.True(t, 10*time.Second, func() bool { return c.Subscriptions(store) == 0 }, "store %d's subscription to end", store)
}

// TestLargeMessages: TiKV batches events into messages of up to 6 MiB, past
// gRPC's default 4 MiB receive limit; a client that keeps the default fails
// as it would against TiKV.
func TestLargeMessages(t *testing.T) {
	c := start(t)
	value := bytes.Repeat([]byte("v"), 1<<20+1000)
	if _, err := c.Txn(context.Background(), func(txn *transaction.KVTxn) error {
		for i := 0; i < 5; i++ {
			if err := txn.Set([]byte(fmt.Sprintf("big%d", i)), value); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	r := c.RegionByKey([]byte("big0"))
	ok := openFeed(t, c, r.LeaderStore)
	ok.register(r, 1, 0)
	if got := rows(ok.items(10*time.Second, isInitialized)); len(got) != 6 {
		t.Fatalf("scan: %v", got)
	}
	small := openFeedOpts(t, c, r.LeaderStore, clientVersion) // default receive limit
	small.register(r, 1, 0)
	select {
	case err := <-small.errc:
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("want ResourceExhausted, got %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a 4 MiB-limited client received a >4 MiB scan")
	}
}
