package simcluster

import (
	"bytes"
	"context"
	"fmt"

	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/tikv/client-go/v2/tikvrpc"
)

// CheckLedger compares the ledger — the source of initial scans and of the
// ground truth tests compare with — against mocktikv's own MVCC data, key by
// key (MvccGetByKey): the held lock (start ts, kind) and every committed
// Put/Delete version (start ts, commit ts, value). It proves the hook
// mirrored every acknowledged write. Call it while no writes are in flight.
func (c *Cluster) CheckLedger(ctx context.Context) error {
	c.mu.Lock()
	var keys [][]byte
	// A BulkWriter's keys are not among them: mocktikv never sees those,
	// the ledger is their only record.
	c.ledger.keys.Ascend(func(k string) bool {
		keys = append(keys, []byte(k))
		return true
	})
	c.mu.Unlock()
	for _, k := range keys {
		var info *kvrpcpb.MvccInfo
		err := c.sendToLeader(ctx, k, tikvrpc.CmdMvccGetByKey, &kvrpcpb.MvccGetByKeyRequest{Key: k}, func(r *tikvrpc.Response) error {
			resp, ok := r.Resp.(*kvrpcpb.MvccGetByKeyResponse)
			if !ok || resp.Error != "" || resp.Info == nil {
				return fmt.Errorf("mvcc get %q: %v", k, r.Resp)
			}
			info = resp.Info
			return nil
		})
		if err != nil {
			return fmt.Errorf("check ledger: %w", err)
		}
		c.mu.Lock()
		err = c.compareKeyLocked(k, info)
		c.mu.Unlock()
		if err != nil {
			return fmt.Errorf("check ledger: key %q: %w", k, err)
		}
	}
	return nil
}

func (c *Cluster) compareKeyLocked(k []byte, info *kvrpcpb.MvccInfo) error {
	lk := c.ledger.locks[string(k)]
	switch {
	case lk == nil && info.Lock != nil && info.Lock.Type != kvrpcpb.Op_PessimisticLock:
		return fmt.Errorf("store holds a %v lock of txn %d the ledger lacks", info.Lock.Type, info.Lock.StartTs)
	case lk != nil && info.Lock == nil:
		return fmt.Errorf("ledger holds a lock of txn %d the store lacks", lk.StartTS)
	case lk != nil && (lk.StartTS != info.Lock.StartTs || lk.Op != info.Lock.Type):
		return fmt.Errorf("lock differs: ledger txn %d %v, store txn %d %v", lk.StartTS, lk.Op, info.Lock.StartTs, info.Lock.Type)
	}
	values := map[uint64][]byte{}
	for _, v := range info.Values {
		values[v.StartTs] = v.Value
	}
	var store []Version
	for i := len(info.Writes) - 1; i >= 0; i-- { // the store lists newest first
		w := info.Writes[i]
		if w.Type != kvrpcpb.Op_Put && w.Type != kvrpcpb.Op_Del {
			continue
		}
		v := Version{StartTS: w.StartTs, CommitTS: w.CommitTs, Delete: w.Type == kvrpcpb.Op_Del}
		if !v.Delete {
			v.Value = values[w.StartTs]
		}
		store = append(store, v)
	}
	mine := c.ledger.versions[string(k)]
	if len(store) != len(mine) {
		return fmt.Errorf("%d versions in the ledger, %d in the store", len(mine), len(store))
	}
	for i := range mine {
		a, b := mine[i], store[i]
		if a.StartTS != b.StartTS || a.CommitTS != b.CommitTS || a.Delete != b.Delete || !bytes.Equal(a.Value, b.Value) {
			return fmt.Errorf("version %d differs: ledger %d→%d del=%v len %d, store %d→%d del=%v len %d",
				i, a.StartTS, a.CommitTS, a.Delete, len(a.Value), b.StartTS, b.CommitTS, b.Delete, len(b.Value))
		}
	}
	return nil
}
