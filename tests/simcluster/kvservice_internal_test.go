package simcluster

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/pingcap/kvproto/pkg/tikvpb"
	"github.com/tikv/client-go/v2/config"
	"github.com/tikv/client-go/v2/tikv"
	"github.com/tikv/client-go/v2/tikvrpc"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/opt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// remoteKV is client-go's KV store dialled over the network, as a process
// outside the cluster (br) builds it: PD's client at PDAddr and the stores'
// KV API at the addresses PD reports.
func remoteKV(t *testing.T, c *Cluster) *tikv.KVStore {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pdc, err := pd.NewClientWithContext(context.Background(), []string{c.PDAddr()}, pd.SecurityOption{},
		opt.WithCustomTimeoutOption(10*time.Second))
	if err != nil {
		t.Fatalf("pd client: %v", err)
	}
	if pdc.GetClusterID(ctx) != c.ClusterID() {
		t.Fatalf("remote PD reports cluster %d, want %d", pdc.GetClusterID(ctx), c.ClusterID())
	}
	codecPD := tikv.NewCodecPDClient(tikv.ModeTxn, pdc)
	rpc := tikv.NewRPCClient(tikv.WithSecurity(config.Security{}), tikv.WithCodec(codecPD.GetCodec()))
	store, err := tikv.NewKVStore(fmt.Sprintf("remote-%d", c.ClusterID()), codecPD, tikv.NewMockSafePointKV(), rpc)
	if err != nil {
		t.Fatalf("kv store: %v", err)
	}
	t.Cleanup(func() { _ = store.Close() })
	return store
}

func scanAll(t *testing.T, store *tikv.KVStore, ts uint64, start, end string) map[string]string {
	t.Helper()
	snap := store.GetSnapshot(ts)
	it, err := snap.Iter([]byte(start), []byte(end))
	if err != nil {
		t.Fatalf("scan at %d: %v", ts, err)
	}
	defer it.Close()
	out := map[string]string{}
	for it.Valid() {
		out[string(it.Key())] = string(it.Value())
		if err := it.Next(); err != nil {
			t.Fatalf("scan at %d: %v", ts, err)
		}
	}
	return out
}

// TestKVServiceSnapshotReads: client-go, dialled over the network, reads the
// simulated data through the stores' KV API: scans across regions on three
// stores, point and batch gets, a version in the past, and — across a
// leader transfer — with the region errors it retries on. A lock left by a
// transaction whose primary committed is resolved through the same API, and
// the resolution reaches the ledger (CheckLedger) as any write does.
func TestKVServiceSnapshotReads(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, Config{Stores: 3, ServePD: true, DataDir: t.TempDir(),
		SplitKeys: [][]byte{[]byte("k3"), []byte("k6")}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := map[string]string{}
	for i := range 10 {
		k, v := fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i)
		if _, err := c.Put(ctx, []byte(k), []byte(v)); err != nil {
			t.Fatal(err)
		}
		want[k] = v
	}
	before, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	old := map[string]string{}
	for k, v := range want {
		old[k] = v
	}

	// k1 (primary) and k7 (another region) prewritten; only k1 committed.
	open, err := c.Prewrite(ctx, Mutation{Key: []byte("k1"), Value: []byte("new1")}, Mutation{Key: []byte("k7"), Value: []byte("new7")})
	if err != nil {
		t.Fatal(err)
	}
	commitTS, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	commit := &kvrpcpb.CommitRequest{StartVersion: open.StartTS, Keys: [][]byte{[]byte("k1")}, CommitVersion: commitTS}
	if err := c.sendToLeader(ctx, []byte("k1"), tikvrpc.CmdCommit, commit, func(*tikvrpc.Response) error { return nil }); err != nil {
		t.Fatal(err)
	}
	want["k1"], want["k7"] = "new1", "new7"

	store := remoteKV(t, c)
	now, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := scanAll(t, store, now, "k", "l"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("scan at now:\n got %v\nwant %v", got, want)
	}
	if locks := c.OpenTxns(); len(locks) != 0 {
		t.Fatalf("the reader left locks of %v unresolved", locks)
	}
	if err := c.CheckLedger(ctx); err != nil {
		t.Fatalf("lock resolution through the KV API bypassed the ledger: %v", err)
	}
	if got := scanAll(t, store, before, "k", "l"); fmt.Sprint(got) != fmt.Sprint(old) {
		t.Fatalf("scan in the past:\n got %v\nwant %v", got, old)
	}

	// Leaders move; the client's cached leaders answer NotLeader and it
	// follows.
	for _, r := range c.Regions() {
		to := c.StoreIDs()[(int(r.LeaderStore)+1)%len(c.StoreIDs())]
		if err := c.TransferLeader(r.Meta.Id, to); err != nil {
			t.Fatal(err)
		}
	}
	snap := store.GetSnapshot(now)
	v, err := snap.Get(ctx, []byte("k7"))
	if err != nil || !bytes.Equal(v.Value, []byte("new7")) {
		t.Fatalf("get k7 after leader transfers: %q, %v", v.Value, err)
	}
	got, err := snap.BatchGet(ctx, [][]byte{[]byte("k0"), []byte("k5"), []byte("k9"), []byte("nope")})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || string(got["k5"].Value) != "v5" || string(got["k9"].Value) != "v9" {
		t.Fatalf("batch get: %v", got)
	}
}

// TestKVServiceRefusesWrites: writes stay in process, where the ledger
// records them; the network API answers them Unimplemented.
func TestKVServiceRefusesWrites(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := Start(ctx, Config{Stores: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	conn, err := grpc.NewClient(c.StoreAddr(c.StoreIDs()[0]), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = tikvpb.NewTikvClient(conn).KvPrewrite(ctx, &kvrpcpb.PrewriteRequest{})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("prewrite over the network: %v, want Unimplemented", err)
	}
	r := c.RegionByKey([]byte("a"))
	resp, err := tikvpb.NewTikvClient(conn).KvGet(ctx, &kvrpcpb.GetRequest{Key: []byte("a"), Version: 1,
		Context: &kvrpcpb.Context{RegionId: r.Meta.Id, RegionEpoch: r.Meta.RegionEpoch, Peer: r.LeaderPeer}})
	if err != nil || resp.RegionError != nil || resp.Error != nil || len(resp.Value) != 0 {
		t.Fatalf("get of a missing key: %v, %v", resp, err)
	}
	resp, err = tikvpb.NewTikvClient(conn).KvGet(ctx, &kvrpcpb.GetRequest{Key: []byte("a"), Version: 1,
		Context: &kvrpcpb.Context{RegionId: r.Meta.Id + 1000}})
	if err != nil || resp.RegionError == nil {
		t.Fatalf("get with an unknown region: %v, %v; want a region error", resp, err)
	}
}
