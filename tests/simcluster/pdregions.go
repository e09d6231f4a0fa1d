package simcluster

import (
	"bytes"
	"sort"

	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/pingcap/kvproto/pkg/pdpb"
	"github.com/tikv/pd/client/clients/router"
)

// regionIndex is a snapshot of the topology in PD's form: regions sorted by
// (encoded) start key, each with its leader. It answers the region queries
// with the rules of PD's region tree (pkg/core in tikv/pd): search, the
// previous adjacent region, scans from the region holding the start key,
// and batch scans with PD's checks of the ranges.
type regionIndex []*router.Region

type pdView struct {
	topology uint64
	regions  regionIndex
}

// regionSnapshot is the current topology. mocktikv sorts and clones every
// region for each scan, which made paging through 100,000 regions
// quadratic, so a view is kept until the topology changes. A view is
// labelled with the change count read before it was taken: one taken
// across a change carries the older count and is never served after it.
// Callers must not modify what it returns.
func (c *Cluster) regionSnapshot() regionIndex {
	gen := c.topology.Load()
	if v := c.pdView.Load(); v != nil && v.topology == gen {
		return v.regions
	}
	// mocktikv returns copies sorted by start key, with an empty leader
	// peer where there is none (as PD's scans answer).
	x := regionIndex(c.mock.ScanRegions(nil, nil, 0))
	c.pdView.Store(&pdView{topology: gen, regions: x})
	return x
}

// topologyChangedLocked drops the indexes of the regions (the rows' routes
// and PD's view); every change of regions or leaders must call it.
func (c *Cluster) topologyChangedLocked() {
	c.routes = nil
	c.topology.Add(1)
	if c.ext != nil {
		c.ext.wake()
	}
}

// find returns the index of the region holding key, or -1.
func (x regionIndex) find(key []byte) int {
	i := sort.Search(len(x), func(i int) bool { return bytes.Compare(x[i].Meta.StartKey, key) > 0 }) - 1
	if i < 0 || !inRange(key, x[i].Meta.StartKey, x[i].Meta.EndKey) {
		return -1
	}
	return i
}

// search is the region holding key, or nil.
func (x regionIndex) search(key []byte) *router.Region {
	if i := x.find(key); i >= 0 {
		return x[i]
	}
	return nil
}

// prev is the region just before the one holding key, if they are
// adjacent (PD's searchPrev), or nil.
func (x regionIndex) prev(key []byte) *router.Region {
	i := x.find(key)
	if i <= 0 || !bytes.Equal(x[i-1].Meta.EndKey, x[i].Meta.StartKey) {
		return nil
	}
	return x[i-1]
}

// from is the index of the first region holding or after start.
func (x regionIndex) from(start []byte) int {
	if i := x.find(start); i >= 0 {
		return i
	}
	return sort.Search(len(x), func(i int) bool { return bytes.Compare(x[i].Meta.StartKey, start) > 0 })
}

// scan lists the regions intersecting [start, end) (end empty: unbounded),
// at most limit of them (limit <= 0: no limit), as PD's ScanRegions.
func (x regionIndex) scan(start, end []byte, limit int) []*router.Region {
	var out []*router.Region
	for _, r := range x[x.from(start):] {
		if len(end) > 0 && bytes.Compare(r.Meta.StartKey, end) >= 0 {
			break
		}
		if limit > 0 && len(out) >= limit {
			break
		}
		out = append(out, r)
	}
	return out
}

// batchScan is PD's BatchScanRegions: ranges must be sorted and not
// overlap, adjacent ones are merged, a region spanning two ranges is listed
// once, and at most limit regions come back. With containAll a range not
// wholly covered by adjacent regions is an error; the simulated topology
// never has holes, so that check only guards this code.
func (x regionIndex) batchScan(ranges []*pdpb.KeyRange, limit int, containAll bool) ([]*router.Region, *pdpb.Error) {
	for i, r := range ranges {
		if i > 0 && bytes.Compare(r.StartKey, ranges[i-1].EndKey) < 0 {
			return nil, &pdpb.Error{Type: pdpb.ErrorType_UNKNOWN, Message: "invalid key range, ranges overlapped"}
		}
		if len(r.EndKey) > 0 && bytes.Compare(r.StartKey, r.EndKey) > 0 {
			return nil, &pdpb.Error{Type: pdpb.ErrorType_UNKNOWN, Message: "invalid key range, start key > end key"}
		}
	}
	var merged []*pdpb.KeyRange
	for _, r := range ranges {
		if n := len(merged); n > 0 && bytes.Equal(merged[n-1].EndKey, r.StartKey) {
			merged[n-1] = &pdpb.KeyRange{StartKey: merged[n-1].StartKey, EndKey: r.EndKey}
			continue
		}
		merged = append(merged, r)
	}
	var out []*router.Region
	for _, kr := range merged {
		regions, hole := x.scanRange(kr, limit)
		if hole && containAll {
			return nil, &pdpb.Error{Type: pdpb.ErrorType_REGIONS_NOT_CONTAIN_ALL_KEY_RANGE, Message: "key range has a hole in its regions"}
		}
		if len(out) > 0 && len(regions) > 0 && out[len(out)-1].Meta.Id == regions[0].Meta.Id {
			regions = regions[1:]
		}
		out = append(out, regions...)
		if limit > 0 && len(out) >= limit {
			return out[:limit], nil
		}
	}
	return out, nil
}

// scanRange lists the regions of one range (at most limit) and says whether
// they leave part of it uncovered.
func (x regionIndex) scanRange(kr *pdpb.KeyRange, limit int) (regions []*router.Region, hole bool) {
	lastEnd := kr.StartKey
	for _, r := range x[x.from(kr.StartKey):] {
		if len(kr.EndKey) > 0 && len(r.Meta.StartKey) > 0 && bytes.Compare(r.Meta.StartKey, kr.EndKey) >= 0 {
			break
		}
		if limit > 0 && len(regions) >= limit {
			break
		}
		if len(lastEnd) > 0 && len(r.Meta.StartKey) > 0 && bytes.Compare(r.Meta.StartKey, lastEnd) > 0 {
			hole = true
		}
		lastEnd = r.Meta.EndKey
		regions = append(regions, r)
	}
	if (limit <= 0 || len(regions) < limit) && len(kr.EndKey) > 0 && len(lastEnd) > 0 && bytes.Compare(lastEnd, kr.EndKey) < 0 {
		hole = true
	}
	return regions, hole
}

// Conversions to PD's wire messages. A region without a leader carries an
// empty peer, as PD's scans send.

func downPeers(r *router.Region) []*pdpb.PeerStats {
	var out []*pdpb.PeerStats
	for _, p := range r.DownPeers {
		out = append(out, &pdpb.PeerStats{Peer: p})
	}
	return out
}

func leaderOrEmpty(r *router.Region) *metapb.Peer {
	if r.Leader == nil {
		return &metapb.Peer{}
	}
	return r.Leader
}

func toPDRegion(r *router.Region) *pdpb.Region {
	return &pdpb.Region{Region: r.Meta, Leader: leaderOrEmpty(r), DownPeers: downPeers(r), PendingPeers: r.PendingPeers}
}

func toRegionResponse(r *router.Region) *pdpb.RegionResponse {
	return &pdpb.RegionResponse{Region: r.Meta, Leader: leaderOrEmpty(r), DownPeers: downPeers(r), PendingPeers: r.PendingPeers}
}

// getRegionResponse answers GetRegion, GetPrevRegion and GetRegionByID: PD's
// leader answers "no such region" with a plain header and no region.
func getRegionResponse(h *pdpb.ResponseHeader, r *router.Region) *pdpb.GetRegionResponse {
	if r == nil {
		return &pdpb.GetRegionResponse{Header: h}
	}
	return &pdpb.GetRegionResponse{Header: h, Region: r.Meta, Leader: leaderOrEmpty(r), DownPeers: downPeers(r), PendingPeers: r.PendingPeers}
}
