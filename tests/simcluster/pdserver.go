package simcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/pingcap/kvproto/pkg/pdpb"
	"github.com/tikv/pd/client/clients/router"
	"github.com/tikv/pd/client/opt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// pdServer serves kvproto's pdpb.PD on the embedded etcd's gRPC server, as
// PD serves it beside its etcd on one client port. It answers what the
// pinned pd client (github.com/tikv/pd/client) calls, with PD's rules (PD's
// server/grpc_service.go and gc_service.go); everything else answers
// Unimplemented, which the client tolerates for the calls it probes.
type pdServer struct {
	pdpb.UnimplementedPDServer
	c *Cluster
	s *pdState

	mu      sync.Mutex
	member  *pdpb.Member // nil until the server is up
	down    bool
	stopped bool
	broken  chan struct{} // closed when PD goes down or stops: open streams end
}

func newPDServer(c *Cluster) *pdServer {
	return &pdServer{c: c, s: c.pd, broken: make(chan struct{})}
}

var (
	errPDDown       = status.Error(codes.Unavailable, "simcluster: PD is down")
	errPDNotStarted = status.Error(codes.Unavailable, "server not started") // PD's ErrNotStarted
)

func (p *pdServer) setMember(m *pdpb.Member) {
	p.mu.Lock()
	p.member = m
	p.mu.Unlock()
}

// setDown makes every PD call answer Unavailable (down) or serve again.
// Going down ends the open Tso and QueryRegion streams.
func (p *pdServer) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if down == p.down {
		return
	}
	p.down = down
	if down {
		close(p.broken)
	} else if !p.stopped {
		p.broken = make(chan struct{})
	}
}

func (p *pdServer) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.stopped && !p.down {
		close(p.broken)
	}
	p.stopped = true
}

// state is the check every call starts with; it returns the channel that
// closes when open streams must end.
func (p *pdServer) state() (<-chan struct{}, *pdpb.Member, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.stopped || p.member == nil:
		return nil, nil, errPDNotStarted
	case p.down:
		return nil, nil, errPDDown
	}
	return p.broken, p.member, nil
}

// check is state plus PD's cluster id check of a request header.
func (p *pdServer) check(h *pdpb.RequestHeader) error {
	if _, _, err := p.state(); err != nil {
		return err
	}
	if h.GetClusterId() != p.s.clusterID {
		return status.Errorf(codes.FailedPrecondition, "mismatch cluster id, need %d but got %d", p.s.clusterID, h.GetClusterId())
	}
	return nil
}

func (p *pdServer) header() *pdpb.ResponseHeader {
	return &pdpb.ResponseHeader{ClusterId: p.s.clusterID}
}

func (p *pdServer) errorHeader(t pdpb.ErrorType, msg string) *pdpb.ResponseHeader {
	return &pdpb.ResponseHeader{ClusterId: p.s.clusterID, Error: &pdpb.Error{Type: t, Message: msg}}
}

// GetMembers is how a client learns the cluster id and the leader; like
// PD it does not check the cluster id (the client does not know it yet).
func (p *pdServer) GetMembers(context.Context, *pdpb.GetMembersRequest) (*pdpb.GetMembersResponse, error) {
	_, m, err := p.state()
	if err != nil {
		return nil, err
	}
	return &pdpb.GetMembersResponse{Header: p.header(), Members: []*pdpb.Member{m}, Leader: m, EtcdLeader: m}, nil
}

// GetClusterInfo says PD serves TSO itself (no TSO microservice).
func (p *pdServer) GetClusterInfo(context.Context, *pdpb.GetClusterInfoRequest) (*pdpb.GetClusterInfoResponse, error) {
	if _, _, err := p.state(); err != nil {
		return nil, err
	}
	return &pdpb.GetClusterInfoResponse{Header: p.header(), ServiceModes: []pdpb.ServiceMode{pdpb.ServiceMode_PD_SVC_MODE}}, nil
}

// recvAll pumps a stream's requests into a channel so that a handler can
// also wait for PD going down; it ends with the stream.
func recvAll[T any](ctx context.Context, recv func() (T, error)) (<-chan T, <-chan error) {
	reqs, errc := make(chan T), make(chan error, 1)
	go func() {
		for {
			req, err := recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	return reqs, errc
}

// serveStream runs a request/response stream until the client ends it, a
// request fails, or PD goes down.
func serveStream[Req any](p *pdServer, ctx context.Context, recv func() (Req, error), handle func(Req) error) error {
	broken, _, err := p.state()
	if err != nil {
		return err
	}
	reqs, errc := recvAll(ctx, recv)
	for {
		select {
		case <-broken:
			if _, _, err := p.state(); err != nil {
				return err
			}
			return errPDDown
		case err := <-errc:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case req := <-reqs:
			if err := handle(req); err != nil {
				return err
			}
		}
	}
}

// Tso answers each request with count consecutive timestamps from the
// cluster's one clock: the last one, as PD does (the client derives the
// others).
func (p *pdServer) Tso(stream pdpb.PD_TsoServer) error {
	return serveStream(p, stream.Context(), stream.Recv, func(req *pdpb.TsoRequest) error {
		if err := p.check(req.GetHeader()); err != nil {
			return err
		}
		physical, logical, err := p.s.clock.allocate(req.GetCount())
		if err != nil {
			return status.Error(codes.Unknown, err.Error())
		}
		return stream.Send(&pdpb.TsoResponse{Header: p.header(), Count: req.GetCount(),
			Timestamp: &pdpb.Timestamp{Physical: physical, Logical: logical}})
	})
}

func (p *pdServer) GetRegion(_ context.Context, req *pdpb.GetRegionRequest) (*pdpb.GetRegionResponse, error) {
	if err := p.check(req.GetHeader()); err != nil {
		return nil, err
	}
	return getRegionResponse(p.header(), p.c.regionSnapshot().search(req.GetRegionKey())), nil
}

func (p *pdServer) GetPrevRegion(_ context.Context, req *pdpb.GetRegionRequest) (*pdpb.GetRegionResponse, error) {
	if err := p.check(req.GetHeader()); err != nil {
		return nil, err
	}
	return getRegionResponse(p.header(), p.c.regionSnapshot().prev(req.GetRegionKey())), nil
}

func (p *pdServer) GetRegionByID(_ context.Context, req *pdpb.GetRegionByIDRequest) (*pdpb.GetRegionResponse, error) {
	if err := p.check(req.GetHeader()); err != nil {
		return nil, err
	}
	return getRegionResponse(p.header(), p.regionByID(req.GetRegionId())), nil
}

func (p *pdServer) regionByID(id uint64) *router.Region {
	meta, leader, _, down := p.c.mock.GetRegionByID(id)
	if meta == nil {
		return nil
	}
	return &router.Region{Meta: meta, Leader: leader, DownPeers: down}
}

// ScanRegions fills both the current and the old response fields, as PD
// does for old clients.
func (p *pdServer) ScanRegions(_ context.Context, req *pdpb.ScanRegionsRequest) (*pdpb.ScanRegionsResponse, error) {
	if err := p.check(req.GetHeader()); err != nil {
		return nil, err
	}
	resp := &pdpb.ScanRegionsResponse{Header: p.header()}
	for _, r := range p.c.regionSnapshot().scan(req.GetStartKey(), req.GetEndKey(), int(req.GetLimit())) {
		resp.RegionMetas = append(resp.RegionMetas, r.Meta)
		resp.Leaders = append(resp.Leaders, leaderOrEmpty(r))
		resp.Regions = append(resp.Regions, toPDRegion(r))
	}
	return resp, nil
}

func (p *pdServer) BatchScanRegions(_ context.Context, req *pdpb.BatchScanRegionsRequest) (*pdpb.BatchScanRegionsResponse, error) {
	if err := p.check(req.GetHeader()); err != nil {
		return nil, err
	}
	regions, perr := p.c.regionSnapshot().batchScan(req.GetRanges(), int(req.GetLimit()), req.GetContainAllKeyRange())
	if perr != nil {
		return &pdpb.BatchScanRegionsResponse{Header: p.errorHeader(perr.Type, perr.Message)}, nil
	}
	resp := &pdpb.BatchScanRegionsResponse{Header: p.header(), Regions: make([]*pdpb.Region, 0, len(regions))}
	for _, r := range regions {
		resp.Regions = append(resp.Regions, toPDRegion(r))
	}
	return resp, nil
}

// QueryRegion is the router client's batched lookup stream: regions by
// key, by previous key and by id in one round trip. A key without a region
// maps to id 0, an unknown id to no region.
func (p *pdServer) QueryRegion(stream pdpb.PD_QueryRegionServer) error {
	return serveStream(p, stream.Context(), stream.Recv, func(req *pdpb.QueryRegionRequest) error {
		if err := p.check(req.GetHeader()); err != nil {
			return err
		}
		x := p.c.regionSnapshot()
		resp := &pdpb.QueryRegionResponse{Header: p.header(), RegionsById: map[uint64]*pdpb.RegionResponse{}}
		add := func(r *router.Region) uint64 {
			if r == nil {
				return 0
			}
			resp.RegionsById[r.Meta.Id] = toRegionResponse(r)
			return r.Meta.Id
		}
		for _, k := range req.GetKeys() {
			resp.KeyIdMap = append(resp.KeyIdMap, add(x.search(k)))
		}
		for _, k := range req.GetPrevKeys() {
			resp.PrevKeyIdMap = append(resp.PrevKeyIdMap, add(x.prev(k)))
		}
		var byID map[uint64]*router.Region
		if len(req.GetIds()) > 0 {
			byID = make(map[uint64]*router.Region, len(x))
			for _, r := range x {
				byID[r.Meta.Id] = r
			}
		}
		for _, id := range req.GetIds() {
			if id == 0 || resp.RegionsById[id] != nil {
				continue
			}
			if r := byID[id]; r != nil {
				resp.RegionsById[id] = toRegionResponse(r)
			} else {
				resp.RegionsById[id] = nil // PD marks an unknown id so
			}
		}
		return stream.Send(resp)
	})
}

func (p *pdServer) GetStore(_ context.Context, req *pdpb.GetStoreRequest) (*pdpb.GetStoreResponse, error) {
	if err := p.check(req.GetHeader()); err != nil {
		return nil, err
	}
	st := p.c.mock.GetStore(req.GetStoreId())
	if st == nil {
		return &pdpb.GetStoreResponse{Header: p.errorHeader(pdpb.ErrorType_UNKNOWN, fmt.Sprintf("invalid store ID %d, not found", req.GetStoreId()))}, nil
	}
	return &pdpb.GetStoreResponse{Header: p.header(), Store: p.c.withHeartbeat(st)}, nil
}

// GetAllStores lists the stores by id; each store's address is its CDC
// server, as a TiKV's address serves its gRPC services.
func (p *pdServer) GetAllStores(_ context.Context, req *pdpb.GetAllStoresRequest) (*pdpb.GetAllStoresResponse, error) {
	if err := p.check(req.GetHeader()); err != nil {
		return nil, err
	}
	var stores []*metapb.Store
	for _, st := range p.c.mock.GetAllStores() {
		if req.GetExcludeTombstoneStores() && st.GetNodeState() == metapb.NodeState_Removed {
			continue
		}
		stores = append(stores, p.c.withHeartbeat(st))
	}
	sort.Slice(stores, func(i, j int) bool { return stores[i].Id < stores[j].Id })
	return &pdpb.GetAllStoresResponse{Header: p.header(), Stores: stores}, nil
}

func (p *pdServer) GetGCSafePoint(_ context.Context, req *pdpb.GetGCSafePointRequest) (*pdpb.GetGCSafePointResponse, error) {
	if err := p.check(req.GetHeader()); err != nil {
		return nil, err
	}
	return &pdpb.GetGCSafePointResponse{Header: p.header(), SafePoint: p.c.GCSafePoint()}, nil
}

func (p *pdServer) UpdateGCSafePoint(ctx context.Context, req *pdpb.UpdateGCSafePointRequest) (*pdpb.UpdateGCSafePointResponse, error) {
	if err := p.check(req.GetHeader()); err != nil {
		return nil, err
	}
	sp, err := p.s.updateGCSafePoint(ctx, req.GetSafePoint())
	if err != nil {
		return nil, status.Error(codes.Unknown, err.Error())
	}
	return &pdpb.UpdateGCSafePointResponse{Header: p.header(), NewSafePoint: sp}, nil
}

// UpdateServiceGCSafePoint answers with the minimum service safepoint and
// its remaining TTL in seconds, as PD computes them from its TSO clock.
func (p *pdServer) UpdateServiceGCSafePoint(ctx context.Context, req *pdpb.UpdateServiceGCSafePointRequest) (*pdpb.UpdateServiceGCSafePointResponse, error) {
	if err := p.check(req.GetHeader()); err != nil {
		return nil, err
	}
	min, now, err := p.s.updateServiceSafePoint(ctx, string(req.GetServiceId()), req.GetTTL(), req.GetSafePoint())
	if err != nil {
		return nil, status.Error(codes.Unknown, err.Error())
	}
	return &pdpb.UpdateServiceGCSafePointResponse{Header: p.header(), ServiceId: []byte(min.id),
		TTL: min.expiresAt - now.Unix(), MinSafePoint: min.safePoint}, nil
}

// tikvHeartbeatInterval is how often a TiKV store heartbeats to PD.
const tikvHeartbeatInterval = 10 * time.Second

// withHeartbeat is a store as PD reports it, with LastHeartbeat (unix ns,
// PD's clock): a serving store's is its latest heartbeat, on a 10 s grid as
// TiKV sends them (the same answer to calls close together), a stopped
// one's is when it stopped, so a client tells a disconnected store the way
// it does with a real PD, which keeps its state Up.
func (c *Cluster) withHeartbeat(st *metapb.Store) *metapb.Store {
	if st == nil {
		return nil
	}
	out := *st
	now, err := c.pd.clock.now()
	if err != nil {
		now = time.Now() // unreachable: allocating one timestamp cannot fail
	}
	out.LastHeartbeat = now.Truncate(tikvHeartbeatInterval).UnixNano()
	if s := c.store(st.GetId()); s != nil {
		s.mu.Lock()
		if s.down {
			// mocktikv marks a stopped store Offline; PD keeps it Up.
			out.LastHeartbeat = s.downAt.UnixNano()
			out.State, out.NodeState = metapb.StoreState_Up, metapb.NodeState_Serving
		}
		s.mu.Unlock()
	}
	return &out
}

// GetStore and GetAllStores answer in process as the PD server does.
func (p *localPD) GetStore(ctx context.Context, id uint64) (*metapb.Store, error) {
	st, err := p.Client.GetStore(ctx, id)
	return p.c.withHeartbeat(st), err
}

func (p *localPD) GetAllStores(ctx context.Context, opts ...opt.GetStoreOption) ([]*metapb.Store, error) {
	all, err := p.Client.GetAllStores(ctx, opts...)
	for i, st := range all {
		all[i] = p.c.withHeartbeat(st)
	}
	return all, err
}
