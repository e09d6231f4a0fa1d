package simcluster

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/errorpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/client-go/v2/testutils"
	"github.com/tikv/client-go/v2/tikv"
	"github.com/tikv/client-go/v2/util/codec"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/circuitbreaker"
)

// Config shapes the simulated cluster.
type Config struct {
	Stores int // default 3
	// SplitKeys are raw keys to split the initial region at.
	SplitKeys [][]byte
	// ResolvedTsInterval is how often stores send resolved ts (default 100 ms).
	ResolvedTsInterval time.Duration
	// StreamQueueLimit bounds the events queued on one EventFeed stream;
	// past it the store drops the stream's subscriptions with `congested`,
	// as TiKV does when its sink memory quota is exceeded (default 1<<20).
	StreamQueueLimit int
}

// Cluster is a running simulated cluster.
type Cluster struct {
	cfg       Config
	mock      *testutils.MockCluster
	pdClient  pd.Client
	kv        *tikv.KVStore
	clusterID uint64
	storeIDs  []uint64

	// mu orders everything that must be atomic against CDC: ledger changes,
	// routing rows to subscriptions, registrations and topology changes.
	mu     sync.Mutex
	ledger *ledger
	stores map[uint64]*storeServer
	subs   map[uint64]map[*subscription]struct{} // by region id

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Start builds the cluster, its CDC servers and the resolved-ts loop.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.Stores <= 0 {
		cfg.Stores = 3
	}
	if cfg.ResolvedTsInterval <= 0 {
		cfg.ResolvedTsInterval = 100 * time.Millisecond
	}
	if cfg.StreamQueueLimit <= 0 {
		cfg.StreamQueueLimit = 1 << 20
	}
	client, mock, pdClient, err := testutils.NewMockTiKV("", nil)
	if err != nil {
		return nil, fmt.Errorf("mock tikv: %w", err)
	}
	storeIDs, _, regionID, _ := testutils.BootstrapWithMultiStores(mock, cfg.Stores)
	c := &Cluster{
		cfg: cfg, mock: mock, pdClient: pdClient, storeIDs: storeIDs,
		ledger: newLedger(), stores: map[uint64]*storeServer{}, subs: map[uint64]map[*subscription]struct{}{},
	}
	for _, k := range cfg.SplitKeys {
		r, _, _, _ := mock.GetRegionByKey(EncodeKey(k))
		if r == nil {
			r, _ = mock.GetRegion(regionID)
		}
		c.splitLocked(r.Id, k)
	}
	for _, id := range storeIDs {
		s, err := c.startStore(id, "127.0.0.1:0")
		if err != nil {
			c.Close()
			return nil, err
		}
		c.stores[id] = s
		mock.UpdateStoreAddr(id, s.addr)
	}
	c.clusterID = pdClient.GetClusterID(ctx)
	c.kv, err = tikv.NewTestTiKVStore(client, pdClient, func(inner tikv.Client) tikv.Client {
		return &hookClient{Client: inner, c: c}
	}, nil, 0)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("tikv store: %w", err)
	}
	lctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.resolvedTsLoop(lctx)
	}()
	return c, nil
}

// Close stops everything.
func (c *Cluster) Close() {
	if c.cancel != nil {
		c.cancel()
	}
	c.wg.Wait()
	c.mu.Lock()
	stores := c.stores
	c.mu.Unlock()
	for _, s := range stores {
		s.stop()
	}
	if c.kv != nil {
		c.kv.Close()
	}
}

// PD is the PD client agents use. Region keys in it are encoded.
func (c *Cluster) PD() pd.Client { return c.pdClient }

// KV is the transactional store writes go through.
func (c *Cluster) KV() *tikv.KVStore { return c.kv }

// ClusterID is the id PD reports (and the CDC servers check).
func (c *Cluster) ClusterID() uint64 { return c.clusterID }

// StoreIDs lists the stores.
func (c *Cluster) StoreIDs() []uint64 { return append([]uint64(nil), c.storeIDs...) }

// StoreAddr is the loopback address of a store's CDC gRPC server.
func (c *Cluster) StoreAddr(store uint64) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stores[store].addr
}

// TSO returns a fresh timestamp from the mock PD.
func (c *Cluster) TSO(ctx context.Context) (uint64, error) {
	return c.kv.CurrentTimestamp("global")
}

// WithCircuitBreaker returns ctx carrying the circuit breaker mock PD's
// ScanRegions insists on (it panics without one).
func WithCircuitBreaker(ctx context.Context) context.Context {
	return circuitbreaker.WithCircuitBreaker(ctx, circuitbreaker.NewCircuitBreaker("simcluster", circuitbreaker.AlwaysClosedSettings))
}

// EncodeKey turns a raw key into the memcomparable form regions use.
func EncodeKey(raw []byte) []byte { return codec.EncodeBytes(nil, raw) }

// DecodeKey turns an encoded key back into a raw key.
func DecodeKey(enc []byte) ([]byte, error) {
	_, raw, err := codec.DecodeBytes(enc, nil)
	return raw, err
}

// RegionInfo is a region with its leader's store.
type RegionInfo struct {
	Meta        *metapb.Region // encoded keys
	LeaderStore uint64
	LeaderPeer  *metapb.Peer
}

// Regions lists every region in key order.
func (c *Cluster) Regions() []RegionInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.regionsLocked()
}

func (c *Cluster) regionsLocked() []RegionInfo {
	var out []RegionInfo
	for _, r := range c.mock.ScanRegions(nil, nil, 0) {
		info := RegionInfo{Meta: r.Meta, LeaderPeer: r.Leader}
		if r.Leader != nil {
			info.LeaderStore = r.Leader.StoreId
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i].Meta.StartKey, out[j].Meta.StartKey) < 0 })
	return out
}

// RegionByKey returns the region holding a raw key.
func (c *Cluster) RegionByKey(raw []byte) RegionInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.regionByEncoded(EncodeKey(raw))
}

func (c *Cluster) regionByEncoded(ek []byte) RegionInfo {
	r, leader, _, _ := c.mock.GetRegionByKey(ek)
	info := RegionInfo{Meta: r, LeaderPeer: leader}
	if leader != nil {
		info.LeaderStore = leader.StoreId
	}
	return info
}

// TransferLeader moves a region's leader to a store holding one of its
// peers. Subscriptions on the old leader get `not_leader` naming the new one.
func (c *Cluster) TransferLeader(regionID, toStore uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	meta, oldLeader := c.mock.GetRegion(regionID)
	if meta == nil {
		return fmt.Errorf("region %d not found", regionID)
	}
	var target *metapb.Peer
	for _, p := range meta.Peers {
		if p.StoreId == toStore {
			target = p
		}
	}
	if target == nil {
		return fmt.Errorf("region %d has no peer on store %d", regionID, toStore)
	}
	if target.Id == oldLeader {
		return nil
	}
	c.mock.ChangeLeader(regionID, target.Id)
	c.failRegionLocked(regionID, &cdcpb.Error{NotLeader: &errorpb.NotLeader{RegionId: regionID, Leader: target}})
	return nil
}

// Split splits the region holding the raw key at that key; the new right
// region keeps the leader's store. Subscriptions of the old region get
// `epoch_not_match`. It returns the new region's id.
func (c *Cluster) Split(raw []byte) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.regionByEncoded(EncodeKey(raw))
	if r.Meta == nil {
		return 0, fmt.Errorf("no region holds %q", raw)
	}
	if bytes.Equal(r.Meta.StartKey, EncodeKey(raw)) {
		return 0, fmt.Errorf("%q is already a region boundary", raw)
	}
	newID := c.splitLocked(r.Meta.Id, raw)
	c.failRegionLocked(r.Meta.Id, c.epochNotMatchLocked(r.Meta.Id, newID))
	return newID, nil
}

func (c *Cluster) splitLocked(regionID uint64, raw []byte) uint64 {
	meta, leaderPeer := c.mock.GetRegion(regionID)
	newID := c.mock.AllocID()
	peerIDs := c.mock.AllocIDs(len(meta.Peers))
	newLeader := peerIDs[0]
	for i, p := range meta.Peers {
		if p.Id == leaderPeer {
			newLeader = peerIDs[i]
		}
	}
	c.mock.Split(regionID, newID, raw, peerIDs, newLeader)
	return newID
}

// Merge merges the region holding the raw key with its right neighbour
// (the left one survives). The right region's subscriptions get
// `region_not_found`, the left one's `epoch_not_match`.
func (c *Cluster) Merge(raw []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	left := c.regionByEncoded(EncodeKey(raw))
	if left.Meta == nil || len(left.Meta.EndKey) == 0 {
		return fmt.Errorf("region holding %q has no right neighbour", raw)
	}
	right := c.regionByEncoded(left.Meta.EndKey)
	c.mock.Merge(left.Meta.Id, right.Meta.Id)
	// The writer's client-go region cache can wedge on a merged-away
	// region in mocktikv ("no replica available", backing off forever);
	// TiKV would answer it with region_not_found. Dropping both cached
	// regions makes the writer reload from PD. This only touches the test
	// workload's client, never the agent under test, which asks PD itself.
	if c.kv != nil {
		for _, r := range []*metapb.Region{left.Meta, right.Meta} {
			c.kv.GetRegionCache().InvalidateCachedRegion(tikv.NewRegionVerID(r.Id, r.RegionEpoch.ConfVer, r.RegionEpoch.Version))
		}
	}
	c.failRegionLocked(right.Meta.Id, &cdcpb.Error{RegionNotFound: &errorpb.RegionNotFound{RegionId: right.Meta.Id}})
	c.failRegionLocked(left.Meta.Id, c.epochNotMatchLocked(left.Meta.Id))
	return nil
}

func (c *Cluster) epochNotMatchLocked(ids ...uint64) *cdcpb.Error {
	var current []*metapb.Region
	for _, id := range ids {
		if m, _ := c.mock.GetRegion(id); m != nil {
			current = append(current, m)
		}
	}
	return &cdcpb.Error{EpochNotMatch: &errorpb.EpochNotMatch{CurrentRegions: current}}
}

// StoreDown stops a store: its CDC streams break and new ones are refused;
// client-go's requests to it fail. Move leaders away first if writes must go on.
func (c *Cluster) StoreDown(store uint64) {
	c.mock.StopStore(store)
	c.mu.Lock()
	s := c.stores[store]
	c.mu.Unlock()
	s.setDown(true)
}

// StoreUp restarts a stopped store.
func (c *Cluster) StoreUp(store uint64) {
	c.mock.StartStore(store)
	c.mu.Lock()
	s := c.stores[store]
	c.mu.Unlock()
	s.setDown(false)
}
