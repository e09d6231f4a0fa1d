// Package refreader is a reference CDC reader for tests: it subscribes to
// every leader region of a key span through PD and each store's EventFeed,
// follows region errors and stream loss by re-resolving from PD and
// resubscribing from the range's resolved ts, joins prewrites with commits,
// and collects every committed change. It is deliberately simple — one
// lock, a naive frontier, its own matcher, no code shared with the agent —
// so that it can serve as an oracle: the simulated cluster must give it
// exactly the committed writes, and later the agent's output can be
// compared with it. Every broken promise of the stream (a row outside the
// range, a commit below a resolved ts, a commit matching nothing, a resolved
// ts before INITIALIZED, a duplicate with other contents) is recorded as a
// Problem rather than tolerated.
package refreader

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/tikv/client-go/v2/util/codec"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/circuitbreaker"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// TiCDCVersion is the version the reader announces in request headers. TiKV
// enables store-level batched resolved ts from 4.0.8 and cluster-id checks
// from 5.3.0 by this field.
const TiCDCVersion = "8.5.0"

// Change is one committed write as CDC delivered it.
type Change struct {
	Key      []byte // raw
	StartTS  uint64
	CommitTS uint64
	Delete   bool
	Value    []byte
}

type delivery struct {
	Change
	reqID uint64
}

// Reader follows a span of keys. Create with New, then Run.
type Reader struct {
	pd        pd.Client
	clusterID uint64
	span      span // encoded keys

	mu       sync.Mutex
	resolved *frontier
	subs     map[uint64]*sub // by request id
	// streams holds each store's EventFeed streams. A stream never carries
	// two subscriptions of one region: TiKV's batched resolved ts on an
	// EventFeed (v1) stream names regions with request_id 0, so two of them
	// would be indistinguishable — and one's resolved ts could pass the
	// other's locks.
	streams  map[uint64][]*storeStream
	pending  []span
	nextReq  uint64
	changes  map[string]map[uint64]delivery // raw key → commit ts → first delivery
	dups     int
	problems []error
	rows     int
	reasons  map[string]int // resubscriptions by cause
}

type storeStream struct {
	store  uint64
	conn   *grpc.ClientConn
	stream cdcpb.ChangeData_EventFeedClient
	cancel context.CancelFunc
}

// New returns a reader of the encoded span [start, end) from checkpoint:
// it collects changes with commit_ts > checkpoint.
func New(pdc pd.Client, clusterID uint64, start, end []byte, checkpoint uint64) *Reader {
	sp := span{start, end}
	return &Reader{
		pd: pdc, clusterID: clusterID, span: sp, resolved: newFrontier(sp, checkpoint),
		subs: map[uint64]*sub{}, streams: map[uint64][]*storeStream{}, pending: []span{sp},
		changes: map[string]map[uint64]delivery{}, reasons: map[string]int{},
	}
}

// Run subscribes and follows until ctx ends.
func (r *Reader) Run(ctx context.Context) {
	// mocktikv's PD client panics on region scans without a circuit breaker.
	ctx = circuitbreaker.WithCircuitBreaker(ctx, circuitbreaker.NewCircuitBreaker("refreader", circuitbreaker.AlwaysClosedSettings))
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	defer r.closeStreams()
	for {
		r.placePending(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Resolved is the minimum resolved ts over the whole span.
func (r *Reader) Resolved() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.resolved.min(r.span)
}

// Changes returns every change collected with commit ts in (from, to],
// ordered by key then commit ts, and the number of duplicate deliveries.
func (r *Reader) Changes(from, to uint64) ([]Change, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Change
	for _, byTS := range r.changes {
		for ts, d := range byTS {
			if ts > from && ts <= to {
				out = append(out, d.Change)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if c := bytes.Compare(out[i].Key, out[j].Key); c != 0 {
			return c < 0
		}
		return out[i].CommitTS < out[j].CommitTS
	})
	return out, r.dups
}

// Problems are the broken stream promises the reader saw.
func (r *Reader) Problems() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]error(nil), r.problems...)
}

// Stats are counters for tests: rows delivered as complete changes and
// resubscriptions by cause.
func (r *Reader) Stats() (rows int, resubscriptions map[string]int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for k, v := range r.reasons {
		out[k] = v
	}
	return r.rows, out
}

// placePending resolves pending spans into regions and subscribes them.
func (r *Reader) placePending(ctx context.Context) {
	r.mu.Lock()
	pending := r.pending
	r.pending = nil
	r.mu.Unlock()
	for i, sp := range pending {
		rest, err := r.place(ctx, sp)
		if err != nil {
			r.mu.Lock()
			if rest != nil {
				r.pending = append(r.pending, *rest)
			}
			r.pending = append(r.pending, pending[i+1:]...)
			r.mu.Unlock()
			return
		}
	}
}

// place subscribes the leader of every region over sp. On failure it
// returns the part of sp not yet subscribed.
func (r *Reader) place(ctx context.Context, sp span) (*span, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	regions, err := r.pd.ScanRegions(cctx, sp.start, sp.end, 0)
	if err != nil {
		return &sp, fmt.Errorf("scan regions: %w", err)
	}
	cursor := sp.start
	for _, reg := range regions {
		piece, ok := clip(span{reg.Meta.StartKey, reg.Meta.EndKey}, span{cursor, sp.end})
		if !ok {
			continue
		}
		rest := span{cursor, sp.end}
		if !bytes.Equal(piece.start, cursor) {
			return &rest, fmt.Errorf("PD returned a hole before %x", piece.start)
		}
		if reg.Leader == nil {
			return &rest, fmt.Errorf("region %d has no leader", reg.Meta.Id)
		}
		st, err := r.stream(cctx, reg.Leader.StoreId, reg.Meta.Id)
		if err != nil {
			return &rest, err
		}
		r.mu.Lock()
		r.nextReq++
		cp := r.resolved.min(piece)
		s := &sub{reqID: r.nextReq, regionID: reg.Meta.Id, store: reg.Leader.StoreId, stream: st, span: piece,
			checkpoint: cp, resolved: cp, prewrites: map[txnKey]*cdcpb.Event_Row{}, scanned: map[txnKey]bool{}}
		s.emit = func(row *cdcpb.Event_Row) { r.recordLocked(s.reqID, row) }
		s.problem = func(err error) {
			r.problems = append(r.problems, fmt.Errorf("region %d request %d: %w", s.regionID, s.reqID, err))
		}
		r.subs[s.reqID] = s
		r.mu.Unlock()
		err = st.stream.Send(&cdcpb.ChangeDataRequest{
			Header:   &cdcpb.Header{ClusterId: r.clusterID, TicdcVersion: TiCDCVersion},
			RegionId: reg.Meta.Id, RegionEpoch: reg.Meta.RegionEpoch, CheckpointTs: cp,
			StartKey: piece.start, EndKey: piece.end, RequestId: s.reqID,
			Request: &cdcpb.ChangeDataRequest_Register_{Register: &cdcpb.ChangeDataRequest_Register{}},
		})
		if err != nil {
			r.mu.Lock()
			delete(r.subs, s.reqID) // nothing was subscribed; the caller retries rest
			r.mu.Unlock()
			return &rest, fmt.Errorf("register region %d: %w", reg.Meta.Id, err)
		}
		cursor = piece.end
		if len(cursor) == 0 || (len(sp.end) > 0 && bytes.Compare(cursor, sp.end) >= 0) {
			return nil, nil
		}
	}
	rest := span{cursor, sp.end}
	return &rest, fmt.Errorf("PD returned no region from %x", cursor)
}

// stream returns a stream to the store that has no subscription of region.
func (r *Reader) stream(ctx context.Context, store, region uint64) (*storeStream, error) {
	r.mu.Lock()
	for _, st := range r.streams[store] {
		free := true
		for _, s := range r.subs {
			if s.stream == st && s.regionID == region {
				free = false
			}
		}
		if free {
			r.mu.Unlock()
			return st, nil
		}
	}
	r.mu.Unlock()
	s, err := r.pd.GetStore(ctx, store)
	if err != nil {
		return nil, fmt.Errorf("get store %d: %w", store, err)
	}
	conn, err := grpc.NewClient(s.Address, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20))) // TiKV batches up to 6 MiB
	if err != nil {
		return nil, fmt.Errorf("dial store %d: %w", store, err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	stream, err := cdcpb.NewChangeDataClient(conn).EventFeed(sctx)
	if err != nil {
		cancel()
		conn.Close()
		return nil, fmt.Errorf("event feed of store %d: %w", store, err)
	}
	st := &storeStream{store: store, conn: conn, stream: stream, cancel: cancel}
	r.mu.Lock()
	r.streams[store] = append(r.streams[store], st)
	r.mu.Unlock()
	go r.recv(st)
	return st, nil
}

func (r *Reader) recv(st *storeStream) {
	for {
		ev, err := st.stream.Recv()
		if err != nil {
			r.streamLost(st)
			return
		}
		r.handle(st, ev)
	}
}

// streamLost fails every subscription of the stream; they are re-placed.
func (r *Reader) streamLost(st *storeStream) {
	st.cancel()
	st.conn.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	kept := r.streams[st.store][:0]
	for _, o := range r.streams[st.store] {
		if o != st {
			kept = append(kept, o)
		}
	}
	r.streams[st.store] = kept
	for id, s := range r.subs {
		if s.stream == st { // not the subscriptions of a newer stream to the same store
			r.failLocked(id, "stream-lost")
		}
	}
}

func (r *Reader) handle(st *storeStream, ev *cdcpb.ChangeDataEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(ev.Events) > 0 && ev.ResolvedTs != nil {
		r.problems = append(r.problems, fmt.Errorf("a ChangeDataEvent with both events and a resolved ts"))
	}
	for _, e := range ev.Events {
		s := r.subs[e.RequestId]
		if s == nil || s.regionID != e.RegionId || s.stream != st {
			continue // a subscription already failed
		}
		switch x := e.Event.(type) {
		case *cdcpb.Event_Entries_:
			for _, row := range x.Entries.Entries {
				s.row(row)
			}
		case *cdcpb.Event_Error:
			kind := errorKind(x.Error)
			switch kind {
			case "compatibility", "cluster-id-mismatch", "duplicate-request", "other":
				// A correct reader never earns these.
				r.problems = append(r.problems, fmt.Errorf("region %d request %d: %s error: %v", s.regionID, s.reqID, kind, x.Error))
			}
			r.failLocked(s.reqID, kind)
		case *cdcpb.Event_ResolvedTs:
			// The per-region form TiKV uses for clients older than 4.0.8.
			r.problems = append(r.problems, fmt.Errorf("region %d: per-region resolved ts to a %s client", s.regionID, TiCDCVersion))
			r.resolveLocked(s, x.ResolvedTs)
		}
	}
	if rt := ev.ResolvedTs; rt != nil {
		for _, region := range rt.Regions {
			for _, s := range r.subs {
				// request_id 0 (EventFeed without multiplexing) covers every
				// subscription of the region on this stream.
				if s.stream == st && s.regionID == region && (rt.RequestId == 0 || rt.RequestId == s.reqID) {
					r.resolveLocked(s, rt.Ts)
				}
			}
		}
	}
}

func (r *Reader) resolveLocked(s *sub, ts uint64) {
	if s.resolve(ts) {
		r.resolved.advance(s.span, ts)
	}
}

func (r *Reader) recordLocked(reqID uint64, row *cdcpb.Event_Row) {
	r.rows++
	byTS := r.changes[string(row.Key)]
	if byTS == nil {
		byTS = map[uint64]delivery{}
		r.changes[string(row.Key)] = byTS
	}
	c := Change{Key: row.Key, StartTS: row.StartTs, CommitTS: row.CommitTs, Delete: row.OpType == cdcpb.Event_Row_DELETE, Value: row.Value}
	old, ok := byTS[row.CommitTs]
	if !ok {
		byTS[row.CommitTs] = delivery{c, reqID}
		return
	}
	r.dups++
	switch {
	case old.reqID == reqID:
		r.problems = append(r.problems, fmt.Errorf("key %q at %d delivered twice on one subscription", row.Key, row.CommitTs))
	case old.StartTS != c.StartTS || old.Delete != c.Delete || !bytes.Equal(old.Value, c.Value):
		r.problems = append(r.problems, fmt.Errorf("key %q at %d re-delivered with different contents", row.Key, row.CommitTs))
	}
}

func (r *Reader) failLocked(reqID uint64, reason string) {
	s := r.subs[reqID]
	if s == nil {
		return
	}
	delete(r.subs, reqID)
	r.pending = append(r.pending, s.span)
	r.reasons[reason]++
}

func (r *Reader) closeStreams() {
	r.mu.Lock()
	streams := r.streams
	r.streams = map[uint64][]*storeStream{}
	r.mu.Unlock()
	for _, list := range streams {
		for _, st := range list {
			st.cancel()
			st.conn.Close()
		}
	}
}

// errorKind names a region error.
func errorKind(e *cdcpb.Error) string {
	switch {
	case e.NotLeader != nil:
		return "not-leader"
	case e.EpochNotMatch != nil:
		return "epoch-not-match"
	case e.RegionNotFound != nil:
		return "region-not-found"
	case e.ServerIsBusy != nil:
		return "server-is-busy"
	case e.Congested != nil:
		return "congested"
	case e.DuplicateRequest != nil:
		return "duplicate-request"
	case e.Compatibility != nil:
		return "compatibility"
	case e.ClusterIdMismatch != nil:
		return "cluster-id-mismatch"
	}
	return "other"
}

func encodeKey(raw []byte) []byte { return codec.EncodeBytes(nil, raw) }
