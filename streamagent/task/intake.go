package task

import (
	"fmt"

	"github.com/pingcap/kvproto/pkg/cdcpb"

	"logbackup/streamagent/errs"
	"logbackup/streamagent/logfile"
	"logbackup/streamagent/matcher"
	"logbackup/streamagent/retry"
)

// intake takes the stream's events: rows through the region's matcher into
// the builder, resolved ts into the matchers, region errors into
// placement. It runs on the task's loop goroutine.
type intake struct {
	env     *Env
	regions *placement
	// rows and byts are the changes taken since the last report.
	rows, byts int64
}

// counted hands over the changes taken since the last call.
func (in *intake) counted() (rows, byts int64) {
	rows, byts, in.rows, in.byts = in.rows, in.byts, 0, 0
	return rows, byts
}

// handle takes one event into b. A non-nil result is a fatal error: the
// task stops.
func (in *intake) handle(e streamEvent, b *logfile.Builder) *retry.Fatal {
	storeID := in.env.Settings.StoreID
	if e.err != nil {
		if in.regions.feed.current(e.stream) { // not the end of a stream we closed ourselves
			info := errs.Classify(e.err)
			in.env.Metrics.CountError(string(info.Code))
			if info.Class == errs.Fatal {
				// E.g. Unimplemented: this TiKV has no CDC service we can
				// use. Retrying forever would hide it.
				return &retry.Fatal{Info: info, Err: fmt.Errorf("event feed of store %d: %w", storeID, e.err)}
			}
		}
		in.regions.streamLost(e.stream)
		return nil
	}
	// The rows refer to the message's buffer (feedcodec): once the message
	// is handled, the matchers copy out the prewrites they keep.
	var matched []*matcher.Matcher
	defer func() {
		for _, m := range matched {
			m.Own()
		}
	}()
	m := in.env.Metrics.m
	for _, ev := range e.ev.Events {
		sub := in.regions.lookup(ev.RequestId, ev.RegionId)
		if sub == nil {
			continue // a subscription we already dropped
		}
		switch x := ev.Event.(type) {
		case *cdcpb.Event_Entries_:
			m.TiKV.HandleKVBatch.Observe(float64(len(x.Entries.Entries)))
			matched = append(matched, sub.m)
			scanned := sub.m.Initialized()
			err := sub.m.Rows(x.Entries.Entries, func(row *cdcpb.Event_Row) {
				if !sub.contains(row.Key) {
					return // between two task ranges in one region
				}
				b.Add(logfile.RegionInfo{ID: sub.region.Id, StartKey: sub.region.StartKey, EndKey: sub.region.EndKey, Epoch: sub.region.RegionEpoch},
					logfile.Change{Key: row.Key, Value: row.Value, StartTS: row.StartTs, CommitTS: row.CommitTs, Op: opOf(row)})
				n := len(row.Key) + len(row.Value)
				m.EventsIn.Inc()
				m.BytesIn.Add(float64(n))
				in.rows++
				in.byts += int64(n)
			})
			if !scanned && sub.m.Initialized() {
				in.regions.scanned()
			}
			if err != nil {
				in.env.Log.Warn("region stream broke its promises; rescanning", "region", sub.region.Id, "err", err)
				sub.deregister()
				in.regions.drop(sub, "matcher")
			}
		case *cdcpb.Event_Error:
			// Classified where it arrives: a region moving is routine, but
			// another cluster's TiKV or an incompatible one never heals.
			rerr := &errs.RegionError{RegionID: sub.region.Id, Err: x.Error}
			info := errs.Classify(rerr)
			in.env.Metrics.CountError(string(info.Code))
			if info.Class == errs.Fatal {
				return &retry.Fatal{Info: info, Err: fmt.Errorf("store %d: %w", storeID, rerr)}
			}
			in.regions.drop(sub, errs.RegionErrorKind(x.Error))
		case *cdcpb.Event_ResolvedTs:
			// The per-region form TiKV sends clients older than 4.0.8.
			sub.m.Resolve(x.ResolvedTs)
		}
	}
	if rt := e.ev.ResolvedTs; rt != nil {
		for _, id := range rt.Regions {
			// request_id 0 (EventFeed without multiplexing) names the
			// region's subscription on this stream, whatever its request.
			sub := in.regions.byRegion[id]
			if sub != nil && sub.stream == e.stream && (rt.RequestId == 0 || rt.RequestId == sub.reqID) {
				sub.m.Resolve(rt.Ts)
			}
		}
	}
	return nil
}

func opOf(row *cdcpb.Event_Row) logfile.Op {
	if row.OpType == cdcpb.Event_Row_DELETE {
		return logfile.OpDelete
	}
	return logfile.OpPut
}
