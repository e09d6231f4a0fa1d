package simcluster

import (
	"context"
	"math"
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
// whose key range holds the key. Rows of one region go in one Event.
func (c *Cluster) routeLocked(rows []*cdcpb.Event_Row) {
	if len(rows) == 0 {
		return
	}
	type group struct {
		region RegionInfo
		rows   []*cdcpb.Event_Row
	}
	var groups []*group
	for _, row := range rows {
		ek := EncodeKey(row.Key)
		var g *group
		for _, cand := range groups {
			if inRange(ek, cand.region.Meta.StartKey, cand.region.Meta.EndKey) {
				g = cand
			}
		}
		if g == nil {
			r := c.regionByEncoded(ek)
			if r.Meta == nil {
				continue
			}
			g = &group{region: r}
			groups = append(groups, g)
		}
		g.rows = append(g.rows, row)
	}
	for _, g := range groups {
		for sub := range c.subs[g.region.Meta.Id] {
			if sub.store != g.region.LeaderStore {
				continue
			}
			var mine []*cdcpb.Event_Row
			for _, row := range g.rows {
				if sub.contains(EncodeKey(row.Key)) {
					mine = append(mine, row)
				}
			}
			if len(mine) == 0 {
				continue
			}
			sub.stream.push(c, &cdcpb.Event{RegionId: sub.regionID, RequestId: sub.requestID,
				Event: &cdcpb.Event_Entries_{Entries: &cdcpb.Event_Entries{Entries: mine}}})
		}
	}
}
