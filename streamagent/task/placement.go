package task

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/client-go/v2/util/codec"
	"github.com/tikv/pd/client/clients/router"

	"logbackup/streamagent/checkpoint"
	"logbackup/streamagent/errs"
	"logbackup/streamagent/matcher"
	"logbackup/streamagent/spans"
)

// placement is which ranges of the task this store observes. Pending
// ranges are resolved into regions through PD; the regions this store
// leads get one subscription each on the store's EventFeed (feed),
// starting from what is durable for their ranges. Region errors and lost
// streams put ranges back in the pending list; a reconcile tick finds
// leaders that moved here. It lives on the task's loop goroutine; of its
// state only durable is shared (with the flusher, which advances it).
type placement struct {
	env     *Env
	task    taskIdent
	log     *slog.Logger
	covered []spans.Span
	durable *durableMap
	feed    *feed

	subs     map[uint64]*subscription // by request id
	byRegion map[uint64]*subscription // at most one per region
	pending  []spans.Span
	// scanning counts the subscriptions whose initial scan is not over,
	// kept as they change (subscribe, unsubscribe, scanned): the stats are
	// published every 50 ms, and counting 100,000 matchers each time was
	// a fifth of the process's CPU at 100,000 regions.
	scanning int
	// scanReason is why the next placements rescan: "task-start" first,
	// then the reason of the latest drop or "leader-gained".
	scanReason string
	nextReq    uint64
}

func newPlacement(env *Env, task taskIdent, covered []spans.Span, durable *durableMap, f *feed) *placement {
	return &placement{env: env, task: task, log: env.Log, covered: covered, durable: durable, feed: f,
		subs: map[uint64]*subscription{}, byRegion: map[uint64]*subscription{},
		pending: append([]spans.Span(nil), covered...), scanReason: "task-start"}
}

// subscription is one region registered on this store's EventFeed. A
// region holds at most one: TiKV's batched resolved ts names regions, not
// requests (request_id 0 on an EventFeed stream), so two subscriptions of
// one region could not tell their resolved ts apart. When the region
// overlaps several task ranges the request covers their hull and rows
// outside the pieces are skipped.
type subscription struct {
	reqID  uint64
	region *metapb.Region
	pieces []spans.Span // encoded, inside the region and the task, sorted
	m      *matcher.Matcher
	stream *feedStream
}

// contains reports whether a row's raw key lies in one of the pieces.
func (s *subscription) contains(rawKey []byte) bool {
	if len(s.pieces) == 1 {
		return true // the request range is the piece: TiKV sends nothing else
	}
	ek := codec.EncodeBytes(nil, rawKey)
	for _, p := range s.pieces {
		if bytes.Compare(ek, p.Start) >= 0 && (len(p.End) == 0 || bytes.Compare(ek, p.End) < 0) {
			return true
		}
	}
	return false
}

// deregister tells the store to stop sending the subscription's changes.
func (s *subscription) deregister() {
	_ = s.stream.stream.Send(&cdcpb.ChangeDataRequest{RegionId: s.region.Id, RequestId: s.reqID,
		Request: &cdcpb.ChangeDataRequest_Deregister_{Deregister: &cdcpb.ChangeDataRequest_Deregister{}}})
}

// scanRegions lists the regions overlapping sp from PD (paged).
func scanRegions(ctx context.Context, pdc PD, sp spans.Span) ([]*router.Region, error) {
	regions, err := pdc.ScanRegions(ctx, sp.Start, sp.End)
	if err != nil {
		return nil, errs.Wrap(errs.CodePD, err)
	}
	return regions, nil
}

// place resolves pending spans into regions through PD and subscribes
// those whose leader is this store. Ranges led elsewhere are left to that
// store's agent. The error is a failure to subscribe (the ranges not
// placed are pending again); a failure to reach PD only leaves them
// pending for the next tick.
func (p *placement) place(ctx context.Context) error {
	if len(p.pending) == 0 {
		return nil
	}
	// Ranges that other stores flushed since we last looked start from
	// their checkpoints, not ours: fewer rows scanned twice.
	if known, err := checkpoint.ReadKnown(ctx, p.env.Meta, p.env.Lenient(), p.task.name, p.task.inc, p.covered, p.task.info.StartTs); err == nil {
		p.durable.merge(known)
	}
	pending := spans.Coalesce(p.pending)
	p.pending = nil
	// Gather every leader region's pieces first, so a region overlapping
	// several pending ranges gets one subscription.
	type placed struct {
		region *metapb.Region
		pieces []spans.Span
	}
	var order []uint64
	byRegion := map[uint64]*placed{}
	for i, sp := range pending {
		regions, err := scanRegions(ctx, p.env.PD, sp)
		if err != nil {
			p.log.Debug("place range later", "err", err)
			p.pending = append(p.pending, pending[i:]...)
			break
		}
		for _, r := range regions {
			if r.Leader == nil || r.Leader.StoreId != p.env.Settings.StoreID {
				continue // led elsewhere: that store's agent takes it
			}
			piece := spans.Clip(spans.Span{Start: r.Meta.StartKey, End: r.Meta.EndKey}, sp)
			if !piece.Valid() {
				continue
			}
			pl := byRegion[r.Meta.Id]
			if pl == nil {
				pl = &placed{region: r.Meta}
				byRegion[r.Meta.Id] = pl
				order = append(order, r.Meta.Id)
			}
			pl.pieces = append(pl.pieces, piece)
		}
	}
	for i, id := range order {
		pl := byRegion[id]
		if old := p.byRegion[id]; old != nil {
			// Already observed for other pieces: one subscription for all.
			old.deregister()
			p.unsubscribe(old)
			pl.pieces = append(pl.pieces, old.pieces...)
		}
		if err := p.subscribe(ctx, pl.region, spans.Coalesce(pl.pieces)); err != nil {
			for _, id := range order[i:] {
				p.pending = append(p.pending, byRegion[id].pieces...)
			}
			return err
		}
	}
	return nil
}

func (p *placement) subscribe(ctx context.Context, region *metapb.Region, pieces []spans.Span) error {
	st, err := p.feed.ensure(ctx)
	if err != nil {
		return err
	}
	cp := uint64(0)
	for i, piece := range pieces {
		ts, ok := p.durable.min(piece)
		if !ok {
			ts = p.task.info.StartTs
		}
		if i == 0 || ts < cp {
			cp = ts
		}
	}
	p.nextReq++
	sub := &subscription{reqID: p.nextReq, region: region, pieces: pieces, m: matcher.New(cp), stream: st}
	p.subs[sub.reqID] = sub
	p.byRegion[region.Id] = sub
	p.scanning++ // a new matcher's scan has not begun
	p.env.Metrics.m.InitialScan(p.scanReason)
	hull := spans.Span{Start: pieces[0].Start, End: pieces[len(pieces)-1].End}
	err = st.stream.Send(&cdcpb.ChangeDataRequest{
		Header:   &cdcpb.Header{ClusterId: p.env.Settings.ClusterID, TicdcVersion: ticdcVersion},
		RegionId: region.Id, RegionEpoch: region.RegionEpoch,
		CheckpointTs: cp, StartKey: hull.Start, EndKey: hull.End, RequestId: sub.reqID,
		Request: &cdcpb.ChangeDataRequest_Register_{Register: &cdcpb.ChangeDataRequest_Register{}},
	})
	if err != nil {
		p.drop(sub, "send")
		p.streamLost(st)
		return fmt.Errorf("register region %d: %w", region.Id, err)
	}
	return nil
}

// lookup is the live subscription a region's event names, if any.
func (p *placement) lookup(reqID, regionID uint64) *subscription {
	sub := p.subs[reqID]
	if sub == nil || sub.region.Id != regionID {
		return nil // a subscription we already dropped
	}
	return sub
}

// scanned notes that a subscription's initial scan ended.
func (p *placement) scanned() { p.scanning-- }

// drop ends a subscription; its ranges are placed again from PD, from
// their flushed checkpoints (the data it buffered stays in the builder).
func (p *placement) drop(sub *subscription, reason string) {
	p.unsubscribe(sub)
	p.pending = append(p.pending, sub.pieces...)
	p.scanReason = reason
	p.env.Metrics.regionEvent(reason)
}

// unsubscribe forgets a subscription.
func (p *placement) unsubscribe(sub *subscription) {
	if p.subs[sub.reqID] != sub {
		return // forgotten already
	}
	if !sub.m.Initialized() {
		p.scanning--
	}
	delete(p.subs, sub.reqID)
	if p.byRegion[sub.region.Id] == sub {
		delete(p.byRegion, sub.region.Id)
	}
}

// streamLost closes a broken stream and fails every subscription on it.
func (p *placement) streamLost(st *feedStream) {
	p.feed.lost(st)
	for _, sub := range p.subs {
		if sub.stream == st {
			p.drop(sub, "stream-lost")
		}
	}
}

// restartAll ends every subscription and places its ranges again, from
// what is durable.
func (p *placement) restartAll(reason string) {
	for _, sub := range p.subs {
		sub.deregister()
		p.drop(sub, reason)
	}
}

// forget drops every subscription without placing anything again: the
// task is over.
func (p *placement) forget() {
	p.subs, p.byRegion, p.scanning = nil, nil, 0
}

// freeze fills a flush job from the subscriptions: each initialized one's
// resolved ts (every row at or below it is in the builder swapped out with
// the job), and every observed piece (the store checkpoint is their
// minimum).
func (p *placement) freeze(job *flushJob) {
	minResolved := uint64(0)
	for _, sub := range p.subs {
		job.observed = append(job.observed, sub.pieces...)
		if !sub.m.Initialized() {
			continue
		}
		r := sub.m.ResolvedTS()
		for _, piece := range sub.pieces {
			job.frozen = append(job.frozen, frozen{span: piece, region: sub.region, ts: r})
		}
		if minResolved == 0 || r < minResolved {
			minResolved = r
		}
	}
	if minResolved > 0 {
		job.resolved = minResolved
	}
}

// reconcile finds regions of the task that this store leads but does not
// observe (leaders that moved here) and queues them.
func (p *placement) reconcile(ctx context.Context) {
	owned := spans.New(nil, 0)
	for _, sub := range p.subs {
		for _, piece := range sub.pieces {
			owned.Cover(piece, 1)
		}
	}
	for _, sp := range p.pending {
		owned.Cover(sp, 1)
	}
	for _, sp := range p.covered {
		regions, err := scanRegions(ctx, p.env.PD, sp)
		if err != nil {
			p.log.Debug("reconcile: scan regions", "err", err)
			return
		}
		for _, r := range regions {
			if r.Leader == nil || r.Leader.StoreId != p.env.Settings.StoreID {
				continue
			}
			piece := spans.Clip(spans.Span{Start: r.Meta.StartKey, End: r.Meta.EndKey}, sp)
			if _, ok := owned.Min(piece); !ok && piece.Valid() {
				p.pending = append(p.pending, piece)
				p.scanReason = "leader-gained"
				p.env.Metrics.regionEvent("leader-gained")
			}
		}
	}
}
