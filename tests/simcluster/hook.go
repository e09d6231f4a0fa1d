package simcluster

import (
	"bytes"
	"context"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/tikv/client-go/v2/tikv"
	"github.com/tikv/client-go/v2/tikvrpc"
)

// hookClient sits between client-go and the mock stores. After a store
// acknowledges a write it records the effect in the ledger and sends the
// CDC rows, under one lock, so the ledger and the streams never disagree.
type hookClient struct {
	tikv.Client
	c *Cluster
}

func (h *hookClient) SendRequest(ctx context.Context, addr string, req *tikvrpc.Request, timeout time.Duration) (*tikvrpc.Response, error) {
	resp, err := h.Client.SendRequest(ctx, addr, req, timeout)
	if err != nil || resp == nil || resp.Resp == nil {
		return resp, err
	}
	if re, _ := resp.GetRegionError(); re != nil {
		return resp, err
	}
	h.c.record(req, resp)
	return resp, err
}

// record applies an acknowledged request to the ledger.
func (c *Cluster) record(req *tikvrpc.Request, resp *tikvrpc.Response) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch req.Type {
	case tikvrpc.CmdPrewrite:
		r, ok := resp.Resp.(*kvrpcpb.PrewriteResponse)
		if !ok || len(r.Errors) > 0 {
			return
		}
		p := req.Prewrite()
		for _, m := range p.Mutations {
			c.routeLocked(m.Key, c.ledger.prewrite(m, p.StartVersion))
		}
	case tikvrpc.CmdCommit:
		r, ok := resp.Resp.(*kvrpcpb.CommitResponse)
		if !ok || r.Error != nil {
			return
		}
		p := req.Commit()
		for _, k := range p.Keys {
			c.routeLocked(k, c.ledger.commit(k, p.StartVersion, p.CommitVersion))
		}
	case tikvrpc.CmdBatchRollback:
		r, ok := resp.Resp.(*kvrpcpb.BatchRollbackResponse)
		if !ok || r.Error != nil {
			return
		}
		p := req.BatchRollback()
		for _, k := range p.Keys {
			c.routeLocked(k, c.ledger.rollback(k, p.StartVersion))
		}
	case tikvrpc.CmdCleanup:
		r, ok := resp.Resp.(*kvrpcpb.CleanupResponse)
		if !ok || r.Error != nil || r.CommitVersion != 0 {
			return
		}
		p := req.Cleanup()
		c.routeLocked(p.Key, c.ledger.rollback(p.Key, p.StartVersion))
	case tikvrpc.CmdCheckTxnStatus:
		r, ok := resp.Resp.(*kvrpcpb.CheckTxnStatusResponse)
		if !ok || r.Error != nil {
			return
		}
		switch r.Action {
		case kvrpcpb.Action_TTLExpireRollback, kvrpcpb.Action_LockNotExistRollback, kvrpcpb.Action_TTLExpirePessimisticRollback:
			p := req.CheckTxnStatus()
			c.routeLocked(p.PrimaryKey, c.ledger.rollback(p.PrimaryKey, p.LockTs))
		}
	case tikvrpc.CmdResolveLock:
		r, ok := resp.Resp.(*kvrpcpb.ResolveLockResponse)
		if !ok || r.Error != nil {
			return
		}
		p := req.ResolveLock()
		if len(p.TxnInfos) > 0 {
			for _, ti := range p.TxnInfos {
				c.resolveTxnLocked(req.RegionId, ti.Txn, ti.Status, nil)
			}
			return
		}
		c.resolveTxnLocked(req.RegionId, p.StartVersion, p.CommitVersion, p.Keys)
	}
}

// resolveTxnLocked commits (commitTS > 0) or rolls back the locks of a
// transaction: the given keys, or every lock of it in the region.
func (c *Cluster) resolveTxnLocked(regionID, startTS, commitTS uint64, keys [][]byte) {
	if len(keys) == 0 {
		meta, _ := c.mock.GetRegion(regionID)
		if meta == nil {
			return
		}
		for _, lk := range c.ledger.locks {
			ek := EncodeKey(lk.Key)
			if lk.StartTS == startTS && bytes.Compare(ek, meta.StartKey) >= 0 && (len(meta.EndKey) == 0 || bytes.Compare(ek, meta.EndKey) < 0) {
				keys = append(keys, lk.Key)
			}
		}
	}
	for _, k := range keys {
		var row *cdcpb.Event_Row
		if commitTS > 0 {
			row = c.ledger.commit(k, startTS, commitTS)
		} else {
			row = c.ledger.rollback(k, startTS)
		}
		c.routeLocked(k, row)
	}
}

// routeLocked sends a live row to every subscription of the region that
// holds the key, on the store that leads it.
func (c *Cluster) routeLocked(raw []byte, row *cdcpb.Event_Row) {
	if row == nil {
		return
	}
	ek := EncodeKey(raw)
	r := c.regionByEncoded(ek)
	if r.Meta == nil {
		return
	}
	for sub := range c.subs[r.Meta.Id] {
		if sub.store != r.LeaderStore || !sub.contains(ek) {
			continue
		}
		sub.stream.push(c, &cdcpb.Event{RegionId: sub.regionID, RequestId: sub.requestID,
			Event: &cdcpb.Event_Entries_{Entries: &cdcpb.Event_Entries{Entries: []*cdcpb.Event_Row{row}}}})
	}
}
