package simcluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/errorpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/pingcap/kvproto/pkg/tikvpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// storeServer is one store's CDC gRPC endpoint.
type storeServer struct {
	cdcpb.UnimplementedChangeDataServer // EventFeedV2 → Unimplemented, so clients fall back
	c                                   *Cluster
	id                                  uint64

	mu      sync.Mutex
	addr    string
	grpc    *grpc.Server
	health  *health.Server // what client-go's store liveness check asks
	served  chan struct{}  // closed when the current grpc.Serve returns
	streams map[*feedStream]struct{}
	down    bool
	downAt  time.Time // PD's clock when it went down (its last heartbeat)
	faults  storeFaults
	changed chan struct{} // closed and replaced whenever faults change
}

// storeFaults are the injected misbehaviours of one store.
type storeFaults struct {
	failRegistrations int          // answer this many registrations with failErr
	failErr           *cdcpb.Error // default server_is_busy
	delay             time.Duration
	stalled           bool
	holdScans         bool // registrations take their snapshot, then wait to send it
}

func (c *Cluster) startStore(id uint64, addr string) (*storeServer, error) {
	s := &storeServer{c: c, id: id, streams: map[*feedStream]struct{}{}, changed: make(chan struct{})}
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
	g := grpc.NewServer(append([]grpc.ServerOption{grpc.MaxRecvMsgSize(256 << 20), grpc.ForceServerCodecV2(newGogoCodec())}, s.c.storeOpts...)...)
	cdcpb.RegisterChangeDataServer(g, s)
	// TiKV's KV API beside CDC, as TiKV serves both on one port.
	tikvpb.RegisterTikvServer(g, &kvService{s: s})
	// client-go marks a store it failed to reach as unreachable until the
	// gRPC health service at the store's address says SERVING again, as
	// TiKV's does; without it a store that was down stays shunned forever.
	hs := health.NewServer()
	healthpb.RegisterHealthServer(g, hs)
	served := make(chan struct{})
	s.mu.Lock()
	s.grpc, s.addr, s.served, s.health = g, lis.Addr().String(), served, hs
	s.setHealthLocked()
	s.mu.Unlock()
	go func() {
		defer close(served)
		_ = g.Serve(lis) // returns when Stop is called
	}()
	return nil
}

func (s *storeServer) stop() {
	s.mu.Lock()
	g, served := s.grpc, s.served
	s.mu.Unlock()
	if g != nil {
		g.Stop()
		<-served
	}
}

func (s *storeServer) address() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// setFaults changes the faults under the store lock and wakes waiters.
func (s *storeServer) setFaults(f func(*storeFaults)) {
	s.mu.Lock()
	f(&s.faults)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// currentFaults returns the faults and a channel closed at their next change.
func (s *storeServer) currentFaults() (storeFaults, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults, s.changed
}

func (s *storeServer) setHealthLocked() {
	st := healthpb.HealthCheckResponse_SERVING
	if s.down {
		st = healthpb.HealthCheckResponse_NOT_SERVING
	}
	s.health.SetServingStatus("", st)
}

func (s *storeServer) setDown(down bool) {
	at, err := s.c.pd.clock.now()
	if err != nil {
		at = time.Now() // unreachable: allocating one timestamp cannot fail
	}
	s.mu.Lock()
	if down && !s.down {
		s.downAt = at
	}
	s.down = down
	s.setHealthLocked()
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
					// TiKV deregisters the connection when the client
					// half-closes, and its sender then ends the stream OK.
					err = nil
				}
				st.close(err)
				return
			}
			if err := s.c.handleRequest(s, st, req); err != nil {
				st.close(err)
				return
			}
		}
	}()
	return st.sendLoop(srv)
}

// handleRequest registers or deregisters a region on a stream, in TiKV's
// order of checks (service.rs, endpoint.rs on_register, initializer.rs).
func (c *Cluster) handleRequest(s *storeServer, st *feedStream, req *cdcpb.ChangeDataRequest) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st.features == nil {
		f := featuresOf(req.GetHeader().GetTicdcVersion())
		st.features = &f
	}
	switch req.Request.(type) {
	case *cdcpb.ChangeDataRequest_Deregister_:
		// A region id deregisters that region of the request id; without
		// one, every region of the request id.
		subs := st.subs
		if req.RegionId != 0 {
			subs = c.subs[req.RegionId] // not every region of the stream
		}
		for sub := range subs {
			if sub.stream == st && sub.requestID == req.RequestId && (req.RegionId == 0 || sub.regionID == req.RegionId) {
				c.removeSubLocked(sub)
			}
		}
		return nil
	case nil, *cdcpb.ChangeDataRequest_Register_:
	default:
		// TiKV reaches unreachable!() on any other request kind; the
		// simulator ends the stream instead of the process.
		return status.Errorf(codes.Internal, "simcluster: unsupported request %T", req.Request)
	}
	fail := func(e *cdcpb.Error) {
		st.push(c, errorEvent(req.RegionId, req.RequestId, e))
	}
	if st.features.validateClusterID && req.GetHeader().GetClusterId() != c.clusterID {
		fail(&cdcpb.Error{ClusterIdMismatch: &cdcpb.ClusterIDMismatch{Current: c.clusterID, Request: req.GetHeader().GetClusterId()}})
		return nil
	}
	if req.KvApi != cdcpb.ChangeDataRequest_TiDB {
		fail(&cdcpb.Error{Compatibility: &cdcpb.Compatibility{RequiredVersion: "6.2.0"}})
		return nil
	}
	s.mu.Lock()
	if s.faults.failRegistrations > 0 {
		s.faults.failRegistrations--
		e := s.faults.failErr
		s.mu.Unlock()
		fail(e)
		return nil
	}
	s.mu.Unlock()
	meta, leaderPeerID := c.mock.GetRegion(req.RegionId)
	var mine, leader *metapb.Peer
	if meta != nil {
		for _, p := range meta.Peers {
			if p.StoreId == s.id {
				mine = p
			}
			if p.Id == leaderPeerID {
				leader = p
			}
		}
	}
	if mine == nil { // no peer of the region on this store
		fail(&cdcpb.Error{RegionNotFound: &errorpb.RegionNotFound{RegionId: req.RegionId}})
		return nil
	}
	// The region's own subscriptions, not the stream's: a stream holding
	// 100,000 regions made each registration scan all of them.
	for sub := range c.subs[req.RegionId] {
		if sub.stream == st && sub.requestID == req.RequestId {
			fail(&cdcpb.Error{DuplicateRequest: &cdcpb.DuplicateRequest{RegionId: req.RegionId}})
			return nil
		}
	}
	if leader == nil || leader.StoreId != s.id {
		fail(&cdcpb.Error{NotLeader: &errorpb.NotLeader{RegionId: req.RegionId, Leader: leader}})
		return nil
	}
	// TiKV checks the version only (compare_region_epoch with
	// check_conf_ver=false).
	if req.RegionEpoch == nil || req.RegionEpoch.Version != meta.RegionEpoch.Version {
		fail(c.epochNotMatchLocked(meta.Id))
		return nil
	}
	start, end := observedRange(meta, req.StartKey, req.EndKey)
	sub := &subscription{regionID: meta.Id, requestID: req.RequestId, store: s.id, start: start, end: end, stream: st}
	sub.rawLo, sub.rawHi, sub.rawUnbounded, sub.rawOK = rawRange(start, end)
	st.subs[sub] = struct{}{}
	if c.subs[meta.Id] == nil {
		c.subs[meta.Id] = map[*subscription]struct{}{}
	}
	c.subs[meta.Id][sub] = struct{}{}
	// The snapshot is taken here, under the same lock that records writes:
	// every write before it is in the scan, every write after it is routed
	// to the subscription live — possibly before scan rows still being sent,
	// as TiKV interleaves them.
	rows := c.ledger.scan(start, end, req.CheckpointTs)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.sendScan(s, sub, rows)
	}()
	return nil
}

// observedRange is the request's key range (encoded) clipped to the region.
// Keys that are not valid memcomparable encodings make TiKV fall back to
// observing the whole region, so they do here too.
func observedRange(meta *metapb.Region, reqStart, reqEnd []byte) ([]byte, []byte) {
	if _, err := DecodeKey(reqStart); len(reqStart) > 0 && err != nil {
		reqStart, reqEnd = nil, nil
	} else if _, err := DecodeKey(reqEnd); len(reqEnd) > 0 && err != nil {
		reqStart, reqEnd = nil, nil
	}
	return intersect(meta.StartKey, meta.EndKey, reqStart, reqEnd)
}

// sendScan sends a subscription's initial scan in events of at most
// scanEventMaxBytes, then INITIALIZED (in the last event, as TiKV appends
// it), unless the subscription ended meanwhile.
func (c *Cluster) sendScan(s *storeServer, sub *subscription, rows []*cdcpb.Event_Row) {
	for {
		f, changed := s.currentFaults()
		if !f.holdScans {
			break
		}
		select {
		case <-changed:
		case <-sub.stream.done:
			return
		}
	}
	rows = append(rows, &cdcpb.Event_Row{Type: cdcpb.Event_INITIALIZED})
	for i := 0; i < len(rows); {
		j, size := i, 0
		for j < len(rows) && (j == i || size+rowSize(rows[j]) < scanEventMaxBytes) {
			size += rowSize(rows[j])
			j++
		}
		c.mu.Lock()
		if sub.state != subScanning {
			c.mu.Unlock()
			return
		}
		sub.stream.push(c, &cdcpb.Event{RegionId: sub.regionID, RequestId: sub.requestID,
			Event: &cdcpb.Event_Entries_{Entries: &cdcpb.Event_Entries{Entries: rows[i:j]}}})
		if j == len(rows) {
			sub.state = subNormal
		}
		c.mu.Unlock()
		i = j
	}
}

func rowSize(r *cdcpb.Event_Row) int { return len(r.Key) + len(r.Value) + len(r.OldValue) }

// intersect returns [a0,a1) ∩ [b0,b1), where an empty end is unbounded.
func intersect(a0, a1, b0, b1 []byte) ([]byte, []byte) {
	start, end := a0, a1
	if string(b0) > string(start) {
		start = b0
	}
	if len(b1) > 0 && (len(end) == 0 || string(b1) < string(end)) {
		end = b1
	}
	return start, end
}

// failRegionLocked ends every subscription of a region with an error.
func (c *Cluster) failRegionLocked(regionID uint64, e *cdcpb.Error) {
	for sub := range c.subs[regionID] {
		sub.stream.push(c, errorEvent(regionID, sub.requestID, e))
		c.removeSubLocked(sub)
	}
}

func (c *Cluster) removeSubLocked(sub *subscription) {
	sub.state = subRemoved
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

type subState int

const (
	subScanning subState = iota // live rows flow; no resolved ts yet
	subNormal                   // INITIALIZED sent; resolved ts flow
	subRemoved
)

// subscription is one registered region on one stream (TiKV's Downstream).
type subscription struct {
	regionID, requestID uint64
	store               uint64
	start, end          []byte // encoded observed range, inside the region
	// raw is the observed range as raw keys (rawOK false when a bound does
	// not decode), kept for the resolved-ts rounds.
	rawLo, rawHi string
	rawUnbounded bool
	rawOK        bool
	stream       *feedStream
	state        subState
	advancedTo   uint64 // TiKV's downstream.advanced_to: starts at 0, never goes back
}

func (s *subscription) contains(ek []byte) bool { return inRange(ek, s.start, s.end) }

// covers reports whether the subscription observes all of a region.
func (s *subscription) covers(m *metapb.Region) bool {
	return bytes.Compare(s.start, m.StartKey) <= 0 && (len(s.end) == 0 || len(m.EndKey) > 0 && bytes.Compare(s.end, m.EndKey) >= 0)
}

// Subscriptions is the number of live subscriptions on a store's streams
// (for tests: a closed stream or a deregistration must bring it down).
func (c *Cluster) Subscriptions(store uint64) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, subs := range c.subs {
		for sub := range subs {
			if sub.store == store {
				n++
			}
		}
	}
	return n
}
