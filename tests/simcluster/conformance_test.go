package simcluster_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/client-go/v2/txnkv/transaction"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"logbackup/tests/simcluster"
)

func start(t *testing.T, splits ...string) *simcluster.Cluster {
	t.Helper()
	var keys [][]byte
	for _, s := range splits {
		keys = append(keys, []byte(s))
	}
	c, err := simcluster.Start(context.Background(), simcluster.Config{SplitKeys: keys, ResolvedTsInterval: 20 * time.Millisecond})
	t.Logf("simulator seed %d", c.Seed())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// feed is a plain gRPC EventFeed client, as an agent would open.
type feed struct {
	t       testing.TB
	c       *simcluster.Cluster
	stream  cdcpb.ChangeData_EventFeedClient
	version string
	events  chan *cdcpb.ChangeDataEvent
	errc    chan error
	cancel  context.CancelFunc
}

// clientVersion is the TiCDC version test clients announce: past 5.3.0, so
// TiKV batches resolved ts and checks the cluster id.
const clientVersion = "8.5.0"

func openFeed(t testing.TB, c *simcluster.Cluster, store uint64) *feed {
	return openFeedOpts(t, c, store, clientVersion, grpc.MaxCallRecvMsgSize(256<<20))
}

func openFeedOpts(t testing.TB, c *simcluster.Cluster, store uint64, version string, opts ...grpc.CallOption) *feed {
	t.Helper()
	conn, err := grpc.NewClient(c.StoreAddr(store), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultCallOptions(opts...))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := cdcpb.NewChangeDataClient(conn).EventFeed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f := &feed{t: t, c: c, stream: stream, version: version, events: make(chan *cdcpb.ChangeDataEvent, 1<<16), errc: make(chan error, 1), cancel: cancel}
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
		Header: &cdcpb.Header{ClusterId: f.c.ClusterID(), TicdcVersion: f.version}, RegionId: m.Id, RegionEpoch: m.RegionEpoch,
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
					if len(r.Value) > 0 && len(r.Value) < 64 {
						s += "=" + string(r.Value)
					} else if len(r.Value) > 0 {
						s += fmt.Sprintf("=<%d bytes>", len(r.Value))
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
	// TiKV compares the epoch's version only: a stale conf_ver is accepted.
	confVer := *r.Meta
	confVer.RegionEpoch = &metapb.RegionEpoch{Version: r.Meta.RegionEpoch.Version, ConfVer: r.Meta.RegionEpoch.ConfVer + 7}
	lf.registerRange(&confVer, 20, 0, nil, nil)
	lf.items(5*time.Second, isInitialized)
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
	err = lf.stream.Send(&cdcpb.ChangeDataRequest{Header: &cdcpb.Header{ClusterId: c.ClusterID()}, RegionId: r.Meta.Id, KvApi: cdcpb.ChangeDataRequest_RawKV,
		RegionEpoch: r.Meta.RegionEpoch, RequestId: 21, Request: &cdcpb.ChangeDataRequest_Register_{Register: &cdcpb.ChangeDataRequest_Register{}}})
	if err != nil {
		t.Fatal(err)
	}
	its = lf.items(5*time.Second, isError)
	if its[len(its)-1].ev.GetError().Compatibility == nil {
		t.Fatalf("want compatibility for kv_api RawKV, got %v", its[len(its)-1].ev.GetError())
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
	put(t, c, "a2", "")             // delete
	big := strings.Repeat("x", 256) // one past TiKV's short-value limit
	put(t, c, "a6", big)
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
	// A COMMIT carries the value when it is short (TiKV's write record keeps
	// it) and none when it is long; a client must take it from the prewrite.
	want := "COMMIT a3=locked, PREWRITE a4=v4, COMMIT a4=v4, PREWRITE a2 (del), COMMIT a2 (del), " +
		"PREWRITE a6=<256 bytes>, COMMIT a6, PREWRITE a5=never, ROLLBACK a5"
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
	if strings.Join(got, ", ") != "PREWRITE b=y, COMMIT b=y" {
		t.Fatalf("live rows outside the range leaked: %v", got)
	}
}
