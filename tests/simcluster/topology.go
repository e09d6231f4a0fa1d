package simcluster

import (
	"bytes"
	"fmt"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/errorpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/client-go/v2/tikv"
)

// TransferLeader moves a region's leader to a store holding one of its
// peers. Subscriptions on the old leader get `not_leader` naming the new
// leader (TiKV observer on_role_change) and are removed.
func (c *Cluster) TransferLeader(regionID, toStore uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.transferLeaderLocked(regionID, toStore)
}

func (c *Cluster) transferLeaderLocked(regionID, toStore uint64) error {
	meta, oldLeader := c.mock.GetRegion(regionID)
	if meta == nil {
		return fmt.Errorf("transfer leader: region %d not found", regionID)
	}
	var target *metapb.Peer
	for _, p := range meta.Peers {
		if p.StoreId == toStore {
			target = p
		}
	}
	if target == nil {
		return fmt.Errorf("transfer leader: region %d has no peer on store %d", regionID, toStore)
	}
	if target.Id == oldLeader {
		return nil
	}
	c.mock.ChangeLeader(regionID, target.Id)
	c.topologyChangedLocked()
	c.failRegionLocked(regionID, &cdcpb.Error{NotLeader: &errorpb.NotLeader{RegionId: regionID, Leader: target}})
	return nil
}

// Split splits the region holding the raw key at that key; the new right
// region's leader is on the same store. Subscriptions of the old region end
// with `epoch_not_match` listing both halves or with `region_not_found` —
// TiKV sends whichever of its two notices (the applied split command, the
// region-changed observer) wins the race, so the simulator picks one with
// its seeded random source. It returns the new region's id.
func (c *Cluster) Split(raw []byte) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.regionByEncoded(EncodeKey(raw))
	if r.Meta == nil {
		return 0, fmt.Errorf("split: no region holds %q", raw)
	}
	if bytes.Equal(r.Meta.StartKey, EncodeKey(raw)) {
		return 0, fmt.Errorf("split: %q is already a region boundary", raw)
	}
	newID := c.splitLocked(r.Meta.Id, raw)
	e := c.epochNotMatchLocked(r.Meta.Id, newID)
	if c.rng.Intn(2) == 0 {
		e = &cdcpb.Error{RegionNotFound: &errorpb.RegionNotFound{RegionId: r.Meta.Id}}
	}
	c.failRegionLocked(r.Meta.Id, e)
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
	if c.ext != nil {
		c.raiseVersionLocked(newID, regionID)
	}
	c.topologyChangedLocked()
	c.lastSplit = newID
	return newID
}

// Merge merges the region holding the raw key with its right neighbour;
// the left one survives and takes the whole range. Subscriptions of the
// right (destroyed) region get `region_not_found`; those of the left get
// `epoch_not_match` with no current regions (TiKV's "merge" notice) or
// `region_not_found`, chosen as in Split.
func (c *Cluster) Merge(raw []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	left := c.regionByEncoded(EncodeKey(raw))
	if left.Meta == nil || len(left.Meta.EndKey) == 0 {
		return fmt.Errorf("merge: region holding %q has no right neighbour", raw)
	}
	right := c.regionByEncoded(left.Meta.EndKey)
	if c.ext != nil {
		c.raiseVersionLocked(left.Meta.Id, right.Meta.Id)
	}
	c.mock.Merge(left.Meta.Id, right.Meta.Id)
	c.topologyChangedLocked()
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
	e := &cdcpb.Error{EpochNotMatch: &errorpb.EpochNotMatch{}}
	if c.rng.Intn(2) == 0 {
		e = &cdcpb.Error{RegionNotFound: &errorpb.RegionNotFound{RegionId: left.Meta.Id}}
	}
	c.failRegionLocked(left.Meta.Id, e)
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

// StoreDown stops a store: its CDC streams break, new ones are refused and
// client-go's requests to it fail. The leaders it held move to a peer on a
// live store, as raft elects one (their subscriptions are gone with the
// streams), so PD never points at a down store while another could lead.
func (c *Cluster) StoreDown(store uint64) {
	s := c.store(store)
	if s == nil {
		return
	}
	c.mock.StopStore(store)
	s.setDown(true)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.regionsLocked() {
		if r.LeaderStore != store {
			continue
		}
		for _, p := range r.Meta.Peers {
			if p.StoreId != store && !c.storeDownLocked(p.StoreId) {
				_ = c.transferLeaderLocked(r.Meta.Id, p.StoreId) // the peer is known to exist
				break
			}
		}
	}
}

func (c *Cluster) storeDownLocked(store uint64) bool {
	s := c.stores[store]
	if s == nil {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.down
}

// StoreUp restarts a stopped store. Leaders stay where they moved.
func (c *Cluster) StoreUp(store uint64) {
	s := c.store(store)
	if s == nil {
		return
	}
	c.mock.StartStore(store)
	s.setDown(false)
	if c.ext != nil {
		c.ext.wake() // its heartbeats resume
	}
}
