package meta

import (
	"context"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// PD keeps its cluster id and the cluster's GC safepoint in its own etcd,
// which is the etcd this tool talks to in production:
//
//	/pd/cluster_id                 8-byte big-endian cluster id
//	/pd/<cluster id>/gc/safe_point GC safepoint as a hex string
const pdClusterIDKey = "/pd/cluster_id"

// PDClusterID reads PD's cluster id from etcd. ok is false when the etcd
// holds no PD data (a plain etcd, the playground).
func (c *Client) PDClusterID(ctx context.Context) (id uint64, ok bool, err error) {
	rctx, cancel := c.ctx(ctx)
	defer cancel()
	resp, err := c.cli.Get(rctx, pdClusterIDKey)
	if err != nil {
		return 0, false, fmt.Errorf("read PD cluster id: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return 0, false, nil
	}
	if len(resp.Kvs[0].Value) != 8 {
		return 0, false, malformed(pdClusterIDKey, fmt.Errorf("cluster id is %d bytes, want 8", len(resp.Kvs[0].Value)))
	}
	return binary.BigEndian.Uint64(resp.Kvs[0].Value), true, nil
}

// GCSafePoint reads PD's GC safepoint from etcd. ok is false when the etcd
// holds no PD data (a plain etcd, the playground).
func (c *Client) GCSafePoint(ctx context.Context) (ts uint64, ok bool, err error) {
	id, ok, err := c.PDClusterID(ctx)
	if err != nil || !ok {
		return 0, false, err
	}
	rctx, cancel := c.ctx(ctx)
	defer cancel()
	key := fmt.Sprintf("/pd/%d/gc/safe_point", id)
	resp, err := c.cli.Get(rctx, key)
	if err != nil {
		return 0, false, fmt.Errorf("read GC safepoint: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return 0, false, nil
	}
	ts, err = strconv.ParseUint(strings.TrimSpace(string(resp.Kvs[0].Value)), 16, 64)
	if err != nil {
		return 0, false, malformed(key, err)
	}
	return ts, true, nil
}
