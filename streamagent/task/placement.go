package task

import (
	"bytes"
	"context"
	"fmt"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/client-go/v2/util/codec"
	"github.com/tikv/pd/client/clients/router"

	"logbackup/streamagent/checkpoint"
	"logbackup/streamagent/errs"
	"logbackup/streamagent/matcher"
	"logbackup/streamagent/spans"
)

// Placement: which ranges of the task this store observes. Pending ranges
// are resolved into regions through PD; the regions this store leads get
// one subscription each on the store's EventFeed, starting from what is
// durable for their ranges. Region errors and lost streams put ranges back
// in the pending list; a reconcile tick finds leaders that moved here.
// All of it runs on the task's loop goroutine.

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

// scanRegions lists the regions overlapping sp from PD (paged).
func scanRegions(ctx context.Context, pdc PD, sp spans.Span) ([]*router.Region, error) {
	regions, err := pdc.ScanRegions(ctx, sp.Start, sp.End)
	if err != nil {
		return nil, errs.Wrap(errs.CodePD, err)
	}
	return regions, nil
}

// placePending resolves pending spans into regions through PD and
// subscribes those whose leader is this store. Ranges led elsewhere are
// left to that store's agent.
func (t *Runner) placePending(ctx context.Context) {
	defer func() {
		// Nothing left to place without a stream: the regions the store
		// could not be reached for are led elsewhere now, and its open
		// failure stops holding the retry budget (takeResult).
		if len(t.pending) == 0 && t.stream == nil {
			t.open.err = nil
		}
	}()
	if len(t.pending) == 0 || (t.stream == nil && t.env.Clock.Now().Before(t.open.retryAt)) {
		return
	}
	// Ranges that other stores flushed since we last looked start from
	// their checkpoints, not ours: fewer rows scanned twice.
	if known, err := checkpoint.ReadKnown(ctx, t.env.Meta, t.env.Lenient(), t.name, t.inc, t.covered, t.info.StartTs); err == nil {
		t.flushed.merge(known)
	}
	pending := spans.Coalesce(t.pending)
	t.pending = nil
	// Gather every leader region's pieces first, so a region overlapping
	// several pending ranges gets one subscription.
	type placement struct {
		region *metapb.Region
		pieces []spans.Span
	}
	var order []uint64
	byRegion := map[uint64]*placement{}
	for i, sp := range pending {
		regions, err := scanRegions(ctx, t.env.PD, sp)
		if err != nil {
			t.log.Debug("place range later", "err", err)
			t.pending = append(t.pending, pending[i:]...)
			break
		}
		for _, r := range regions {
			if r.Leader == nil || r.Leader.StoreId != t.env.Settings.StoreID {
				continue // led elsewhere: that store's agent takes it
			}
			piece := spans.Clip(spans.Span{Start: r.Meta.StartKey, End: r.Meta.EndKey}, sp)
			if !piece.Valid() {
				continue
			}
			pl := byRegion[r.Meta.Id]
			if pl == nil {
				pl = &placement{region: r.Meta}
				byRegion[r.Meta.Id] = pl
				order = append(order, r.Meta.Id)
			}
			pl.pieces = append(pl.pieces, piece)
		}
	}
	for i, id := range order {
		pl := byRegion[id]
		if old := t.byRegion[id]; old != nil {
			// Already observed for other pieces: one subscription for all.
			t.deregister(old)
			t.unsubscribe(old)
			pl.pieces = append(pl.pieces, old.pieces...)
		}
		if err := t.subscribe(ctx, pl.region, spans.Coalesce(pl.pieces)); err != nil {
			t.openFailed(ctx, err)
			for _, id := range order[i:] {
				t.pending = append(t.pending, byRegion[id].pieces...)
			}
			return
		}
	}
}

func (t *Runner) subscribe(ctx context.Context, region *metapb.Region, pieces []spans.Span) error {
	st, err := t.ensureStream(ctx)
	if err != nil {
		return err
	}
	cp := uint64(0)
	for i, p := range pieces {
		ts, ok := t.flushed.min(p)
		if !ok {
			ts = t.info.StartTs
		}
		if i == 0 || ts < cp {
			cp = ts
		}
	}
	t.nextReq++
	sub := &subscription{reqID: t.nextReq, region: region, pieces: pieces, m: matcher.New(cp), stream: st}
	t.subs[sub.reqID] = sub
	t.byRegion[region.Id] = sub
	t.scanning++ // a new matcher's scan has not begun
	t.env.Metrics.m.InitialScan(t.scanReason)
	hull := spans.Span{Start: pieces[0].Start, End: pieces[len(pieces)-1].End}
	err = st.stream.Send(&cdcpb.ChangeDataRequest{
		Header:   &cdcpb.Header{ClusterId: t.env.Settings.ClusterID, TicdcVersion: ticdcVersion},
		RegionId: region.Id, RegionEpoch: region.RegionEpoch,
		CheckpointTs: cp, StartKey: hull.Start, EndKey: hull.End, RequestId: sub.reqID,
		Request: &cdcpb.ChangeDataRequest_Register_{Register: &cdcpb.ChangeDataRequest_Register{}},
	})
	if err != nil {
		t.drop(sub, "send")
		t.streamLost(st)
		return fmt.Errorf("register region %d: %w", region.Id, err)
	}
	return nil
}

// drop ends a subscription; its ranges are placed again from PD, from
// their flushed checkpoints (the data it buffered stays in the builder).
func (t *Runner) drop(sub *subscription, reason string) {
	t.unsubscribe(sub)
	t.pending = append(t.pending, sub.pieces...)
	t.scanReason = reason
	t.env.Metrics.regionEvent(reason)
}

// unsubscribe forgets a subscription.
func (t *Runner) unsubscribe(sub *subscription) {
	if t.subs[sub.reqID] != sub {
		return // forgotten already
	}
	if !sub.m.Initialized() {
		t.scanning--
	}
	delete(t.subs, sub.reqID)
	if t.byRegion[sub.region.Id] == sub {
		delete(t.byRegion, sub.region.Id)
	}
}

func (t *Runner) deregister(sub *subscription) {
	_ = sub.stream.stream.Send(&cdcpb.ChangeDataRequest{RegionId: sub.region.Id, RequestId: sub.reqID,
		Request: &cdcpb.ChangeDataRequest_Deregister_{Deregister: &cdcpb.ChangeDataRequest_Deregister{}}})
}

// reconcile finds regions of the task that this store leads but does not
// observe (leaders that moved here) and queues them.
func (t *Runner) reconcile(ctx context.Context) {
	owned := spans.New(nil, 0)
	for _, sub := range t.subs {
		for _, p := range sub.pieces {
			owned.Cover(p, 1)
		}
	}
	for _, sp := range t.pending {
		owned.Cover(sp, 1)
	}
	for _, sp := range t.covered {
		regions, err := scanRegions(ctx, t.env.PD, sp)
		if err != nil {
			t.log.Debug("reconcile: scan regions", "err", err)
			return
		}
		for _, r := range regions {
			if r.Leader == nil || r.Leader.StoreId != t.env.Settings.StoreID {
				continue
			}
			piece := spans.Clip(spans.Span{Start: r.Meta.StartKey, End: r.Meta.EndKey}, sp)
			if _, ok := owned.Min(piece); !ok && piece.Valid() {
				t.pending = append(t.pending, piece)
				t.scanReason = "leader-gained"
				t.env.Metrics.regionEvent("leader-gained")
			}
		}
	}
}
