package simcluster_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/gogo/protobuf/proto"
	"github.com/pingcap/kvproto/pkg/pdpb"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/clients/router"
	"github.com/tikv/pd/client/opt"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"logbackup/tests/eventually"
	"logbackup/tests/simcluster"
)

// startPD starts a cluster that serves PD on the network.
func startPD(t *testing.T, cfg simcluster.Config, splits ...string) *simcluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, s := range splits {
		cfg.SplitKeys = append(cfg.SplitKeys, []byte(s))
	}
	cfg.ServePD = true
	if cfg.ResolvedTsInterval == 0 {
		cfg.ResolvedTsInterval = 50 * time.Millisecond
	}
	c, err := simcluster.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("simulator seed %d, PD at %s", c.Seed(), c.PDAddr())
	t.Cleanup(c.Close)
	return c
}

// newPDClient is the real pd client on the cluster's PD address.
func newPDClient(t *testing.T, c *simcluster.Cluster, sec pd.SecurityOption, opts ...opt.ClientOption) pd.Client {
	t.Helper()
	cli, err := dialPD(c.PDAddr(), sec, 30*time.Second, opts...)
	if err != nil {
		t.Fatalf("pd client: %v", err)
	}
	t.Cleanup(cli.Close)
	return cli
}

// dialPD starts a pd client, giving up after timeout. The client lives as
// long as the context it is made with, so the deadline cancels that context
// only while the client is starting.
func dialPD(addr string, sec pd.SecurityOption, timeout time.Duration, opts ...opt.ClientOption) (pd.Client, error) {
	ctx, cancel := context.WithCancel(context.Background())
	timer := time.AfterFunc(timeout, cancel)
	cli, err := pd.NewClientWithContext(ctx, []string{addr}, sec, append([]opt.ClientOption{opt.WithCustomTimeoutOption(10 * time.Second)}, opts...)...)
	if !timer.Stop() || err != nil {
		cancel()
		if err == nil {
			cli.Close()
			err = fmt.Errorf("pd client started after its %s deadline", timeout)
		}
		return nil, err
	}
	return &closingPD{Client: cli, cancel: cancel}, nil
}

// closingPD releases the client's context when it is closed.
type closingPD struct {
	pd.Client
	cancel context.CancelFunc
}

func (c *closingPD) Close() {
	c.Client.Close()
	c.cancel()
}

// rawPD is a plain gRPC pdpb client, for what the pd client hides.
func rawPD(t *testing.T, c *simcluster.Cluster) pdpb.PDClient {
	t.Helper()
	conn, err := grpc.NewClient(c.PDAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pdpb.NewPDClient(conn)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestPDServerMembers: the pd client finds the cluster id and the one
// member (leader) at PDAddr, and an etcd client works on the same address,
// whose data is in Config.DataDir.
func TestPDServerMembers(t *testing.T) {
	dir := t.TempDir()
	c := startPD(t, simcluster.Config{DataDir: dir})
	ctx := testCtx(t)
	if _, err := os.Stat(filepath.Join(dir, "member")); err != nil {
		t.Fatalf("no etcd data in DataDir: %v", err)
	}
	cli := newPDClient(t, c, pd.SecurityOption{})
	if got := cli.GetClusterID(ctx); got != c.ClusterID() || got == 0 {
		t.Fatalf("cluster id %d, cluster says %d", got, c.ClusterID())
	}
	if got := c.PD().GetClusterID(ctx); got != c.ClusterID() {
		t.Fatalf("in-process cluster id %d, want %d", got, c.ClusterID())
	}
	members, err := cli.GetAllMembers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + c.PDAddr()
	if len(members) != 1 || len(members[0].ClientUrls) != 1 || members[0].ClientUrls[0] != url || members[0].MemberId == 0 {
		t.Fatalf("members %v, want one with client URL %s", members, url)
	}
	if got := cli.GetLeaderURL(); got != url {
		t.Fatalf("leader %q, want %q", got, url)
	}

	etcd, err := clientv3.New(clientv3.Config{Endpoints: []string{c.PDAddr()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Close()
	if _, err := etcd.Put(ctx, "/tidb/br-stream/probe", "x"); err != nil {
		t.Fatalf("etcd on PD's address: %v", err)
	}
	resp, err := etcd.MemberList(ctx)
	if err != nil || len(resp.Members) != 1 || resp.Members[0].ID != members[0].MemberId {
		t.Fatalf("etcd members %v (%v), want PD's member %d", resp, err, members[0].MemberId)
	}
}

// TestPDServerTSO: timestamps from the network PD, from Cluster.TSO and
// from the in-process PD come from one clock: strictly increasing when
// interleaved, and unique under concurrent, batched requests.
func TestPDServerTSO(t *testing.T) {
	c := startPD(t, simcluster.Config{})
	ctx := testCtx(t)
	cli := newPDClient(t, c, pd.SecurityOption{})
	var last uint64
	for i := 0; i < 300; i++ {
		var (
			next uint64
			err  error
		)
		switch i % 3 {
		case 0:
			next, err = composed(cli.GetTS(ctx))
		case 1:
			next, err = c.TSO(ctx)
		case 2:
			next, err = composed(c.PD().GetTS(ctx))
		}
		if err != nil {
			t.Fatal(err)
		}
		if next <= last {
			t.Fatalf("step %d: timestamp %d after %d", i, next, last)
		}
		last = next
	}

	// Concurrent requests: the pd client batches them (count > 1), the
	// server hands out ranges; every timestamp must be unique.
	var (
		mu   sync.Mutex
		seen = map[uint64]bool{}
		wg   sync.WaitGroup
		errs = make(chan error, 16)
	)
	for g := 0; g < 10; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var prev uint64
			for i := 0; i < 200; i++ {
				var (
					v   uint64
					err error
				)
				if g < 8 {
					v, err = composed(cli.GetTS(ctx))
				} else {
					v, err = c.TSO(ctx)
				}
				if err != nil {
					errs <- err
					return
				}
				if v <= prev {
					errs <- fmt.Errorf("goroutine %d: %d after %d", g, v, prev)
					return
				}
				prev = v
				mu.Lock()
				dup := seen[v]
				seen[v] = true
				mu.Unlock()
				if dup {
					errs <- fmt.Errorf("timestamp %d handed out twice", v)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(seen) != 10*200 {
		t.Fatalf("%d timestamps, want %d", len(seen), 10*200)
	}
}

func composed(physical, logical int64, err error) (uint64, error) {
	return uint64(physical)<<18 | uint64(logical), err
}

// sameRegions compares regions a client got with the cluster's own view.
func sameRegions(t *testing.T, what string, got []*router.Region, want []simcluster.RegionInfo) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d regions, want %d", what, len(got), len(want))
	}
	for i := range got {
		sameRegion(t, fmt.Sprintf("%s[%d]", what, i), got[i], want[i])
	}
}

func sameRegion(t *testing.T, what string, got *router.Region, want simcluster.RegionInfo) {
	t.Helper()
	if got == nil {
		t.Fatalf("%s: no region, want %d", what, want.Meta.Id)
	}
	if !proto.Equal(got.Meta, want.Meta) {
		t.Fatalf("%s: region %v, want %v", what, got.Meta, want.Meta)
	}
	if got.Leader.GetId() != want.LeaderPeer.GetId() || got.Leader.GetStoreId() != want.LeaderStore {
		t.Fatalf("%s: leader %v, want peer %d on store %d", what, got.Leader, want.LeaderPeer.GetId(), want.LeaderStore)
	}
}

// intersecting is the brute-force answer to a batch scan: every region
// meeting one of the ranges, in key order, at most limit.
func intersecting(all []simcluster.RegionInfo, ranges []router.KeyRange, limit int) []simcluster.RegionInfo {
	var out []simcluster.RegionInfo
	for _, r := range all {
		for _, kr := range ranges {
			startsBefore := len(kr.EndKey) == 0 || bytes.Compare(r.Meta.StartKey, kr.EndKey) < 0
			endsAfter := len(r.Meta.EndKey) == 0 || bytes.Compare(r.Meta.EndKey, kr.StartKey) > 0
			if startsBefore && endsAfter {
				out = append(out, r)
				break
			}
		}
	}
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
}

// checkRegions asks every region query of the client and compares the
// answers with c.Regions().
func checkRegions(t *testing.T, ctx context.Context, c *simcluster.Cluster, cli pd.Client) {
	t.Helper()
	all := c.Regions()
	got, err := cli.ScanRegions(ctx, nil, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	sameRegions(t, "ScanRegions(all)", got, all)

	// Paging with a limit, from each page's last end key.
	var paged []*router.Region
	for start := []byte(nil); ; {
		page, err := cli.ScanRegions(ctx, start, nil, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 || len(page) > 2 {
			t.Fatalf("page from %x: %d regions", start, len(page))
		}
		paged = append(paged, page...)
		start = page[len(page)-1].Meta.EndKey
		if len(start) == 0 {
			break
		}
	}
	sameRegions(t, "ScanRegions(paged)", paged, all)

	for i, r := range all {
		// By key: the start key and a key inside the region.
		for _, k := range [][]byte{r.Meta.StartKey, append(append([]byte(nil), r.Meta.StartKey...), 0)} {
			g, err := cli.GetRegion(ctx, k)
			if err != nil {
				t.Fatal(err)
			}
			sameRegion(t, fmt.Sprintf("GetRegion(%x)", k), g, r)
		}
		g, err := cli.GetRegionByID(ctx, r.Meta.Id)
		if err != nil {
			t.Fatal(err)
		}
		sameRegion(t, fmt.Sprintf("GetRegionByID(%d)", r.Meta.Id), g, r)
		prev, err := cli.GetPrevRegion(ctx, append(append([]byte(nil), r.Meta.StartKey...), 0))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if prev != nil {
				t.Fatalf("GetPrevRegion in the first region: %v", prev.Meta)
			}
		} else {
			sameRegion(t, fmt.Sprintf("GetPrevRegion(in %d)", r.Meta.Id), prev, all[i-1])
		}
		// A scan from a key inside region i starts at region i.
		from, err := cli.ScanRegions(ctx, append(append([]byte(nil), r.Meta.StartKey...), 0), nil, 1)
		if err != nil {
			t.Fatal(err)
		}
		sameRegions(t, "ScanRegions(inside, 1)", from, all[i:i+1])
	}
	if g, err := cli.GetRegionByID(ctx, 1<<40); err != nil || g != nil {
		t.Fatalf("GetRegionByID(unknown) = %v, %v; want nil, nil", g, err)
	}

	// Batch scans: two disjoint ranges and two adjacent ones, with and
	// without limits.
	k := func(s string) []byte { return simcluster.EncodeKey([]byte(s)) }
	for _, ranges := range [][]router.KeyRange{
		{{StartKey: nil, EndKey: k("c")}, {StartKey: k("f"), EndKey: k("h")}},
		{{StartKey: k("b"), EndKey: k("e")}, {StartKey: k("e"), EndKey: nil}},
		{{StartKey: k("a1"), EndKey: k("a2")}, {StartKey: k("a3"), EndKey: k("g5")}},
	} {
		for _, limit := range []int{0, 1, 2, 3, 100} {
			got, err := cli.BatchScanRegions(ctx, ranges, limit)
			if err != nil {
				t.Fatalf("BatchScanRegions: %v", err)
			}
			sameRegions(t, fmt.Sprintf("BatchScanRegions(%d ranges, limit %d)", len(ranges), limit), got, intersecting(all, ranges, limit))
			got, err = cli.BatchScanRegions(ctx, ranges, limit, opt.WithOutputMustContainAllKeyRange())
			if err != nil {
				t.Fatalf("BatchScanRegions(contain all): %v", err)
			}
			sameRegions(t, "BatchScanRegions(contain all)", got, intersecting(all, ranges, limit))
		}
	}
}

// TestPDServerRegions: every region query of the pd client, plain and with
// its router client (the QueryRegion stream), agrees with the cluster's
// own view through leader transfers, splits and merges.
func TestPDServerRegions(t *testing.T) {
	c := startPD(t, simcluster.Config{Stores: 3}, "b", "d", "f", "h")
	ctx := testCtx(t)
	plain := newPDClient(t, c, pd.SecurityOption{})
	routed := newPDClient(t, c, pd.SecurityOption{}, opt.WithEnableRouterClient(true))
	check := func(step string) {
		t.Helper()
		t.Logf("%s: %d regions", step, len(c.Regions()))
		checkRegions(t, ctx, c, plain)
		checkRegions(t, ctx, c, routed)
	}
	check("start")
	rng := rand.New(rand.NewSource(c.Seed()))
	stores := c.StoreIDs()
	for step := 0; step < 24; step++ {
		regions := c.Regions()
		r := regions[rng.Intn(len(regions))]
		switch step % 3 {
		case 0:
			to := stores[rng.Intn(len(stores))]
			if err := c.TransferLeader(r.Meta.Id, to); err != nil {
				t.Fatal(err)
			}
			check(fmt.Sprintf("step %d: leader of %d to store %d", step, r.Meta.Id, to))
		case 1:
			key := []byte(fmt.Sprintf("%c%d", 'a'+rng.Intn(9), rng.Intn(100)))
			if bytes.Equal(c.RegionByKey(key).Meta.StartKey, simcluster.EncodeKey(key)) {
				continue
			}
			if _, err := c.Split(key); err != nil {
				t.Fatal(err)
			}
			check(fmt.Sprintf("step %d: split at %q", step, key))
		case 2:
			if len(r.Meta.EndKey) == 0 {
				continue
			}
			raw, err := simcluster.DecodeKey(r.Meta.StartKey)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Merge(raw); err != nil {
				t.Fatal(err)
			}
			check(fmt.Sprintf("step %d: merge from %q", step, raw))
		}
	}
}

// TestPDServerStores: stores and their addresses (each store's CDC server)
// as the cluster reports them.
func TestPDServerStores(t *testing.T) {
	c := startPD(t, simcluster.Config{Stores: 4})
	ctx := testCtx(t)
	cli := newPDClient(t, c, pd.SecurityOption{})
	stores, err := cli.GetAllStores(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids := c.StoreIDs()
	if len(stores) != len(ids) {
		t.Fatalf("%d stores, want %d", len(stores), len(ids))
	}
	for i, s := range stores {
		if s.Id != ids[i] || s.Address != c.StoreAddr(ids[i]) || s.Address == "" {
			t.Fatalf("store %v, want id %d at %s", s, ids[i], c.StoreAddr(ids[i]))
		}
		one, err := cli.GetStore(ctx, s.Id)
		if err != nil || !proto.Equal(one, s) {
			t.Fatalf("GetStore(%d) = %v, %v; want %v", s.Id, one, err, s)
		}
		local, err := c.PD().GetStore(ctx, s.Id)
		if err != nil || !proto.Equal(local, s) {
			t.Fatalf("in-process GetStore(%d) = %v, %v; want %v", s.Id, local, err, s)
		}
	}
	if _, err := cli.GetStore(ctx, 999); err == nil {
		t.Fatal("GetStore of an unknown store: no error")
	}
	// A restarted CDC server keeps its address, and PD keeps reporting it.
	if err := c.RestartCDC(ids[0]); err != nil {
		t.Fatal(err)
	}
	one, err := cli.GetStore(ctx, ids[0])
	if err != nil || one.Address != c.StoreAddr(ids[0]) {
		t.Fatalf("after restart: %v, %v", one, err)
	}
}

// TestPDServerProtocol: what the pd client hides — PD's cluster id check,
// a Tso request for no timestamps, batch scans with bad ranges, an unknown
// store, and an open stream's fate when PD goes down.
func TestPDServerProtocol(t *testing.T) {
	c := startPD(t, simcluster.Config{}, "m")
	ctx := testCtx(t)
	raw := rawPD(t, c)
	h := &pdpb.RequestHeader{ClusterId: c.ClusterID()}

	if _, err := raw.GetRegion(ctx, &pdpb.GetRegionRequest{Header: &pdpb.RequestHeader{ClusterId: c.ClusterID() + 1}}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("wrong cluster id: %v, want FailedPrecondition", err)
	}
	if resp, err := raw.GetMembers(ctx, &pdpb.GetMembersRequest{}); err != nil || resp.Header.ClusterId != c.ClusterID() {
		t.Fatalf("GetMembers without a cluster id: %v, %v", resp, err)
	}

	stream, err := raw.Tso(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&pdpb.TsoRequest{Header: h, Count: 3}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil || resp.Count != 3 || resp.Timestamp.Logical < 3 || resp.Timestamp.Physical == 0 {
		t.Fatalf("Tso(3) = %v, %v", resp, err)
	}
	// A timestamp taken after the response is above the whole batch.
	if after, err := c.TSO(ctx); err != nil || after <= uint64(resp.Timestamp.Physical)<<18|uint64(resp.Timestamp.Logical) {
		t.Fatalf("TSO after the batch: %d, %v", after, err)
	}
	if err := stream.Send(&pdpb.TsoRequest{Header: h, Count: 0}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Unknown {
		t.Fatalf("Tso(0): %v, want Unknown (\"tso count should be positive\")", err)
	}

	k := func(s string) []byte { return simcluster.EncodeKey([]byte(s)) }
	for name, ranges := range map[string][]*pdpb.KeyRange{
		"overlapping":       {{StartKey: k("a"), EndKey: k("n")}, {StartKey: k("m"), EndKey: k("z")}},
		"start after end":   {{StartKey: k("z"), EndKey: k("a")}},
		"unsorted disjoint": {{StartKey: k("x"), EndKey: k("y")}, {StartKey: k("a"), EndKey: k("b")}},
	} {
		resp, err := raw.BatchScanRegions(ctx, &pdpb.BatchScanRegionsRequest{Header: h, Ranges: ranges})
		if err != nil || resp.Header.GetError().GetType() != pdpb.ErrorType_UNKNOWN {
			t.Fatalf("BatchScanRegions %s: %v, %v; want an UNKNOWN header error", name, resp, err)
		}
	}
	if resp, err := raw.GetStore(ctx, &pdpb.GetStoreRequest{Header: h, StoreId: 77}); err != nil || resp.Header.GetError() == nil || resp.Store != nil {
		t.Fatalf("GetStore(77): %v, %v", resp, err)
	}

	// PD going down ends an open Tso stream and refuses new calls with
	// Unavailable; up again, it serves.
	stream, err = raw.Tso(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&pdpb.TsoRequest{Header: h, Count: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	c.SetPDDown(true)
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("open stream when PD goes down: %v, want Unavailable", err)
	}
	if _, err := raw.GetMembers(ctx, &pdpb.GetMembersRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("GetMembers while down: %v, want Unavailable", err)
	}
	c.SetPDDown(false)
	if _, err := raw.GetMembers(ctx, &pdpb.GetMembersRequest{}); err != nil {
		t.Fatalf("GetMembers after PD is up: %v", err)
	}
}

// TestPDServerDown: while PD is down the pd client's calls fail (within
// their deadline), etcd and the in-process PD keep serving; once up, the
// same client recovers.
func TestPDServerDown(t *testing.T) {
	c := startPD(t, simcluster.Config{})
	ctx := testCtx(t)
	cli := newPDClient(t, c, pd.SecurityOption{})
	if _, _, err := cli.GetTS(ctx); err != nil {
		t.Fatal(err)
	}
	c.SetPDDown(true)
	short, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := cli.GetAllStores(short); err == nil {
		t.Fatal("GetAllStores while PD is down: no error")
	}
	if _, _, err := cli.GetTS(short); err == nil {
		t.Fatal("GetTS while PD is down: no error")
	}
	if _, _, err := c.PD().GetTS(ctx); err != nil {
		t.Fatalf("in-process PD while down: %v", err)
	}
	etcd, err := clientv3.New(clientv3.Config{Endpoints: []string{c.PDAddr()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Close()
	if _, err := etcd.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("etcd while PD is down: %v", err)
	}

	c.SetPDDown(false)
	eventually.NoError(t, 30*time.Second, func(ctx context.Context) error {
		one, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		_, _, err := cli.GetTS(one)
		return err
	}, "the pd client to recover")
	if _, err := cli.GetAllStores(ctx); err != nil {
		t.Fatalf("GetAllStores after PD is up: %v", err)
	}
}
