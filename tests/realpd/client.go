package realpd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/pingcap/kvproto/pkg/pdpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// callTimeout bounds every call this client makes.
const callTimeout = 10 * time.Second

// Client speaks to PD as a TiKV store does, and as TiDB's GC worker does:
// the calls a test needs to drive a real PD into a cluster's states.
// Every call has a deadline.
type Client struct {
	addr      string
	conn      *grpc.ClientConn
	pd        pdpb.PDClient
	clusterID uint64

	mu     sync.Mutex
	hb     pdpb.PD_RegionHeartbeatClient
	hbStop context.CancelFunc
}

// Dial connects to PD at addr (host:port) and learns its cluster id.
func Dial(ctx context.Context, addr string) (*Client, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dial PD at %s: %w", addr, err)
	}
	c := &Client{addr: addr, conn: conn, pd: pdpb.NewPDClient(conn)}
	for {
		rctx, cancel := context.WithTimeout(ctx, callTimeout)
		resp, err := c.pd.GetMembers(rctx, &pdpb.GetMembersRequest{Header: &pdpb.RequestHeader{}})
		cancel()
		if err == nil && resp.GetHeader().GetError() == nil && resp.GetHeader().GetClusterId() != 0 {
			c.clusterID = resp.GetHeader().GetClusterId()
			return c, nil
		}
		select {
		case <-ctx.Done():
			conn.Close()
			if err == nil {
				err = fmt.Errorf("%v", resp.GetHeader().GetError())
			}
			return nil, fmt.Errorf("PD at %s: get members: %w", addr, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Close ends the client and its heartbeat stream.
func (c *Client) Close() {
	c.mu.Lock()
	if c.hbStop != nil {
		c.hbStop()
	}
	c.mu.Unlock()
	c.conn.Close()
}

// ClusterID is PD's cluster id.
func (c *Client) ClusterID() uint64 { return c.clusterID }

func (c *Client) header() *pdpb.RequestHeader { return &pdpb.RequestHeader{ClusterId: c.clusterID} }

// headerErr turns PD's in-band error into a Go error.
func headerErr(op string, h *pdpb.ResponseHeader) error {
	if e := h.GetError(); e != nil && e.GetType() != pdpb.ErrorType_OK {
		return fmt.Errorf("%s: PD answered %s: %s", op, e.GetType(), e.GetMessage())
	}
	return nil
}

// IsBootstrapped asks whether a store has bootstrapped the cluster.
func (c *Client) IsBootstrapped(ctx context.Context) (bool, error) {
	rctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := c.pd.IsBootstrapped(rctx, &pdpb.IsBootstrappedRequest{Header: c.header()})
	if err != nil {
		return false, fmt.Errorf("is bootstrapped: %w", err)
	}
	return resp.GetBootstrapped(), headerErr("is bootstrapped", resp.GetHeader())
}

// AllocID allocates an id from PD's allocator, as TiKV does for stores,
// regions and peers.
func (c *Client) AllocID(ctx context.Context) (uint64, error) {
	rctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := c.pd.AllocID(rctx, &pdpb.AllocIDRequest{Header: c.header()})
	if err != nil {
		return 0, fmt.Errorf("alloc id: %w", err)
	}
	return resp.GetId(), headerErr("alloc id", resp.GetHeader())
}

// Bootstrap bootstraps the cluster with its first store and region, as a
// TiKV does on its first start.
func (c *Client) Bootstrap(ctx context.Context, store *metapb.Store, region *metapb.Region) error {
	rctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := c.pd.Bootstrap(rctx, &pdpb.BootstrapRequest{Header: c.header(), Store: store, Region: region})
	if err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	return headerErr("bootstrap", resp.GetHeader())
}

// PutStore registers (or updates) a store.
func (c *Client) PutStore(ctx context.Context, store *metapb.Store) error {
	rctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := c.pd.PutStore(rctx, &pdpb.PutStoreRequest{Header: c.header(), Store: store})
	if err != nil {
		return fmt.Errorf("put store %d: %w", store.GetId(), err)
	}
	return headerErr(fmt.Sprintf("put store %d", store.GetId()), resp.GetHeader())
}

// StoreHeartbeat reports a store alive, as TiKV does every 10 s; PD shows
// a store it has not heard from for 20 s as disconnected.
func (c *Client) StoreHeartbeat(ctx context.Context, storeID uint64, regions uint32) error {
	rctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	now := uint64(time.Now().Unix())
	resp, err := c.pd.StoreHeartbeat(rctx, &pdpb.StoreHeartbeatRequest{Header: c.header(), Stats: &pdpb.StoreStats{
		StoreId: storeID, RegionCount: regions, Capacity: 100 << 30, Available: 90 << 30,
		StartTime: uint32(now), Interval: &pdpb.TimeInterval{StartTimestamp: now - 10, EndTimestamp: now},
	}})
	if err != nil {
		return fmt.Errorf("store %d heartbeat: %w", storeID, err)
	}
	return headerErr(fmt.Sprintf("store %d heartbeat", storeID), resp.GetHeader())
}

// RegionHeartbeat reports a region from its leader on the region
// heartbeat stream, which is opened on first use and reopened after it
// breaks. term must grow when the leader changes, as raft's term does.
// PD's answers (scheduling operators) are read and dropped.
func (c *Client) RegionHeartbeat(ctx context.Context, region *metapb.Region, leader *metapb.Peer, term uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hb == nil {
		sctx, stop := context.WithCancel(context.Background())
		hb, err := c.pd.RegionHeartbeat(sctx)
		if err != nil {
			stop()
			return fmt.Errorf("open region heartbeat stream: %w", err)
		}
		c.hb, c.hbStop = hb, stop
		go func() {
			for {
				if _, err := hb.Recv(); err != nil {
					// A broken stream (PD restarted) is reopened by the
					// next heartbeat rather than failing it.
					c.mu.Lock()
					if c.hb == hb {
						c.hbStop()
						c.hb, c.hbStop = nil, nil
					}
					c.mu.Unlock()
					return
				}
			}
		}()
	}
	now := uint64(time.Now().Unix())
	err := c.hb.Send(&pdpb.RegionHeartbeatRequest{Header: c.header(), Region: region, Leader: leader, Term: term,
		ApproximateSize: 1, ApproximateKeys: 1, Interval: &pdpb.TimeInterval{StartTimestamp: now - 60, EndTimestamp: now}})
	if err != nil {
		c.hbStop()
		c.hb, c.hbStop = nil, nil
		return fmt.Errorf("region %d heartbeat: %w", region.GetId(), err)
	}
	return nil
}

// SetTxnSafePoint moves the txn safe point as TiDB's GC worker does at the
// start of a GC round (through the service safepoint "gc_worker", the API
// the pinned pd client has); it returns the txn safe point after the call,
// which a GC barrier below ts holds back.
func (c *Client) SetTxnSafePoint(ctx context.Context, ts uint64) (uint64, error) {
	rctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := c.pd.UpdateServiceGCSafePoint(rctx, &pdpb.UpdateServiceGCSafePointRequest{
		Header: c.header(), ServiceId: []byte("gc_worker"), TTL: math.MaxInt64, SafePoint: ts})
	if err != nil {
		return 0, fmt.Errorf("set txn safe point: %w", err)
	}
	return resp.GetMinSafePoint(), headerErr("set txn safe point", resp.GetHeader())
}

// SetGCSafePoint moves the GC safe point as TiDB's GC worker does once
// locks are resolved; PD refuses to move it past the txn safe point.
func (c *Client) SetGCSafePoint(ctx context.Context, ts uint64) (uint64, error) {
	rctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := c.pd.UpdateGCSafePoint(rctx, &pdpb.UpdateGCSafePointRequest{Header: c.header(), SafePoint: ts})
	if err != nil {
		return 0, fmt.Errorf("set GC safe point: %w", err)
	}
	return resp.GetNewSafePoint(), headerErr("set GC safe point", resp.GetHeader())
}

// GetStore is PD's record of a store, tombstones included.
func (c *Client) GetStore(ctx context.Context, id uint64) (*metapb.Store, error) {
	rctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := c.pd.GetStore(rctx, &pdpb.GetStoreRequest{Header: c.header(), StoreId: id})
	if err != nil {
		return nil, fmt.Errorf("get store %d: %w", id, err)
	}
	return resp.GetStore(), headerErr(fmt.Sprintf("get store %d", id), resp.GetHeader())
}

// Tombstone removes a store as `pd-ctl store delete` does for a store
// that is physically gone, and waits until PD has buried it (PD checks
// removing stores every 10 s; one with no regions becomes a tombstone).
func (c *Client) Tombstone(ctx context.Context, id uint64) error {
	url := fmt.Sprintf("http://%s/pd/api/v1/store/%d?force=true", c.addr, id)
	rctx, cancel := context.WithTimeout(ctx, callTimeout)
	req, _ := http.NewRequestWithContext(rctx, http.MethodDelete, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		return fmt.Errorf("delete store %d: %w", id, err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	cancel()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("delete store %d: PD answered %s: %s", id, resp.Status, body)
	}
	for {
		s, err := c.GetStore(ctx, id)
		if err == nil && s.GetState() == metapb.StoreState_Tombstone {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("store %d is not a tombstone yet", id), err, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}
