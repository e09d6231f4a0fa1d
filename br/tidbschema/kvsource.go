package tidbschema

import (
	"context"
	"fmt"

	"github.com/tikv/client-go/v2/txnkv/txnsnapshot"
)

// Snapshotter opens a snapshot of the cluster at a timestamp:
// *tikv.KVStore and *txnkv.Client both are one.
type Snapshotter interface {
	GetSnapshot(ts uint64) *txnsnapshot.KVSnapshot
}

// KVSource is a Source over client-go's transactional snapshot reads: each
// Scan is a snapshot scan at ts, resolving the locks it meets as TiDB's
// reads do. A ts below the cluster's GC safe point fails with client-go's
// error rather than returning a partial schema.
type KVSource struct {
	store     Snapshotter
	batchSize int
}

// NewKVSource reads through store.
func NewKVSource(store Snapshotter) *KVSource {
	// TableInfo values are a few KiB each; 256 per request (client-go's
	// default) keeps a response around a MiB.
	return &KVSource{store: store, batchSize: 256}
}

// Scan implements Source. client-go's iterator takes no context: each batch
// it fetches is bounded by its own backoff budget (20 s) and RPC timeout, and
// ctx is checked between keys, so a cancelled scan stops within one batch.
func (s *KVSource) Scan(ctx context.Context, ts uint64, start, end []byte, fn func(key, value []byte) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	snap := s.store.GetSnapshot(ts)
	snap.SetScanBatchSize(s.batchSize)
	it, err := snap.Iter(start, end)
	if err != nil {
		return fmt.Errorf("scan [%x, %x) at ts %d: %w", start, end, ts, err)
	}
	defer it.Close()
	for it.Valid() {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(it.Key(), it.Value()); err != nil {
			return err
		}
		if err := it.Next(); err != nil {
			return fmt.Errorf("scan [%x, %x) at ts %d: %w", start, end, ts, err)
		}
	}
	return nil
}
