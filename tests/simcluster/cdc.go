package simcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/errorpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// storeServer is one store's CDC gRPC endpoint.
type storeServer struct {
	cdcpb.UnimplementedChangeDataServer // EventFeedV2 → Unimplemented, so clients fall back
	c                                   *Cluster
	id                                  uint64
	addr                                string

	mu      sync.Mutex
	grpc    *grpc.Server
	streams map[*feedStream]struct{}
	down    bool
	faults  storeFaults
}

// storeFaults are the injected misbehaviours of one store.
type storeFaults struct {
	failRegistrations int          // answer this many registrations with failErr
	failErr           *cdcpb.Error // default server_is_busy
	delay             time.Duration
	stalled           bool
}

func (c *Cluster) startStore(id uint64, addr string) (*storeServer, error) {
	s := &storeServer{c: c, id: id, streams: map[*feedStream]struct{}{}}
	if err := s.serve(addr); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *storeServer) serve(addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("store %d: listen %s: %w", s.id, addr, err)
	}
	g := grpc.NewServer(grpc.MaxRecvMsgSize(256 << 20))
	cdcpb.RegisterChangeDataServer(g, s)
	s.mu.Lock()
	s.grpc, s.addr = g, lis.Addr().String()
	s.mu.Unlock()
	go g.Serve(lis)
	return nil
}

func (s *storeServer) stop() {
	s.mu.Lock()
	g := s.grpc
	s.mu.Unlock()
	if g != nil {
		g.Stop()
	}
}

func (s *storeServer) setDown(down bool) {
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
	if down {
		s.dropStreams()
	}
}

// dropStreams breaks every open stream of the store.
func (s *storeServer) dropStreams() {
	s.mu.Lock()
	streams := make([]*feedStream, 0, len(s.streams))
	for st := range s.streams {
		streams = append(streams, st)
	}
	s.mu.Unlock()
	for _, st := range streams {
		st.close(status.Error(codes.Unavailable, "simcluster: stream dropped"))
	}
}

// EventFeed serves one client stream.
func (s *storeServer) EventFeed(srv cdcpb.ChangeData_EventFeedServer) error {
	s.mu.Lock()
	if s.down {
		s.mu.Unlock()
		return status.Errorf(codes.Unavailable, "store %d is down", s.id)
	}
	st := newFeedStream(s, srv.Context())
	s.streams[st] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.streams, st)
		s.mu.Unlock()
		st.close(nil)
		s.c.dropStreamSubs(st)
	}()

	go func() {
		for {
			req, err := srv.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				st.close(err)
				return
			}
			s.c.handleRequest(s, st, req)
		}
	}()
	return st.sendLoop(srv)
}

// handleRequest registers or deregisters a region on a stream.
func (c *Cluster) handleRequest(s *storeServer, st *feedStream, req *cdcpb.ChangeDataRequest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := req.Request.(*cdcpb.ChangeDataRequest_Deregister_); ok {
		for sub := range st.subs {
			if sub.requestID == req.RequestId && (req.RegionId == 0 || sub.regionID == req.RegionId) {
				c.removeSubLocked(sub)
			}
		}
		return
	}
	if _, ok := req.Request.(*cdcpb.ChangeDataRequest_NotifyTxnStatus_); ok {
		return
	}
	fail := func(e *cdcpb.Error) {
		st.push(c, &cdcpb.Event{RegionId: req.RegionId, RequestId: req.RequestId, Event: &cdcpb.Event_Error{Error: e}})
	}
	s.mu.Lock()
	if s.faults.failRegistrations > 0 {
		s.faults.failRegistrations--
		e := s.faults.failErr
		s.mu.Unlock()
		fail(e)
		return
	}
	s.mu.Unlock()
	if req.Header == nil || req.Header.ClusterId != c.clusterID {
		fail(&cdcpb.Error{ClusterIdMismatch: &cdcpb.ClusterIDMismatch{Current: c.clusterID, Request: req.Header.GetClusterId()}})
		return
	}
	meta, leaderPeerID := c.mock.GetRegion(req.RegionId)
	if meta == nil {
		fail(&cdcpb.Error{RegionNotFound: &errorpb.RegionNotFound{RegionId: req.RegionId}})
		return
	}
	var leader *errorpb.NotLeader
	for _, p := range meta.Peers {
		if p.Id == leaderPeerID && p.StoreId != s.id {
			leader = &errorpb.NotLeader{RegionId: req.RegionId, Leader: p}
		}
	}
	if leader != nil {
		fail(&cdcpb.Error{NotLeader: leader})
		return
	}
	if ep := req.RegionEpoch; ep == nil || ep.Version != meta.RegionEpoch.Version || ep.ConfVer != meta.RegionEpoch.ConfVer {
		fail(c.epochNotMatchLocked(meta.Id))
		return
	}
	for sub := range st.subs {
		if sub.regionID == req.RegionId && sub.requestID == req.RequestId {
			fail(&cdcpb.Error{DuplicateRequest: &cdcpb.DuplicateRequest{RegionId: req.RegionId}})
			return
		}
	}
	start, end := intersect(meta.StartKey, meta.EndKey, req.StartKey, req.EndKey)
	sub := &subscription{regionID: meta.Id, requestID: req.RequestId, store: s.id, start: start, end: end,
		stream: st, resolved: req.CheckpointTs}
	st.subs[sub] = struct{}{}
	if c.subs[meta.Id] == nil {
		c.subs[meta.Id] = map[*subscription]struct{}{}
	}
	c.subs[meta.Id][sub] = struct{}{}
	rows := c.ledger.scan(start, end, req.CheckpointTs)
	rows = append(rows, &cdcpb.Event_Row{Type: cdcpb.Event_INITIALIZED})
	// TiKV sends the scan in batches bounded by count and bytes.
	for i := 0; i < len(rows); {
		j, size := i, 0
		for j < len(rows) && j-i < 128 && (j == i || size+rows[j].Size() <= maxMessageBytes/2) {
			size += rows[j].Size()
			j++
		}
		st.push(c, &cdcpb.Event{RegionId: meta.Id, RequestId: req.RequestId,
			Event: &cdcpb.Event_Entries_{Entries: &cdcpb.Event_Entries{Entries: rows[i:j]}}})
		i = j
	}
	sub.initialized = true
}

// intersect returns [a0,a1) ∩ [b0,b1) where an empty end is unbounded and
// an empty b (both keys empty) means "the whole region".
func intersect(a0, a1, b0, b1 []byte) ([]byte, []byte) {
	start, end := a0, a1
	if bytes.Compare(b0, start) > 0 {
		start = b0
	}
	if len(b1) > 0 && (len(end) == 0 || bytes.Compare(b1, end) < 0) {
		end = b1
	}
	return start, end
}

// failRegionLocked ends every subscription of a region with an error.
func (c *Cluster) failRegionLocked(regionID uint64, e *cdcpb.Error) {
	for sub := range c.subs[regionID] {
		sub.stream.push(c, &cdcpb.Event{RegionId: regionID, RequestId: sub.requestID, Event: &cdcpb.Event_Error{Error: e}})
		c.removeSubLocked(sub)
	}
}

func (c *Cluster) removeSubLocked(sub *subscription) {
	delete(sub.stream.subs, sub)
	if m := c.subs[sub.regionID]; m != nil {
		delete(m, sub)
		if len(m) == 0 {
			delete(c.subs, sub.regionID)
		}
	}
}

func (c *Cluster) dropStreamSubs(st *feedStream) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for sub := range st.subs {
		c.removeSubLocked(sub)
	}
}

// subscription is one registered region on one stream.
type subscription struct {
	regionID, requestID uint64
	store               uint64
	start, end          []byte // encoded, inside the region
	stream              *feedStream
	initialized         bool
	resolved            uint64 // last resolved ts sent (starts at the checkpoint)
}

func (s *subscription) contains(ek []byte) bool {
	return bytes.Compare(ek, s.start) >= 0 && (len(s.end) == 0 || bytes.Compare(ek, s.end) < 0)
}

// resolvedTsLoop sends resolved ts for every initialized subscription.
func (c *Cluster) resolvedTsLoop(ctx context.Context) {
	t := time.NewTicker(c.cfg.ResolvedTsInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.ResolveOnce(ctx)
	}
}

// ResolveOnce computes and sends one round of resolved ts (the loop calls
// it on its interval; tests may call it directly).
func (c *Cluster) ResolveOnce(ctx context.Context) {
	// The TSO is taken before the lock table is read, under the same
	// mutex that records prewrites: a prewrite recorded after this read
	// belongs to a transaction whose commit ts will come from a later TSO,
	// so no commit at or below the resolved ts can arrive afterwards.
	ts, err := c.TSO(ctx)
	if err != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	type batchKey struct {
		stream    *feedStream
		requestID uint64
		ts        uint64
	}
	batches := map[batchKey][]uint64{}
	for regionID, subs := range c.subs {
		for sub := range subs {
			if !sub.initialized {
				continue
			}
			r := ts
			if m, ok := c.ledger.minLockIn(sub.start, sub.end); ok && m < r {
				r = m
			}
			if r <= sub.resolved {
				continue // never backwards
			}
			sub.resolved = r
			k := batchKey{sub.stream, sub.requestID, r}
			batches[k] = append(batches[k], regionID)
		}
	}
	for k, regions := range batches {
		k.stream.push(c, &cdcpb.ChangeDataEvent{ResolvedTs: &cdcpb.ResolvedTs{Regions: regions, Ts: k.ts, RequestId: k.requestID}})
	}
}
