// Package checkpoint reads what the stores have made durable of a task —
// their span checkpoints in etcd, floored at the task start and the global
// checkpoint — and computes the global checkpoint from it. A task's runner
// starts its subscriptions from it; the coordinator publishes its minimum;
// automatic recovery judges a resume by it.
package checkpoint

import (
	"context"
	"fmt"

	"github.com/tikv/client-go/v2/util/codec"

	"logbackup/meta"
	"logbackup/proto/lbpb"
	"logbackup/streamagent/spans"
)

// Spans turns a task's raw ranges into encoded spans, the form regions
// use.
func Spans(ranges []meta.Range) []spans.Span {
	out := make([]spans.Span, 0, len(ranges))
	for _, r := range ranges {
		s := spans.Span{Start: codec.EncodeBytes(nil, r.StartKey)}
		if len(r.EndKey) > 0 {
			s.End = codec.EncodeBytes(nil, r.EndKey)
		}
		out = append(out, s)
	}
	return out
}

// Known merges every store's flushed ranges: a key's checkpoint
// is the highest ts any store has durably flushed it to (data up to it is
// in storage whichever store wrote it), floored at the task start and at
// the global checkpoint. The global floor is what lets the agents take
// over a task that TiKV's own log backup ran (no span checkpoints of ours,
// central_global written by TiDB's advancer) without rescanning from the
// start: every change at or below central_global is in storage already.
func Known(ctx context.Context, m *meta.Client, task string, inc int64, covered []spans.Span, startTS uint64) (*spans.Map, error) {
	var bad []meta.CorruptRecord
	return ReadKnown(ctx, m, m.Tolerant(&bad), task, inc, covered, startTS)
}

// Reader reads what Known merges.
type Reader interface {
	GlobalCheckpoint(ctx context.Context, task string) (uint64, bool, error)
	SpanCheckpoints(ctx context.Context, task string, inc int64) (map[uint64]*lbpb.SpanCheckpoints, error)
}

// ReadKnown is Known over m, reading the global checkpoint
// through lenient (a view of m that skips a corrupt value).
func ReadKnown(ctx context.Context, m, lenient Reader, task string, inc int64, covered []spans.Span, startTS uint64) (*spans.Map, error) {
	floor := startTS
	// An unreadable or implausible central_global is no floor at all (a
	// lower floor only rescans more); status reports it and the
	// coordinator's next advance replaces it.
	g, ok, err := lenient.GlobalCheckpoint(ctx, task)
	if err != nil {
		return nil, fmt.Errorf("read global checkpoint: %w", err)
	}
	if ok {
		floor = max(floor, g)
	}
	known := spans.New(covered, floor)
	records, err := m.SpanCheckpoints(ctx, task, inc)
	if err != nil {
		return nil, fmt.Errorf("read span checkpoints: %w", err)
	}
	for _, rec := range records {
		items := make([]spans.Advanced, len(rec.Spans))
		for i, s := range rec.Spans {
			items[i] = spans.Advanced{Span: spans.Span{Start: s.StartKey, End: s.EndKey}, TS: s.Ts}
		}
		known.AdvanceAll(items) // a record can hold a span per region
	}
	return known, nil
}

// LastRecordedFlush is the flush ts of the store's last flush whose span
// checkpoints reached etcd, 0 before its first.
func LastRecordedFlush(ctx context.Context, m Reader, task string, inc int64, store uint64) (uint64, error) {
	records, err := m.SpanCheckpoints(ctx, task, inc)
	if err != nil {
		return 0, fmt.Errorf("read span checkpoints: %w", err)
	}
	return records[store].GetFlushTs(), nil
}

// Record serializes a span map.
func Record(store, flushTS uint64, m *spans.Map) *lbpb.SpanCheckpoints {
	rec := &lbpb.SpanCheckpoints{StoreId: store, FlushTs: flushTS}
	m.Each(func(s spans.Span, ts uint64) {
		rec.Spans = append(rec.Spans, &lbpb.SpanCheckpoints_Span{StartKey: s.Start, EndKey: s.End, Ts: ts})
	})
	return rec
}

// Global is the minimum over the task's whole key space of the
// known checkpoints; a range nobody has flushed holds it at the start ts.
func Global(known *spans.Map, covered []spans.Span) uint64 {
	var g uint64
	for i, s := range covered {
		ts, ok := known.Min(s)
		if !ok {
			return 0
		}
		if i == 0 || ts < g {
			g = ts
		}
	}
	return g
}

// Flushed is what the stores have made durable over the whole task t,
// read from their span checkpoints now: central_global lags by up to a
// coordinator tick, and the recovery judging a resume soon after it must
// not wait for one.
func Flushed(ctx context.Context, m *meta.Client, t *meta.TaskStatus) (uint64, error) {
	ranges, err := m.Ranges(ctx, t.Info.Name)
	if err != nil {
		return 0, err
	}
	covered := Spans(ranges)
	known, err := Known(ctx, m, t.Info.Name, t.Incarnation, covered, t.Info.StartTs)
	if err != nil {
		return 0, err
	}
	return Global(known, covered), nil
}
