package simcluster

import (
	"context"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/tikv/client-go/v2/tikv"
	"github.com/tikv/client-go/v2/tikvrpc"
)

// hookClient sits between client-go and the mock stores. A request that
// writes is applied by the mock and recorded in the ledger under
// Cluster.mu, so the order the mock applied writes in, the ledger's order
// and the order of rows on every CDC stream are one and the same (two
// writers racing on one key cannot be recorded out of order), and no
// registration, topology change or resolved-ts round can fall between a
// write being applied and being reported.
type hookClient struct {
	tikv.Client
	c *Cluster
}

func writes(t tikvrpc.CmdType) bool {
	switch t {
	case tikvrpc.CmdPrewrite, tikvrpc.CmdCommit, tikvrpc.CmdBatchRollback, tikvrpc.CmdCleanup,
		tikvrpc.CmdCheckTxnStatus, tikvrpc.CmdResolveLock, tikvrpc.CmdTxnHeartBeat:
		return true
	}
	return false
}

func (h *hookClient) SendRequest(ctx context.Context, addr string, req *tikvrpc.Request, timeout time.Duration) (*tikvrpc.Response, error) {
	if !writes(req.Type) {
		return h.Client.SendRequest(ctx, addr, req, timeout)
	}
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	if resp := h.c.refuseBulkLocked(req); resp != nil {
		return resp, nil
	}
	resp, err := h.Client.SendRequest(ctx, addr, req, timeout)
	if err != nil || resp == nil || resp.Resp == nil {
		return resp, err
	}
	if re, _ := resp.GetRegionError(); re != nil {
		return resp, err
	}
	h.c.recordLocked(req, resp)
	return resp, err
}

// refuseBulkLocked answers a prewrite into a BulkWriter's range with an
// abort error, before mocktikv applies it: mocktikv never sees the
// writer's data, so it could neither detect the conflict nor keep the
// ledger's account of those keys.
func (c *Cluster) refuseBulkLocked(req *tikvrpc.Request) *tikvrpc.Response {
	if req.Type != tikvrpc.CmdPrewrite || len(c.ledger.bulk) == 0 {
		return nil
	}
	for _, m := range req.Prewrite().Mutations {
		if c.ledger.bulkSpaceOf(m.Key) != nil {
			abort := fmt.Sprintf("simcluster: key %q belongs to a bulk writer", m.Key)
			return &tikvrpc.Response{Resp: &kvrpcpb.PrewriteResponse{Errors: []*kvrpcpb.KeyError{{Abort: abort}}}}
		}
	}
	return nil
}

// rowBatch collects the rows of one request per region, so that each
// region's subscribers get them in one Event as TiKV sends one raft
// command's rows together.
type rowBatch struct {
	rows []*cdcpb.Event_Row
}

func (b *rowBatch) add(r *cdcpb.Event_Row) {
	if r != nil {
		b.rows = append(b.rows, r)
	}
}

// recordLocked applies an acknowledged request to the ledger, mirroring
// mocktikv's rules, and routes the resulting rows.
func (c *Cluster) recordLocked(req *tikvrpc.Request, resp *tikvrpc.Response) {
	var b rowBatch
	switch req.Type {
	case tikvrpc.CmdPrewrite:
		r, ok := resp.Resp.(*kvrpcpb.PrewriteResponse)
		if !ok || len(r.Errors) > 0 { // mocktikv writes nothing when any mutation fails
			return
		}
		p := req.Prewrite()
		for _, m := range p.Mutations {
			b.add(c.ledger.prewrite(m, p.PrimaryLock, p.StartVersion, p.LockTtl, p.MinCommitTs))
		}
	case tikvrpc.CmdCommit:
		r, ok := resp.Resp.(*kvrpcpb.CommitResponse)
		if !ok || r.Error != nil { // all or nothing in mocktikv
			return
		}
		p := req.Commit()
		for _, k := range p.Keys {
			b.add(c.ledger.commit(k, p.StartVersion, p.CommitVersion))
		}
	case tikvrpc.CmdBatchRollback:
		r, ok := resp.Resp.(*kvrpcpb.BatchRollbackResponse)
		if !ok || r.Error != nil {
			return
		}
		p := req.BatchRollback()
		for _, k := range p.Keys {
			b.add(c.ledger.rollback(k, p.StartVersion))
		}
	case tikvrpc.CmdCleanup:
		r, ok := resp.Resp.(*kvrpcpb.CleanupResponse)
		if !ok || r.Error != nil || r.CommitVersion != 0 {
			return
		}
		p := req.Cleanup()
		// mocktikv's Cleanup only persists a rollback when it removes the
		// transaction's lock (its no-lock branch never writes its batch).
		if lk, ok := c.ledger.locks[string(p.Key)]; ok && lk.StartTS == p.StartVersion {
			b.add(c.ledger.rollback(p.Key, p.StartVersion))
		}
	case tikvrpc.CmdCheckTxnStatus:
		r, ok := resp.Resp.(*kvrpcpb.CheckTxnStatusResponse)
		if !ok || r.Error != nil {
			return
		}
		p := req.CheckTxnStatus()
		switch r.Action {
		case kvrpcpb.Action_TTLExpireRollback, kvrpcpb.Action_LockNotExistRollback:
			b.add(c.ledger.rollback(p.PrimaryKey, p.LockTs))
		case kvrpcpb.Action_MinCommitTSPushed:
			b.add(c.pushMinCommitTSLocked(p))
		}
	case tikvrpc.CmdTxnHeartBeat:
		r, ok := resp.Resp.(*kvrpcpb.TxnHeartBeatResponse)
		if !ok || r.Error != nil {
			return
		}
		p := req.TxnHeartBeat()
		if lk, ok := c.ledger.locks[string(p.PrimaryLock)]; ok && lk.StartTS == p.StartVersion && p.AdviseLockTtl > lk.TTL {
			lk.TTL = p.AdviseLockTtl // the lock is rewritten: TiKV sends it again
			b.add(lk.rewriteRow())
		}
	case tikvrpc.CmdResolveLock:
		r, ok := resp.Resp.(*kvrpcpb.ResolveLockResponse)
		if !ok || r.Error != nil {
			return
		}
		p := req.ResolveLock()
		// mocktikv resolves every lock of StartVersion in the request's
		// region, whatever Keys or TxnInfos say.
		meta, _ := c.mock.GetRegion(req.RegionId)
		if meta == nil {
			return
		}
		for _, lk := range c.ledger.locksIn(meta.StartKey, meta.EndKey, p.StartVersion) {
			if p.CommitVersion > 0 {
				b.add(c.ledger.commit(lk.Key, p.StartVersion, p.CommitVersion))
			} else {
				b.add(c.ledger.rollback(lk.Key, p.StartVersion))
			}
		}
	}
	c.routeLocked(b.rows)
}

// pushMinCommitTSLocked mirrors mocktikv's CheckTxnStatus push of a primary
// lock's min_commit_ts: it rewrites the lock only when the lock has a
// min_commit_ts below caller_start_ts+1.
func (c *Cluster) pushMinCommitTSLocked(p *kvrpcpb.CheckTxnStatusRequest) *cdcpb.Event_Row {
	lk, ok := c.ledger.locks[string(p.PrimaryKey)]
	if !ok || lk.StartTS != p.LockTs || p.CallerStartTs == math.MaxUint64 || lk.MinCommitTS == 0 {
		return nil
	}
	// mocktikv checks TTL expiry first (an expired lock is rolled back and
	// the action says so), so here the lock is alive.
	if lk.MinCommitTS >= p.CallerStartTs+1 {
		return nil
	}
	lk.MinCommitTS = max(p.CallerStartTs+1, p.CurrentTs)
	return lk.rewriteRow()
}

// routeLocked sends live rows to every subscription that observes them:
// subscriptions of the region holding each key, on the store that leads it,
// whose key range holds the key. Rows of one region go in one Event, in
// their order; regions in the order their first row came.
//
// It runs for every write under the write mutex, so it allocates per call
// rather than per row or per event: one array backs all regions' rows and
// events come from slabs.
func (c *Cluster) routeLocked(rows []*cdcpb.Event_Row) {
	if len(rows) == 0 {
		return
	}
	idx := c.routesLocked()
	at := make([]int32, len(rows)) // each row's group, or -1
	var groups []group
	var prev *routedRegion
	cur := int32(-1)
	for i, row := range rows {
		if prev == nil || !prev.holds(row.Key) {
			r := idx.find(row.Key, prev)
			if r == nil {
				at[i] = -1
				continue
			}
			if cur = idx.group(r); cur < 0 {
				cur = int32(len(groups))
				groups = append(groups, group{region: r})
				idx.setGroup(r, cur)
			}
			prev = r
		}
		at[i] = cur
		groups[cur].n++
	}
	idx.clearGroups()
	backing := make([]*cdcpb.Event_Row, len(rows))
	off := 0
	for g := range groups {
		groups[g].rows = backing[off : off : off+groups[g].n]
		off += groups[g].n
	}
	for i, row := range rows {
		if g := at[i]; g >= 0 {
			groups[g].rows = append(groups[g].rows, row)
		}
	}
	slab := eventSlab{}
	var out []streamItems // per stream, pushed at the end under one lock each
	last := 0
	for _, g := range groups {
		for sub := range c.subs[g.region.Meta.Id] {
			if sub.store != g.region.LeaderStore {
				continue
			}
			mine := g.rows
			// A subscription observing the whole region (the usual case)
			// takes every row without encoding each key.
			if !sub.covers(g.region.Meta) {
				mine = nil
				for _, row := range g.rows {
					if sub.contains(EncodeKey(row.Key)) {
						mine = append(mine, row)
					}
				}
			}
			if len(mine) == 0 {
				continue
			}
			ev := slab.entries(sub.regionID, sub.requestID, mine, len(groups))
			i := last
			if i >= len(out) || out[i].stream != sub.stream {
				for i = 0; i < len(out) && out[i].stream != sub.stream; i++ {
				}
			}
			if i == len(out) {
				out = append(out, streamItems{stream: sub.stream, items: make([]any, 0, len(groups))})
			}
			out[i].items = append(out[i].items, ev)
			last = i
		}
	}
	for _, o := range out {
		o.stream.pushAll(c, o.items)
	}
}

type streamItems struct {
	stream *feedStream
	items  []any
}

// group is the rows of one region in one routeLocked call.
type group struct {
	region *routedRegion
	n      int
	rows   []*cdcpb.Event_Row
}

// eventSlab hands out entries Events from arrays allocated a chunk at a
// time (never grown in place: handed-out events stay where they are).
type eventSlab struct {
	evs   []cdcpb.Event
	outer []cdcpb.Event_Entries_
	inner []cdcpb.Event_Entries
}

func (s *eventSlab) entries(region, request uint64, rows []*cdcpb.Event_Row, hint int) *cdcpb.Event {
	if len(s.evs) == cap(s.evs) {
		n := max(hint, 2*cap(s.evs), 4)
		s.evs, s.outer, s.inner = make([]cdcpb.Event, 0, n), make([]cdcpb.Event_Entries_, 0, n), make([]cdcpb.Event_Entries, 0, n)
	}
	s.inner = append(s.inner, cdcpb.Event_Entries{Entries: rows})
	s.outer = append(s.outer, cdcpb.Event_Entries_{Entries: &s.inner[len(s.inner)-1]})
	s.evs = append(s.evs, cdcpb.Event{RegionId: region, RequestId: request, Event: &s.outer[len(s.outer)-1]})
	return &s.evs[len(s.evs)-1]
}

// routeIndex is the regions in key order, for routing rows without asking
// mocktikv per row (it scans every region and clones the one it finds).
// Regions and leaders change only through splitLocked, transferLeaderLocked
// and Merge, which drop the index (Cluster.routes); anything new that
// changes them must drop it too.
type routeIndex struct {
	regions []routedRegion // by start key
	// slow: a boundary did not decode (never seen: the simulator splits at
	// encoded raw keys), so rows are routed by asking mocktikv.
	slow func(raw []byte) *routedRegion
	// groups is routeLocked's scratch space: the group of each region
	// (by position; -1 for none) in the call under way, and the regions
	// that have one.
	groups  []int32
	grouped []int
	bySlow  map[uint64]int32
}

// routedRegion is a region with its bounds as raw keys: the memcomparable
// encoding keeps order, so raw keys compare with them directly.
type routedRegion struct {
	RegionInfo
	start, end string // raw; end "" is unbounded
	unbounded  bool
	pos        int // in routeIndex.regions
}

func (r *routedRegion) holds(raw []byte) bool {
	return string(raw) >= r.start && (r.unbounded || string(raw) < r.end)
}

func (c *Cluster) routesLocked() *routeIndex {
	if c.routes != nil {
		return c.routes
	}
	idx := &routeIndex{}
	for _, r := range c.regionsLocked() {
		lo, hi, unbounded, ok := rawRange(r.Meta.StartKey, r.Meta.EndKey)
		if !ok || r.Meta == nil {
			idx = &routeIndex{slow: func(raw []byte) *routedRegion {
				r := c.regionByEncoded(EncodeKey(raw))
				if r.Meta == nil {
					return nil
				}
				return &routedRegion{RegionInfo: r}
			}}
			break
		}
		idx.regions = append(idx.regions, routedRegion{RegionInfo: r, start: lo, end: hi, unbounded: unbounded, pos: len(idx.regions)})
	}
	idx.groups = make([]int32, len(idx.regions))
	for i := range idx.groups {
		idx.groups[i] = -1
	}
	c.routes = idx
	return idx
}

// find returns the region holding a raw key, or nil. Rows written in key
// order often move to the region after the previous row's (prev), which is
// tried before searching.
func (x *routeIndex) find(raw []byte, prev *routedRegion) *routedRegion {
	if x.slow != nil {
		return x.slow(raw)
	}
	if prev != nil && prev.pos+1 < len(x.regions) && x.regions[prev.pos+1].holds(raw) {
		return &x.regions[prev.pos+1]
	}
	i := sort.Search(len(x.regions), func(i int) bool { return x.regions[i].start > string(raw) }) - 1
	if i < 0 || !x.regions[i].holds(raw) {
		return nil
	}
	return &x.regions[i]
}

func (x *routeIndex) group(r *routedRegion) int32 {
	if x.slow != nil {
		if g, ok := x.bySlow[r.Meta.Id]; ok {
			return g
		}
		return -1
	}
	return x.groups[r.pos]
}

func (x *routeIndex) setGroup(r *routedRegion, g int32) {
	if x.slow != nil {
		if x.bySlow == nil {
			x.bySlow = map[uint64]int32{}
		}
		x.bySlow[r.Meta.Id] = g
		return
	}
	x.groups[r.pos] = g
	x.grouped = append(x.grouped, r.pos)
}

func (x *routeIndex) clearGroups() {
	for _, p := range x.grouped {
		x.groups[p] = -1
	}
	x.grouped = x.grouped[:0]
	clear(x.bySlow)
}
