package simcluster

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/tikv/client-go/v2/tikvrpc"
	"github.com/tikv/client-go/v2/txnkv/transaction"
)

// Txn runs one optimistic transaction through client-go (two-phase commit;
// async commit and 1PC off) and returns its start ts. fn sets and deletes
// raw keys on txn.
func (c *Cluster) Txn(ctx context.Context, fn func(txn *transaction.KVTxn) error) (uint64, error) {
	txn, err := c.kv.Begin()
	if err != nil {
		return 0, fmt.Errorf("begin: %w", err)
	}
	txn.SetEnableAsyncCommit(false)
	txn.SetEnable1PC(false)
	if err := fn(txn); err != nil {
		txn.Rollback()
		return 0, err
	}
	if err := txn.Commit(ctx); err != nil {
		// The start ts is returned so the caller can resolve the locks the
		// failed commit may have left (ResolveTxn), as a reader would.
		return txn.StartTS(), fmt.Errorf("commit txn %d: %w", txn.StartTS(), err)
	}
	return txn.StartTS(), nil
}

// Put writes one raw key in its own transaction and returns its start ts.
func (c *Cluster) Put(ctx context.Context, key, value []byte) (uint64, error) {
	return c.Txn(ctx, func(t *transaction.KVTxn) error { return t.Set(key, value) })
}

// Delete deletes one raw key in its own transaction and returns its start ts.
func (c *Cluster) Delete(ctx context.Context, key []byte) (uint64, error) {
	return c.Txn(ctx, func(t *transaction.KVTxn) error { return t.Delete(key) })
}

// Versions returns the committed versions of a raw key, oldest first.
func (c *Cluster) Versions(key []byte) []Version {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Version(nil), c.ledger.versionsOf(key)...)
}

// Committed returns every committed version with commit_ts in (from, to],
// ordered by key then commit ts: the ground truth tests compare with.
func (c *Cluster) Committed(from, to uint64) []Version {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Version
	c.ledger.eachVersion(func(v *Version) {
		if v.CommitTS > from && v.CommitTS <= to {
			out = append(out, *v)
		}
	})
	sort.Slice(out, func(i, j int) bool {
		if c := bytes.Compare(out[i].Key, out[j].Key); c != 0 {
			return c < 0
		}
		return out[i].CommitTS < out[j].CommitTS
	})
	return out
}

// Mutation is one write of an open transaction.
type Mutation struct {
	Key    []byte // raw
	Value  []byte
	Delete bool
}

// OpenTxn is a transaction prewritten by hand and held open: its locks keep
// the resolved ts of their regions at or below its start ts until Commit or
// Rollback. (client-go's own Commit does both phases at once.)
type OpenTxn struct {
	c       *Cluster
	StartTS uint64
	muts    []Mutation
}

// Prewrite starts a transaction and prewrites the mutations (the first key
// is the primary) with a long lock TTL, so nothing resolves it meanwhile.
func (c *Cluster) Prewrite(ctx context.Context, muts ...Mutation) (*OpenTxn, error) {
	if len(muts) == 0 {
		return nil, fmt.Errorf("no mutations")
	}
	start, err := c.TSO(ctx)
	if err != nil {
		return nil, err
	}
	t := &OpenTxn{c: c, StartTS: start, muts: muts}
	for _, m := range muts {
		op := kvrpcpb.Op_Put
		if m.Delete {
			op = kvrpcpb.Op_Del
		}
		req := &kvrpcpb.PrewriteRequest{
			Mutations:    []*kvrpcpb.Mutation{{Op: op, Key: m.Key, Value: m.Value}},
			PrimaryLock:  muts[0].Key,
			StartVersion: start,
			LockTtl:      uint64(time.Hour.Milliseconds()),
			TxnSize:      uint64(len(muts)),
		}
		if err := c.sendToLeader(ctx, m.Key, tikvrpc.CmdPrewrite, req, func(r *tikvrpc.Response) error {
			if pr, ok := r.Resp.(*kvrpcpb.PrewriteResponse); ok && len(pr.Errors) > 0 {
				return fmt.Errorf("prewrite %q: %v", m.Key, pr.Errors[0])
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// Commit commits the open transaction (primary first) and returns its
// commit ts.
func (t *OpenTxn) Commit(ctx context.Context) (uint64, error) {
	commitTS, err := t.c.TSO(ctx)
	if err != nil {
		return 0, err
	}
	for _, m := range t.muts {
		req := &kvrpcpb.CommitRequest{StartVersion: t.StartTS, Keys: [][]byte{m.Key}, CommitVersion: commitTS}
		if err := t.c.sendToLeader(ctx, m.Key, tikvrpc.CmdCommit, req, func(r *tikvrpc.Response) error {
			if cr, ok := r.Resp.(*kvrpcpb.CommitResponse); ok && cr.Error != nil {
				return fmt.Errorf("commit %q: %v", m.Key, cr.Error)
			}
			return nil
		}); err != nil {
			return 0, err
		}
	}
	return commitTS, nil
}

// Heartbeat raises the primary lock's TTL to ttl, as client-go's TTL
// manager does for long transactions. mocktikv rewrites the lock when the
// TTL grows, and TiKV then sends the lock again as a PREWRITE row (with the
// value only if it is short; a long-value Put lock is not resent).
func (t *OpenTxn) Heartbeat(ctx context.Context, ttl time.Duration) error {
	req := &kvrpcpb.TxnHeartBeatRequest{PrimaryLock: t.muts[0].Key, StartVersion: t.StartTS, AdviseLockTtl: uint64(ttl.Milliseconds())}
	return t.c.sendToLeader(ctx, t.muts[0].Key, tikvrpc.CmdTxnHeartBeat, req, func(r *tikvrpc.Response) error {
		if hr, ok := r.Resp.(*kvrpcpb.TxnHeartBeatResponse); ok && hr.Error != nil {
			return fmt.Errorf("heartbeat: %v", hr.Error)
		}
		return nil
	})
}

// Rollback rolls the open transaction back.
func (t *OpenTxn) Rollback(ctx context.Context) error {
	for _, m := range t.muts {
		req := &kvrpcpb.BatchRollbackRequest{StartVersion: t.StartTS, Keys: [][]byte{m.Key}}
		if err := t.c.sendToLeader(ctx, m.Key, tikvrpc.CmdBatchRollback, req, func(r *tikvrpc.Response) error {
			if br, ok := r.Resp.(*kvrpcpb.BatchRollbackResponse); ok && br.Error != nil {
				return fmt.Errorf("rollback %q: %v", m.Key, br.Error)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// sendToLeader sends a request about one raw key to its region's leader
// through the hooked client, retrying region errors (the region may split
// or move between lookups) for up to 20 attempts.
func (c *Cluster) sendToLeader(ctx context.Context, key []byte, typ tikvrpc.CmdType, body any, check func(*tikvrpc.Response) error) error {
	var last error
	for attempt := 0; attempt < 20; attempt++ {
		if attempt > 0 {
			t := time.NewTimer(time.Duration(attempt) * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("send %v for %q: %w (last: %v)", typ, key, ctx.Err(), last)
			case <-t.C:
			}
		}
		c.mu.Lock()
		r := c.regionByEncoded(EncodeKey(key))
		c.mu.Unlock()
		if r.Meta == nil || r.LeaderPeer == nil {
			last = fmt.Errorf("no leader for %q", key)
			continue
		}
		store := c.mock.GetStore(r.LeaderStore)
		if store == nil {
			last = fmt.Errorf("no store %d", r.LeaderStore)
			continue
		}
		req := tikvrpc.NewRequest(typ, body, kvrpcpb.Context{RegionId: r.Meta.Id, RegionEpoch: r.Meta.RegionEpoch, Peer: r.LeaderPeer})
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := c.kv.GetTiKVClient().SendRequest(rctx, store.Address, req, 10*time.Second)
		cancel()
		if err != nil {
			last = err
			continue
		}
		if re, _ := resp.GetRegionError(); re != nil {
			last = fmt.Errorf("region error: %v", re)
			continue
		}
		return check(resp)
	}
	return fmt.Errorf("send %v for %q: %w", typ, key, last)
}

// ResolveTxn settles the locks a transaction left behind, as TiKV's lock
// resolution would: if any of its keys committed, the rest commit at the
// same ts; otherwise they roll back. A failed client-go commit can leave
// locks, and a lock holds the resolved ts of its region back forever.
func (c *Cluster) ResolveTxn(ctx context.Context, startTS uint64) error {
	c.mu.Lock()
	var keys [][]byte
	var commitTS uint64
	for _, lk := range c.ledger.locks {
		if lk.StartTS == startTS {
			keys = append(keys, lk.Key)
		}
	}
	for tk, cts := range c.ledger.committed {
		if tk.startTS == startTS {
			commitTS = cts
		}
	}
	c.mu.Unlock()
	t := &OpenTxn{c: c, StartTS: startTS}
	for _, k := range keys {
		t.muts = append(t.muts, Mutation{Key: k})
	}
	if commitTS == 0 {
		return t.Rollback(ctx)
	}
	for _, m := range t.muts {
		req := &kvrpcpb.CommitRequest{StartVersion: startTS, Keys: [][]byte{m.Key}, CommitVersion: commitTS}
		if err := c.sendToLeader(ctx, m.Key, tikvrpc.CmdCommit, req, func(*tikvrpc.Response) error { return nil }); err != nil {
			return err
		}
	}
	return nil
}

// OpenTxns lists the start ts of transactions that hold locks.
func (c *Cluster) OpenTxns() []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := map[uint64]bool{}
	var out []uint64
	for _, lk := range c.ledger.locks {
		if !seen[lk.StartTS] {
			seen[lk.StartTS] = true
			out = append(out, lk.StartTS)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
