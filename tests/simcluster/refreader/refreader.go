// Package refreader is a reference CDC reader for tests: it subscribes to
// every leader region of a key span through PD and each store's EventFeed,
// follows region errors and stream loss by re-resolving from PD and
// resubscribing from the span's resolved ts, joins prewrites with commits,
// and collects every committed change. It is deliberately simple — one lock,
// no batching — so that it can serve as an oracle: the simulated cluster
// must give it exactly the committed writes, and later the agent's output
// can be compared with it.
package refreader

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	pd "github.com/tikv/pd/client"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"logbackup/streamagent/errs"
	"logbackup/streamagent/matcher"
	"logbackup/streamagent/spans"
	"logbackup/tests/simcluster"
)

// Change is one committed write as CDC delivered it.
type Change struct {
	Key      []byte
	StartTS  uint64
	CommitTS uint64
	Delete   bool
	Value    []byte
}

// Reader follows a span of keys. Create with New, then Run.
type Reader struct {
	pd        pd.Client
	clusterID uint64
	span      spans.Span // encoded keys

	mu       sync.Mutex
	resolved *spans.Map
	subs     map[uint64]*sub // by request id
	streams  map[uint64]*storeStream
	pending  []spans.Span
	nextReq  uint64
	changes  map[string]map[uint64]Change // raw key → commit ts → change
	dups     int
	problems []error
	// Stats for tests and benchmarks.
	Rows, Resubscribes int
	Reasons            map[string]int // resubscriptions by cause
}

type sub struct {
	reqID, regionID, store uint64
	stream                 *storeStream
	span                   spans.Span
	m                      *matcher.Matcher
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
	sp := spans.Span{Start: start, End: end}
	return &Reader{
		pd: pdc, clusterID: clusterID, span: sp,
		resolved: spans.New([]spans.Span{sp}, checkpoint),
		subs:     map[uint64]*sub{}, streams: map[uint64]*storeStream{},
		pending: []spans.Span{sp}, changes: map[string]map[uint64]Change{}, Reasons: map[string]int{},
	}
}

// Run subscribes and follows until ctx ends.
func (r *Reader) Run(ctx context.Context) {
	ctx = simcluster.WithCircuitBreaker(ctx)
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
	ts, _ := r.resolved.Min(r.span)
	return ts
}

// Changes returns every change collected with commit ts in (from, to],
// ordered by key then commit ts; and the number of duplicate deliveries.
func (r *Reader) Changes(from, to uint64) ([]Change, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Change
	for _, byTS := range r.changes {
		for ts, c := range byTS {
			if ts > from && ts <= to {
				out = append(out, c)
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

// Problems are protocol violations the reader saw (a duplicate delivery
// with a different value, a matcher error).
func (r *Reader) Problems() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]error(nil), r.problems...)
}

// placePending resolves pending spans into regions and subscribes them.
func (r *Reader) placePending(ctx context.Context) {
	r.mu.Lock()
	pending := spans.Coalesce(r.pending)
	r.pending = nil
	r.mu.Unlock()
	for i, sp := range pending {
		if err := r.place(ctx, sp); err != nil {
			r.mu.Lock()
			r.pending = append(r.pending, pending[i:]...)
			r.mu.Unlock()
			return
		}
	}
}

func (r *Reader) place(ctx context.Context, sp spans.Span) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	regions, err := r.pd.ScanRegions(cctx, sp.Start, sp.End, 0)
	if err != nil {
		return err
	}
	cursor := sp.Start
	for _, reg := range regions {
		if reg.Leader == nil {
			return fmt.Errorf("region %d has no leader", reg.Meta.Id)
		}
		piece := spans.Clip(spans.Span{Start: reg.Meta.StartKey, End: reg.Meta.EndKey}, sp)
		if bytes.Compare(piece.Start, cursor) > 0 {
			return fmt.Errorf("PD returned a hole before %q", piece.Start)
		}
		st, err := r.stream(ctx, reg.Leader.StoreId)
		if err != nil {
			return err
		}
		r.mu.Lock()
		cp, _ := r.resolved.Min(piece)
		r.nextReq++
		s := &sub{reqID: r.nextReq, regionID: reg.Meta.Id, store: reg.Leader.StoreId, stream: st, span: piece, m: matcher.New(cp)}
		r.subs[s.reqID] = s
		r.mu.Unlock()
		err = st.stream.Send(&cdcpb.ChangeDataRequest{
			Header: &cdcpb.Header{ClusterId: r.clusterID}, RegionId: reg.Meta.Id, RegionEpoch: reg.Meta.RegionEpoch,
			CheckpointTs: cp, StartKey: piece.Start, EndKey: piece.End, RequestId: s.reqID,
			Request: &cdcpb.ChangeDataRequest_Register_{Register: &cdcpb.ChangeDataRequest_Register{}},
		})
		if err != nil {
			r.fail(s.reqID, "send")
			return err
		}
		cursor = piece.End
		if len(cursor) == 0 {
			break
		}
	}
	return nil
}

func (r *Reader) stream(ctx context.Context, store uint64) (*storeStream, error) {
	r.mu.Lock()
	st := r.streams[store]
	r.mu.Unlock()
	if st != nil {
		return st, nil
	}
	s, err := r.pd.GetStore(ctx, store)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(s.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.Background())
	stream, err := cdcpb.NewChangeDataClient(conn).EventFeed(sctx)
	if err != nil {
		cancel()
		conn.Close()
		return nil, err
	}
	st = &storeStream{store: store, conn: conn, stream: stream, cancel: cancel}
	r.mu.Lock()
	r.streams[store] = st
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
		r.handle(ev)
	}
}

// streamLost fails every subscription of the stream; they are re-placed.
func (r *Reader) streamLost(st *storeStream) {
	st.cancel()
	st.conn.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.streams[st.store] == st {
		delete(r.streams, st.store)
	}
	for id, s := range r.subs {
		if s.stream == st { // not the subscriptions of a newer stream to the same store
			r.failLocked(id, "stream-lost")
		}
	}
}

func (r *Reader) handle(ev *cdcpb.ChangeDataEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range ev.Events {
		s := r.subs[e.RequestId]
		if s == nil || s.regionID != e.RegionId {
			continue // a subscription already failed
		}
		switch x := e.Event.(type) {
		case *cdcpb.Event_Entries_:
			err := s.m.Rows(x.Entries.Entries, func(row *cdcpb.Event_Row) { r.record(row) })
			if err != nil {
				r.problems = append(r.problems, fmt.Errorf("region %d: %w", s.regionID, err))
				r.failLocked(s.reqID, "matcher")
			}
		case *cdcpb.Event_Error:
			r.failLocked(s.reqID, errs.RegionErrorKind(x.Error))
		}
	}
	if rt := ev.ResolvedTs; rt != nil {
		s := r.subs[rt.RequestId]
		if s == nil {
			return
		}
		for _, id := range rt.Regions {
			if id == s.regionID && s.m.Resolve(rt.Ts) {
				r.resolved.Advance(s.span, rt.Ts)
			}
		}
	}
}

func (r *Reader) record(row *cdcpb.Event_Row) {
	r.Rows++
	byTS := r.changes[string(row.Key)]
	if byTS == nil {
		byTS = map[uint64]Change{}
		r.changes[string(row.Key)] = byTS
	}
	c := Change{Key: row.Key, StartTS: row.StartTs, CommitTS: row.CommitTs, Delete: row.OpType == cdcpb.Event_Row_DELETE, Value: row.Value}
	if old, ok := byTS[row.CommitTs]; ok {
		r.dups++
		if old.StartTS != c.StartTS || old.Delete != c.Delete || !bytes.Equal(old.Value, c.Value) {
			r.problems = append(r.problems, fmt.Errorf("key %q at %d delivered twice with different contents", row.Key, row.CommitTs))
		}
		return
	}
	byTS[row.CommitTs] = c
}

func (r *Reader) fail(reqID uint64, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failLocked(reqID, reason)
}

func (r *Reader) failLocked(reqID uint64, reason string) {
	s := r.subs[reqID]
	if s == nil {
		return
	}
	delete(r.subs, reqID)
	r.pending = append(r.pending, s.span)
	r.Resubscribes++
	r.Reasons[reason]++
}

func (r *Reader) closeStreams() {
	r.mu.Lock()
	streams := r.streams
	r.streams = map[uint64]*storeStream{}
	r.mu.Unlock()
	for _, st := range streams {
		st.cancel()
		st.conn.Close()
	}
}
