package simcluster

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/client-go/v2/testutils"
	"github.com/tikv/client-go/v2/tikv"
	"github.com/tikv/client-go/v2/util/codec"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/circuitbreaker"
	"google.golang.org/grpc"

	"logbackup/meta/embedetcd"
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
	// Seed drives the simulator's own choices where TiKV's answer depends on
	// timing (which region error a split or merge produces). 0 picks one
	// from the clock; Cluster.Seed reports it so a failure can be replayed.
	Seed int64
	// ServePD serves PD on the network as PD does: pdpb.PD and an etcd on
	// one loopback port (PDAddr). Without it PD is only in process (PD()).
	ServePD bool
	// DataDir keeps that etcd's data; "" uses a temporary dir that Close
	// removes.
	DataDir string
	// TLS serves PD, its etcd and every store's CDC server with mutual TLS.
	TLS *TLSFiles
	// ExternalPD ("127.0.0.1:2379") runs the stores against that PD, as
	// TiKV stores join one, instead of serving PD (see extpd.go): it must
	// not be bootstrapped yet. Not with ServePD or TLS.
	ExternalPD string
	// JoinPDLater leaves the external PD unbootstrapped and unaware of the
	// stores until JoinPD, as a PD deployed before its TiKVs start; the
	// cluster id and timestamps are PD's from the start.
	JoinPDLater bool
}

// Cluster is a running simulated cluster.
type Cluster struct {
	cfg      Config
	mock     *testutils.MockCluster
	pdClient pd.Client
	kv       *tikv.KVStore
	// kvStore is kv for the stores' KV API (kvservice.go), which starts
	// serving before kv exists.
	kvStore   atomic.Pointer[tikv.KVStore]
	clusterID uint64
	storeIDs  []uint64

	pd        *pdState
	pdServer  *pdServer         // nil unless Config.ServePD
	etcd      *embedetcd.Server // PD's etcd, nil unless Config.ServePD
	pdTempDir string            // removed by Close
	ext       *extPD            // nil unless Config.ExternalPD
	// firstRegion is mocktikv's first region, the one a store bootstraps
	// PD with.
	firstRegion uint64
	storeOpts   []grpc.ServerOption // every CDC server's (TLS)

	// mu orders everything that must be atomic against CDC: ledger changes,
	// routing rows to subscriptions, registrations and topology changes.
	mu     sync.Mutex
	ledger *ledger
	stores map[uint64]*storeServer
	subs   map[uint64]map[*subscription]struct{} // by region id
	routes *routeIndex                           // nil after a topology change; see routesLocked
	// lastSplit is the right-hand region of the last split: splits in
	// ascending key order (a bulk writer's regions) each fall in it, and
	// mocktikv's lookup by key scans every region.
	lastSplit uint64
	// topology counts topology changes; pdView is PD's view of the regions
	// as of one count (see regionSnapshot).
	topology atomic.Uint64
	pdView   atomic.Pointer[pdView]

	seed int64
	rng  *rand.Rand // guarded by mu

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
	if cfg.Seed == 0 {
		cfg.Seed = time.Now().UnixNano()
	}
	if cfg.ExternalPD != "" && (cfg.ServePD || cfg.TLS != nil) {
		return nil, fmt.Errorf("simcluster: ExternalPD %s with ServePD or TLS: the external PD serves PD, in plain text", cfg.ExternalPD)
	}
	storeOpts, err := storeServerOptions(cfg)
	if err != nil {
		return nil, err
	}
	var ext *extPD
	if cfg.ExternalPD != "" {
		if ext, err = dialExternalPD(ctx, cfg.ExternalPD); err != nil {
			return nil, err
		}
	}
	client, mock, mockPD, err := testutils.NewMockTiKV("", nil)
	if err != nil {
		if ext != nil {
			ext.close()
		}
		return nil, fmt.Errorf("mock tikv: %w", err)
	}
	storeIDs, _, regionID, _ := testutils.BootstrapWithMultiStores(mock, cfg.Stores)
	rng := rand.New(rand.NewSource(cfg.Seed))
	state := newPDState(newClusterID(rng))
	// The in-process PD keeps mocktikv's topology answers but takes the
	// cluster id, timestamps and GC state from pdState, which the network
	// PD shares, or from the external PD.
	local := &localPD{Client: mockPD, s: state}
	var pdClient pd.Client = local
	if ext != nil {
		state = newPDState(ext.store.ClusterID())
		pdClient = &extLocalPD{Client: mockPD, ext: ext.pd, clusterID: state.clusterID}
	}
	c := &Cluster{
		cfg: cfg, mock: mock, pdClient: pdClient, storeIDs: storeIDs, pd: state, storeOpts: storeOpts, ext: ext,
		ledger: newLedger(), stores: map[uint64]*storeServer{}, subs: map[uint64]map[*subscription]struct{}{},
		seed: cfg.Seed, rng: rng,
	}
	local.c = c
	// Split keys in ascending order each fall in the previous split's
	// right-hand region, which regionByEncoded tries before mocktikv's
	// scan of every region (100,000 splits were quadratic).
	for _, k := range cfg.SplitKeys {
		id := regionID
		if r := c.regionByEncoded(EncodeKey(k)); r.Meta != nil {
			id = r.Meta.Id
		}
		c.splitLocked(id, k)
	}
	for _, id := range storeIDs {
		s, err := c.startStore(id, "127.0.0.1:0")
		if err != nil {
			c.Close()
			return nil, err
		}
		c.stores[id] = s
		mock.UpdateStoreAddr(id, s.address())
	}
	c.clusterID = state.clusterID
	if cfg.ServePD {
		if err := c.startPD(ctx); err != nil {
			c.Close()
			return nil, err
		}
	}
	if ext != nil {
		c.firstRegion = regionID
		if !cfg.JoinPDLater {
			if err := c.JoinPD(ctx); err != nil {
				c.Close()
				return nil, err
			}
		}
	}
	c.kv, err = tikv.NewTestTiKVStore(client, pdClient, func(inner tikv.Client) tikv.Client {
		return &hookClient{Client: inner, c: c}
	}, nil, 0)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("tikv store: %w", err)
	}
	c.kvStore.Store(c.kv)
	lctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.resolvedTsLoop(lctx)
	}()
	return c, nil
}

// Close stops everything. Open streams end with an error.
func (c *Cluster) Close() {
	if c.cancel != nil {
		c.cancel()
	}
	c.mu.Lock()
	stores := c.stores
	c.mu.Unlock()
	for _, s := range stores {
		s.dropStreams()
		s.stop()
	}
	c.wg.Wait() // scans end once their streams are closed
	if c.kv != nil {
		c.kv.Close()
	}
	if c.ext != nil {
		c.ext.close() // after the writer, whose timestamps come through it
	}
	c.stopPD()
}

// Seed is the seed of the simulator's own random choices (Config.Seed).
func (c *Cluster) Seed() int64 { return c.seed }

// PD is the in-process PD client (no network). Region keys in it are
// encoded. Its timestamps, cluster id and GC safepoints are the network
// PD's (PDAddr); the writer's client-go uses it.
func (c *Cluster) PD() pd.Client { return c.pdClient }

// KV is the transactional store writes go through.
func (c *Cluster) KV() *tikv.KVStore { return c.kv }

// ClusterID is the id PD reports (and the CDC servers check).
func (c *Cluster) ClusterID() uint64 { return c.clusterID }

// StoreIDs lists the stores.
func (c *Cluster) StoreIDs() []uint64 { return append([]uint64(nil), c.storeIDs...) }

// StoreAddr is the loopback address of a store's CDC gRPC server (the
// address PD reports for the store), or "" for an unknown store.
func (c *Cluster) StoreAddr(store uint64) string {
	s := c.store(store)
	if s == nil {
		return ""
	}
	return s.address()
}

// TSO returns a fresh timestamp from PD's clock through client-go's
// oracle: the one clock transactions take their start and commit ts from
// and the PD gRPC server allocates from.
func (c *Cluster) TSO(ctx context.Context) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	ts, err := c.kv.CurrentTimestamp("global")
	if err != nil {
		return 0, fmt.Errorf("tso: %w", err)
	}
	return ts, nil
}

// WithCircuitBreaker returns ctx carrying the circuit breaker mock PD's
// ScanRegions insists on (it panics without one).
func WithCircuitBreaker(ctx context.Context) context.Context {
	return circuitbreaker.WithCircuitBreaker(ctx, circuitbreaker.NewCircuitBreaker("simcluster", circuitbreaker.AlwaysClosedSettings))
}

// EncodeKey turns a raw key into the memcomparable form (codec.EncodeBytes)
// that region boundaries in PD and ChangeDataRequest start/end keys use.
func EncodeKey(raw []byte) []byte { return codec.EncodeBytes(nil, raw) }

// DecodeKey turns an encoded key back into a raw key. The empty key (an
// unbounded region edge) decodes to the empty key.
func DecodeKey(enc []byte) ([]byte, error) {
	if len(enc) == 0 {
		return nil, nil
	}
	rest, raw, err := codec.DecodeBytes(enc, nil)
	if err != nil {
		return nil, fmt.Errorf("decode key %x: %w", enc, err)
	}
	if len(rest) > 0 {
		return nil, fmt.Errorf("decode key %x: %d trailing bytes", enc, len(rest))
	}
	return raw, nil
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
	if c.lastSplit != 0 {
		if r, leaderID := c.mock.GetRegion(c.lastSplit); r != nil && inRange(ek, r.StartKey, r.EndKey) {
			info := RegionInfo{Meta: r}
			for _, p := range r.Peers {
				if p.Id == leaderID {
					info.LeaderPeer, info.LeaderStore = p, p.StoreId
				}
			}
			return info
		}
	}
	r, leader, _, _ := c.mock.GetRegionByKey(ek)
	info := RegionInfo{Meta: r, LeaderPeer: leader}
	if leader != nil {
		info.LeaderStore = leader.StoreId
	}
	return info
}
