package meta

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// advance raises the timestamp at key to ts and never lowers it, even with
// concurrent writers: a compare-and-swap on the key's ModRevision. It
// returns the value stored after the call.
func (c *Client) advance(ctx context.Context, task, key string, ts uint64) (uint64, error) {
	if err := c.checkPlausible(key, ts); err != nil {
		return 0, fmt.Errorf("refuse to write checkpoint %q: %w", key, err)
	}
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		rctx, cancel := c.ctx(ctx)
		resp, err := c.cli.Get(rctx, key)
		cancel()
		if err != nil {
			return 0, fmt.Errorf("read checkpoint %q: %w", key, err)
		}
		var cmp clientv3.Cmp
		if len(resp.Kvs) == 0 {
			cmp = clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
		} else {
			cur, err := c.decodeCheckpoint(key, resp.Kvs[0].Value)
			switch {
			case errors.Is(err, ErrImplausible):
				// A value from the future (corrupt, or written by a tool
				// with a broken clock) would stop the checkpoint for good:
				// it is replaced, the only way a checkpoint goes down.
			case err != nil:
				return 0, err
			case cur >= ts:
				return cur, nil
			}
			cmp = clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision)
		}
		ok, err := c.commit(ctx, task, []clientv3.Cmp{cmp}, clientv3.OpPut(key, string(EncodeTS(ts))))
		if err != nil {
			return 0, fmt.Errorf("write checkpoint %q: %w", key, err)
		}
		if ok {
			return ts, nil
		}
		// Someone else wrote in between: read again and decide again.
	}
}

// AdvanceStoreCheckpoint raises checkpoint/<task>/store/<store>.
func (c *Client) AdvanceStoreCheckpoint(ctx context.Context, task string, store, ts uint64) (uint64, error) {
	return c.advance(ctx, task, StoreCheckpointKey(task, store), ts)
}

// AdvanceRegionCheckpoint raises checkpoint/<task>/region/<id>/<version>.
func (c *Client) AdvanceRegionCheckpoint(ctx context.Context, task string, region, epochVersion, ts uint64) (uint64, error) {
	return c.advance(ctx, task, RegionCheckpointKey(task, region, epochVersion), ts)
}

// AdvanceGlobalCheckpoint raises checkpoint/<task>/central_global.
func (c *Client) AdvanceGlobalCheckpoint(ctx context.Context, task string, ts uint64) (uint64, error) {
	return c.advance(ctx, task, GlobalCheckpointKey(task), ts)
}

// AdvanceStorageCheckpoint raises storage-checkpoint/<task>/<store>.
func (c *Client) AdvanceStorageCheckpoint(ctx context.Context, task string, store, ts uint64) (uint64, error) {
	return c.advance(ctx, task, StorageCheckpointKey(task, store), ts)
}

// Checkpoints returns every checkpoint under checkpoint/<task>/.
func (c *Client) Checkpoints(ctx context.Context, task string) ([]Checkpoint, error) {
	var out []Checkpoint
	if err := c.scan(ctx, CheckpointPrefix(task), c.checkpointInto(task, &out)); err != nil {
		return nil, err
	}
	return out, nil
}

// checkpointInto decodes one checkpoint key and value of task into out.
func (c *Client) checkpointInto(task string, out *[]Checkpoint) func(k, v []byte) error {
	return func(k, v []byte) error {
		cp, err := ParseCheckpointKey(task, string(k))
		if err != nil {
			return malformed(string(k), err)
		}
		if cp.TS, err = c.decodeCheckpoint(string(k), v); err != nil {
			return err
		}
		*out = append(*out, cp)
		return nil
	}
}

// CheckpointsExceptRegions is Checkpoints without the region checkpoints:
// what needs only the global and store ones (who writes the task) reads
// two ranges around region/ instead of one key per region of the cluster.
func (c *Client) CheckpointsExceptRegions(ctx context.Context, task string) ([]Checkpoint, error) {
	prefix := CheckpointPrefix(task)
	regions := prefix + "region/"
	var out []Checkpoint
	add := c.checkpointInto(task, &out)
	if err := c.scanRange(ctx, prefix, regions, add); err != nil {
		return nil, err
	}
	if err := c.scanRange(ctx, clientv3.GetPrefixRangeEnd(regions), clientv3.GetPrefixRangeEnd(prefix), add); err != nil {
		return nil, err
	}
	return out, nil
}

// GlobalCheckpoint reads central_global; ok is false when it is absent.
func (c *Client) GlobalCheckpoint(ctx context.Context, task string) (ts uint64, ok bool, err error) {
	key := GlobalCheckpointKey(task)
	rctx, cancel := c.ctx(ctx)
	defer cancel()
	resp, err := c.cli.Get(rctx, key)
	if err != nil {
		return 0, false, fmt.Errorf("read %q: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return 0, false, nil
	}
	ts, err = c.decodeCheckpoint(key, resp.Kvs[0].Value)
	if err != nil {
		if c.tolerate(err) {
			return 0, false, nil
		}
		return 0, false, err
	}
	return ts, true, nil
}

// StorageCheckpoints returns each store's storage checkpoint.
func (c *Client) StorageCheckpoints(ctx context.Context, task string) (map[uint64]uint64, error) {
	prefix := StorageCheckpointPrefix(task)
	out := map[uint64]uint64{}
	err := c.scan(ctx, prefix, func(k, v []byte) error {
		store, err := strconv.ParseUint(string(k[len(prefix):]), 10, 64)
		if err != nil {
			return malformed(string(k), fmt.Errorf("store id: %w", err))
		}
		ts, err := c.decodeCheckpoint(string(k), v)
		if err != nil {
			return err
		}
		out[store] = ts
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// RegionTS is one region checkpoint to advance.
type RegionTS struct {
	RegionID, EpochVersion, TS uint64
}

// AdvanceRegionCheckpoints advances many region checkpoints at once, never
// moving any backwards: one scan of the task's region checkpoints, then
// transactions of up to 64 compare-and-puts. Keys that lose a race are
// retried one by one.
func (c *Client) AdvanceRegionCheckpoints(ctx context.Context, task string, cps []RegionTS) error {
	type cur struct {
		ts     uint64
		modRev int64
	}
	existing := map[string]cur{}
	prefix := CheckpointPrefix(task) + "region/"
	rctx, cancel := c.ctx(ctx)
	resp, err := c.cli.Get(rctx, prefix, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return fmt.Errorf("read region checkpoints: %w", err)
	}
	for _, kv := range resp.Kvs {
		ts, err := c.decodeCheckpoint(string(kv.Key), kv.Value)
		if errors.Is(err, ErrImplausible) {
			ts = 0 // replaced below, as advance replaces it
		} else if err != nil {
			return err
		}
		existing[string(kv.Key)] = cur{ts, kv.ModRevision}
	}
	for _, cp := range cps {
		if err := c.checkPlausible(RegionCheckpointKey(task, cp.RegionID, cp.EpochVersion), cp.TS); err != nil {
			return fmt.Errorf("refuse to write a region checkpoint: %w", err)
		}
	}
	const batch = 64
	var retry []RegionTS
	for i := 0; i < len(cps); i += batch {
		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		var sent []RegionTS
		for _, cp := range cps[i:min(i+batch, len(cps))] {
			key := RegionCheckpointKey(task, cp.RegionID, cp.EpochVersion)
			e, ok := existing[key]
			switch {
			case ok && e.ts >= cp.TS:
				continue
			case ok:
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", e.modRev))
			default:
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
			}
			ops = append(ops, clientv3.OpPut(key, string(EncodeTS(cp.TS))))
			sent = append(sent, cp)
		}
		if len(ops) == 0 {
			continue
		}
		ok, err := c.commit(ctx, task, cmps, ops...)
		if err != nil {
			return fmt.Errorf("write region checkpoints: %w", err)
		}
		if !ok {
			retry = append(retry, sent...)
		}
	}
	for _, cp := range retry {
		if _, err := c.AdvanceRegionCheckpoint(ctx, task, cp.RegionID, cp.EpochVersion, cp.TS); err != nil {
			return err
		}
	}
	return nil
}

// RepairCheckpoint replaces the value at key, one of task's checkpoint
// keys, with ts when it cannot be read (undecodable or implausible) and
// returns what was wrong with it; a readable or absent value is left alone
// (nil). It is how a writer that owns a key takes it back from garbage:
// advance refuses to guess what an unreadable value meant, since only its
// owner knows a true value to put there.
func (c *Client) RepairCheckpoint(ctx context.Context, task, key string, ts uint64) (*MalformedError, error) {
	if err := c.checkPlausible(key, ts); err != nil {
		return nil, fmt.Errorf("refuse to write checkpoint %q: %w", key, err)
	}
	for {
		rctx, cancel := c.ctx(ctx)
		resp, err := c.cli.Get(rctx, key)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("read checkpoint %q: %w", key, err)
		}
		if len(resp.Kvs) == 0 {
			return nil, nil
		}
		_, err = c.decodeCheckpoint(key, resp.Kvs[0].Value)
		var bad *MalformedError
		if !errors.As(err, &bad) {
			return nil, nil
		}
		cmp := clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision)
		ok, err := c.commit(ctx, task, []clientv3.Cmp{cmp}, clientv3.OpPut(key, string(EncodeTS(ts))))
		if err != nil {
			return nil, fmt.Errorf("rewrite checkpoint %q: %w", key, err)
		}
		if ok {
			return bad, nil
		}
		// Written meanwhile: look again.
	}
}
