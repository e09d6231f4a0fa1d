package simcluster

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gogo/protobuf/proto"
	"github.com/pingcap/kvproto/pkg/metapb"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/clients/tso"

	"logbackup/meta"
	"logbackup/tests/realpd"
)

// With Config.ExternalPD the cluster's stores join a PD server of their
// own (a real pd-server, tests/realpd) the way TiKV stores do, instead of
// the cluster serving PD itself:
//
//   - at Start: Bootstrap when PD is not bootstrapped yet (the first store
//     and the first region, with mocktikv's ids and one peer, as a TiKV's
//     first start sends them), then PutStore for every store with its CDC
//     server's address and version 8.5.6. A PD bootstrapped before is
//     refused: the stores' ids are mocktikv's, not PD's;
//   - a reporter sends each live store's heartbeat every
//     storeHeartbeatInterval (a down store's stop, so PD shows it
//     disconnected after 20 s), and each region's heartbeat from its leader
//     on every topology change (split, merge, leader transfer), every
//     regionHeartbeatInterval, and all at once after a failed call (PD
//     restarted: it forgets leaders until heartbeats tell it again). The
//     term grows each time a region's leader changes;
//   - every timestamp comes from that PD's TSO (the writer's client-go,
//     TSO, the BulkWriter and the resolved ts, through one pd client), and
//     the GC calls of PD() go to it: one clock for the data and the agents'
//     flushes;
//   - the cluster id is that PD's, which the CDC servers check;
//   - PDAddr is the external address (PD's etcd is there too, as
//     deployed); ServePD, StopPD, StartPD and SetPDDown do not apply (stop
//     the PD process itself); GCSafePoint, SetGCSafePoint and
//     ServiceSafePoints act on the external PD (its HTTP API and TiDB's GC
//     worker's calls); AdvancePDClock cannot move a real PD's clock and
//     does nothing.
//
// PD's IDs allocator is not asked: nothing the simulator reports uses an id
// PD allocated (PD's scheduling answers on the heartbeat stream, which
// would, are read and dropped), so the two id spaces never meet in PD's
// region tree.
//
// mocktikv's epochs differ from TiKV's in two ways PD cares about, as PD
// refuses a region whose version is below an overlapping one's as stale:
// a merge sets the survivor's version to its own plus one, where TiKV
// takes the larger of both plus one; and a split gives the new region a
// version of 1, where TiKV gives it the split region's new version. Merge
// therefore first raises the survivor's version in mocktikv (split off a
// sliver and merge it back, +2 per round) until it is at least the
// absorbed region's, and Split raises the new region's the same way to
// the split region's. Without the second, a region PD knew and the
// cluster merged away while PD was down (so PD never heard of the merge)
// kept its range in PD for good: the new region split out of the survivor
// over that range was older than it (seed 1796665420524999375 of
// TestRealPDAgentsBackUpThroughTopologyChanges).

const (
	// storeHeartbeatInterval is below PD's 20 s disconnect threshold with
	// room for one lost heartbeat (TiKV sends one every 10 s).
	storeHeartbeatInterval = 5 * time.Second
	// regionHeartbeatInterval repeats every region's heartbeat even when
	// nothing changed, so a PD that lost one catches up.
	regionHeartbeatInterval = 10 * time.Second
	// extPDTimeout bounds reaching the external PD at Start.
	extPDTimeout = 30 * time.Second
)

// extPD is the cluster's link to an external PD.
type extPD struct {
	addr  string
	store *realpd.Client // the store-side calls: bootstrap, stores, heartbeats
	pd    pd.Client      // TSO, GC and region scans, as any PD client
	kick  chan struct{}  // report now: the topology changed or a store came back

	// round serialises reporting rounds (the reporter's and
	// WaitPDSynced's), so heartbeats from an older view of the topology
	// never follow a newer one's.
	round sync.Mutex

	mu       sync.Mutex
	reported map[uint64]reportedRegion // by region id: what PD was last sent
	terms    map[uint64]regionTerm     // by region id
	resync   bool                      // a call failed: report everything next round
	lastFull time.Time                 // the last round that sent every region

	cancel context.CancelFunc
	done   chan struct{}
}

type regionTerm struct {
	leaderPeer uint64
	term       uint64
}

type reportedRegion struct {
	region *metapb.Region
	leader uint64 // peer id
}

// dialExternalPD connects to the external PD for both kinds of calls.
func dialExternalPD(ctx context.Context, addr string) (*extPD, error) {
	dctx, cancel := context.WithTimeout(ctx, extPDTimeout)
	defer cancel()
	sc, err := realpd.Dial(dctx, addr)
	if err != nil {
		return nil, fmt.Errorf("external PD: %w", err)
	}
	// The dial timeout is also the pd client's per-call one: a timestamp
	// asked of a PD that is down fails within it.
	pc, err := meta.DialPD(dctx, meta.DialConfig{Endpoints: []string{addr}, DialTimeout: 10 * time.Second})
	if err != nil {
		sc.Close()
		return nil, fmt.Errorf("external PD: %w", err)
	}
	return &extPD{addr: addr, store: sc, pd: pc, kick: make(chan struct{}, 1),
		reported: map[uint64]reportedRegion{}, terms: map[uint64]regionTerm{}}, nil
}

func (e *extPD) close() {
	e.mu.Lock()
	cancel, done := e.cancel, e.done
	e.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	e.store.Close()
	e.pd.Close()
}

// wake asks the reporter for a round now; it never blocks.
func (e *extPD) wake() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// JoinPD makes the stores join the external PD (Config.ExternalPD) as
// TiKVs starting do: it bootstraps PD with the cluster's first store and
// region, registers every store, reports them and their regions, and
// starts the reporter. It returns once PD lists the cluster's regions.
// Start calls it unless Config.JoinPDLater; it is for one call only.
func (c *Cluster) JoinPD(ctx context.Context) error {
	e := c.ext
	if e == nil {
		return errors.New("join PD: the cluster has no external PD (Config.ExternalPD)")
	}
	e.mu.Lock()
	joined := e.done != nil
	e.mu.Unlock()
	if joined {
		return errors.New("join PD: the stores have joined already")
	}
	ctx, cancel := context.WithTimeout(ctx, extPDTimeout)
	defer cancel()
	firstRegion := c.firstRegion
	ok, err := e.store.IsBootstrapped(ctx)
	if err != nil {
		return fmt.Errorf("external PD at %s: %w", e.addr, err)
	}
	if ok {
		return fmt.Errorf("external PD at %s is already bootstrapped: the simulated cluster bootstraps a fresh PD (its store ids are its own)", e.addr)
	}
	first := c.storeIDs[0]
	meta, _ := c.mock.GetRegion(firstRegion)
	if meta == nil {
		return fmt.Errorf("bootstrap: region %d is gone", firstRegion)
	}
	// TiKV's first region covers every key with one peer on the first
	// store; the region as it is now (split, three peers) follows in its
	// heartbeats.
	var peer *metapb.Peer
	for _, p := range meta.Peers {
		if p.StoreId == first {
			peer = p
		}
	}
	if peer == nil {
		return fmt.Errorf("bootstrap: region %d has no peer on store %d", firstRegion, first)
	}
	region := &metapb.Region{Id: meta.Id, RegionEpoch: &metapb.RegionEpoch{}, Peers: []*metapb.Peer{peer}}
	if err := e.store.Bootstrap(ctx, c.pdStore(first), region); err != nil {
		return fmt.Errorf("external PD at %s: %w", e.addr, err)
	}
	if err := c.putStores(ctx); err != nil {
		return err
	}
	// PD shows a store that never sent a heartbeat as Down.
	if err := c.storeHeartbeats(ctx); err != nil {
		return err
	}
	if err := c.reportRound(ctx, true); err != nil {
		return err
	}
	if err := c.WaitPDSynced(ctx); err != nil {
		return err
	}
	lctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	e.mu.Lock()
	e.cancel, e.done = stop, done
	e.mu.Unlock()
	go func() {
		defer close(done)
		c.reportLoop(lctx)
	}()
	return nil
}

// pdStore is a store as TiKV registers it with PD.
func (c *Cluster) pdStore(id uint64) *metapb.Store {
	return &metapb.Store{Id: id, Address: c.StoreAddr(id), Version: "8.5.6", State: metapb.StoreState_Up}
}

// putStores registers every live store, as each TiKV does on start.
func (c *Cluster) putStores(ctx context.Context) error {
	for _, id := range c.storeIDs {
		if c.isStoreDown(id) {
			continue
		}
		if err := c.ext.store.PutStore(ctx, c.pdStore(id)); err != nil {
			return fmt.Errorf("external PD at %s: %w", c.ext.addr, err)
		}
	}
	return nil
}

// downStores names the down stores, in store order ("" when none).
func (c *Cluster) downStores() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	for _, id := range c.storeIDs {
		if c.storeDownLocked(id) {
			fmt.Fprintf(&b, "%d,", id)
		}
	}
	return b.String()
}

func (c *Cluster) isStoreDown(id uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.storeDownLocked(id)
}

// reportLoop is the stores' side of PD's heartbeats until ctx ends.
func (c *Cluster) reportLoop(ctx context.Context) {
	e := c.ext
	storeTick := time.NewTicker(storeHeartbeatInterval)
	defer storeTick.Stop()
	regionTick := time.NewTicker(time.Second)
	defer regionTick.Stop()
	lastDown := c.downStores()
	for {
		stores := false
		select {
		case <-ctx.Done():
			return
		case <-storeTick.C:
			stores = true
		case <-regionTick.C:
		case <-e.kick:
		}
		// A store back up reports at once, as a restarted TiKV does.
		if down := c.downStores(); down != lastDown {
			stores, lastDown = true, down
		}
		e.mu.Lock()
		resync := e.resync
		e.mu.Unlock()
		var err error
		if resync {
			// PD restarted or was unreachable: as a TiKV reconnecting,
			// register again and report everything.
			err = c.putStores(ctx)
		}
		if err == nil && (stores || resync) {
			err = c.storeHeartbeats(ctx)
		}
		if err == nil {
			err = c.reportRound(ctx, resync)
		}
		e.mu.Lock()
		e.resync = err != nil
		e.mu.Unlock()
	}
}

// storeHeartbeats reports every live store.
func (c *Cluster) storeHeartbeats(ctx context.Context) error {
	n := uint32(len(c.Regions())) // every store has a peer of every region
	for _, id := range c.storeIDs {
		if c.isStoreDown(id) {
			continue
		}
		if err := c.ext.store.StoreHeartbeat(ctx, id, n); err != nil {
			return err
		}
	}
	return nil
}

// reportRound sends the heartbeat of every region that changed since it
// was last reported, or of every region when all is set or a full round is
// due. Regions whose leader is on a down store are not reported (no TiKV
// is there to report them).
func (c *Cluster) reportRound(ctx context.Context, all bool) error {
	e := c.ext
	e.round.Lock()
	defer e.round.Unlock()
	c.mu.Lock()
	regions := c.regionsLocked()
	down := map[uint64]bool{}
	for _, id := range c.storeIDs {
		down[id] = c.storeDownLocked(id)
	}
	c.mu.Unlock()
	e.mu.Lock()
	if time.Since(e.lastFull) >= regionHeartbeatInterval {
		all = true
	}
	type beat struct {
		region *metapb.Region
		leader *metapb.Peer
		term   uint64
	}
	var beats []beat
	live := map[uint64]bool{}
	for _, r := range regions {
		live[r.Meta.Id] = true
		if r.LeaderPeer == nil || down[r.LeaderStore] {
			continue
		}
		t := e.terms[r.Meta.Id]
		if t.leaderPeer != r.LeaderPeer.Id {
			t = regionTerm{leaderPeer: r.LeaderPeer.Id, term: t.term + 1}
			e.terms[r.Meta.Id] = t
		}
		last, ok := e.reported[r.Meta.Id]
		if all || !ok || last.leader != r.LeaderPeer.Id || !proto.Equal(last.region, r.Meta) {
			beats = append(beats, beat{region: r.Meta, leader: r.LeaderPeer, term: t.term})
		}
	}
	for id := range e.reported {
		if !live[id] {
			delete(e.reported, id)
			delete(e.terms, id)
		}
	}
	e.mu.Unlock()
	// Each region before the regions created after it: a split's left half
	// (the old id) shrinks in PD before the new right half, with a lower
	// version, is checked against it.
	slices.SortStableFunc(beats, func(a, b beat) int { return cmp.Compare(a.region.Id, b.region.Id) })
	for _, b := range beats {
		if err := e.store.RegionHeartbeat(ctx, b.region, b.leader, b.term); err != nil {
			return err
		}
		e.mu.Lock()
		e.reported[b.region.Id] = reportedRegion{region: b.region, leader: b.leader.Id}
		e.mu.Unlock()
	}
	if all {
		e.mu.Lock()
		e.lastFull = time.Now()
		e.mu.Unlock()
	}
	return nil
}

// WaitPDSynced waits until the external PD (Config.ExternalPD) lists the
// cluster's regions as the cluster has them — ids, ranges, epochs and
// leaders — re-reporting any it has wrong, so a test can change the
// topology and then let agents scan PD. The topology must hold still
// meanwhile. Without an external PD it returns at once.
func (c *Cluster) WaitPDSynced(ctx context.Context) error {
	e := c.ext
	if e == nil {
		return nil
	}
	var last error
	for {
		diff, err := c.pdDiff(ctx)
		if err == nil && diff == "" {
			return nil
		}
		if err != nil {
			last = err
		} else {
			last = errors.New(diff)
		}
		// A heartbeat PD refused (a split's right half processed before
		// its left, a lost stream) is sent again.
		e.mu.Lock()
		e.reported = map[uint64]reportedRegion{}
		e.mu.Unlock()
		if err := c.reportRound(ctx, true); err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("PD at %s does not list the cluster's regions: %v: %w", e.addr, last, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// pdDiff compares PD's regions with the cluster's and describes the first
// difference ("" when none).
func (c *Cluster) pdDiff(ctx context.Context) (string, error) {
	want := c.Regions()
	sctx, cancel := meta.PDCallContext(ctx, 10*time.Second)
	defer cancel()
	got, err := c.ext.pd.ScanRegions(sctx, nil, nil, len(want)+16)
	if err != nil {
		return "", fmt.Errorf("scan PD's regions: %w", err)
	}
	if len(got) != len(want) {
		return fmt.Sprintf("PD lists %d regions, the cluster has %d", len(got), len(want)), nil
	}
	for i, w := range want {
		g := got[i]
		switch {
		case g.Meta.GetId() != w.Meta.Id || !bytes.Equal(g.Meta.GetStartKey(), w.Meta.StartKey) || !bytes.Equal(g.Meta.GetEndKey(), w.Meta.EndKey):
			return fmt.Sprintf("region %d: PD has region %d [%x, %x), the cluster [%x, %x)", w.Meta.Id, g.Meta.GetId(),
				g.Meta.GetStartKey(), g.Meta.GetEndKey(), w.Meta.StartKey, w.Meta.EndKey), nil
		case !proto.Equal(g.Meta.GetRegionEpoch(), w.Meta.RegionEpoch):
			return fmt.Sprintf("region %d: PD has epoch %v, the cluster %v", w.Meta.Id, g.Meta.GetRegionEpoch(), w.Meta.RegionEpoch), nil
		case w.LeaderPeer != nil && g.Leader.GetId() != w.LeaderPeer.Id:
			return fmt.Sprintf("region %d: PD has leader peer %d, the cluster %d", w.Meta.Id, g.Leader.GetId(), w.LeaderPeer.Id), nil
		}
	}
	return "", nil
}

// raiseVersionLocked raises region id's version in mocktikv to at least
// region of's (see the comment at the top): before a merge the survivor's
// to the absorbed region's, so the survivor's after it is above both;
// after a split the new region's to the split region's. It splits a
// one-key sliver off the region's start and merges it back, +2 a round. A
// region too narrow for a sliver is left as is.
func (c *Cluster) raiseVersionLocked(id, of uint64) {
	for {
		left, leader := c.mock.GetRegion(id)
		right, _ := c.mock.GetRegion(of)
		if left == nil || right == nil || left.RegionEpoch.GetVersion() >= right.RegionEpoch.GetVersion() {
			return
		}
		start, err := DecodeKey(left.StartKey)
		if err != nil {
			return
		}
		// The raw key just after the start, strictly inside the region.
		cut := append(append([]byte(nil), start...), 0)
		if bytes.Compare(EncodeKey(cut), left.EndKey) >= 0 {
			return
		}
		tmp := c.mock.AllocID()
		peers := c.mock.AllocIDs(len(left.Peers))
		newLeader := peers[0]
		for i, p := range left.Peers {
			if p.Id == leader {
				newLeader = peers[i]
			}
		}
		c.mock.Split(id, tmp, cut, peers, newLeader)
		c.mock.Merge(id, tmp)
	}
}

// extLocalPD is the in-process door to PD with an external PD: mocktikv's
// pd.Client for the topology (the writer's client-go routes by the
// simulated regions), and the cluster id, TSO and GC from the external PD.
type extLocalPD struct {
	pd.Client
	ext       pd.Client
	clusterID uint64
}

func (p *extLocalPD) GetClusterID(context.Context) uint64 { return p.clusterID }

func (p *extLocalPD) GetTS(ctx context.Context) (int64, int64, error) { return p.ext.GetTS(ctx) }

func (p *extLocalPD) GetTSAsync(ctx context.Context) tso.TSFuture { return p.ext.GetTSAsync(ctx) }

func (p *extLocalPD) GetLocalTS(ctx context.Context, _ string) (int64, int64, error) {
	return p.ext.GetTS(ctx)
}

func (p *extLocalPD) GetLocalTSAsync(ctx context.Context, _ string) tso.TSFuture {
	return p.ext.GetTSAsync(ctx)
}

func (p *extLocalPD) GetMinTS(ctx context.Context) (int64, int64, error) { return p.ext.GetMinTS(ctx) }

func (p *extLocalPD) UpdateGCSafePoint(ctx context.Context, safePoint uint64) (uint64, error) {
	return p.ext.UpdateGCSafePoint(ctx, safePoint)
}

func (p *extLocalPD) UpdateServiceGCSafePoint(ctx context.Context, serviceID string, ttl int64, safePoint uint64) (uint64, error) {
	return p.ext.UpdateServiceGCSafePoint(ctx, serviceID, ttl, safePoint)
}

// gcState reads PD's GC state from its HTTP API (GET
// /pd/api/v1/gc/safepoint, what pd-ctl shows): the GC safe point and the
// service safepoints, gc_worker's (the txn safe point) included.
func (e *extPD) gcState(ctx context.Context) (uint64, map[string]ServiceSafePoint, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, "http://"+e.addr+"/pd/api/v1/gc/safepoint", nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("read PD's GC state: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, nil, fmt.Errorf("read PD's GC state: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, nil, fmt.Errorf("read PD's GC state: %s: %s", resp.Status, body)
	}
	var list struct {
		SafePoints []struct {
			ServiceID string `json:"service_id"`
			ExpiredAt int64  `json:"expired_at"`
			SafePoint uint64 `json:"safe_point"`
		} `json:"service_gc_safe_points"`
		GCSafePoint uint64 `json:"gc_safe_point"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return 0, nil, fmt.Errorf("PD's GC state: %w", err)
	}
	out := map[string]ServiceSafePoint{}
	for _, sp := range list.SafePoints {
		v := ServiceSafePoint{SafePoint: sp.SafePoint}
		// gc_worker's never expires: PD lists it at the largest int64.
		if sp.ExpiredAt < math.MaxInt64/2 {
			v.ExpiresAt = time.Unix(sp.ExpiredAt, 0)
		}
		out[sp.ServiceID] = v
	}
	return list.GCSafePoint, out, nil
}

// setGCSafePoint is SetGCSafePoint on the external PD, as TiDB's GC worker
// moves it: the txn safe point first, then the GC safe point to what the
// txn safe point reached.
func (e *extPD) setGCSafePoint(ctx context.Context, ts uint64) (uint64, error) {
	reached, err := e.store.SetTxnSafePoint(ctx, ts)
	if err != nil {
		return 0, fmt.Errorf("set GC safe point: %w", err)
	}
	sp, err := e.store.SetGCSafePoint(ctx, reached)
	if err != nil {
		return 0, fmt.Errorf("set GC safe point: %w", err)
	}
	return sp, nil
}
