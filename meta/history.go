package meta

import (
	"context"
	"fmt"
	"sort"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"logbackup/proto/lbpb"
)

// HistoryLimit is how many recovery events a task keeps; older ones are
// dropped as new ones arrive.
const HistoryLimit = 100

// HistoryPrefix holds the recovery history of one incarnation of a task,
// one key per event, named so that they sort by time.
func HistoryPrefix(task string, inc int64) string { return incarnationPrefix("history/", task, inc) }

// AppendHistory records one recovery event and trims the oldest beyond
// HistoryLimit. Keys are time, store and kind, so two events of the same
// kind from one store within one millisecond collapse into one.
func (c *Client) AppendHistory(ctx context.Context, task string, inc int64, ev *lbpb.RecoveryEvent) error {
	raw, err := proto.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode history event: %w", err)
	}
	key := fmt.Sprintf("%s%020d-%020d-%d", HistoryPrefix(task, inc), ev.HappenAtUnixMs, ev.StoreId, ev.Kind)
	if err := c.put(ctx, task, key, string(raw)); err != nil {
		return fmt.Errorf("append history of %q: %w", task, err)
	}
	rctx, cancel := c.ctx(ctx)
	defer cancel()
	resp, err := c.cli.Get(rctx, HistoryPrefix(task, inc), clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil // trimming can wait for the next append
	}
	for i := 0; i < len(resp.Kvs)-HistoryLimit; i++ {
		c.cli.Delete(rctx, string(resp.Kvs[i].Key))
	}
	return nil
}

// History returns a task's recovery events, oldest first.
func (c *Client) History(ctx context.Context, task string, inc int64) ([]*lbpb.RecoveryEvent, error) {
	var out []*lbpb.RecoveryEvent
	err := c.scan(ctx, HistoryPrefix(task, inc), func(k, v []byte) error {
		ev, err := DecodeRecoveryEvent(string(k), v)
		if err != nil {
			return err
		}
		out = append(out, ev)
		return nil
	})
	sort.SliceStable(out, func(i, j int) bool { return out[i].HappenAtUnixMs < out[j].HappenAtUnixMs })
	return out, err
}
