package task

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/pingcap/kvproto/pkg/cdcpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"logbackup/storage"
	"logbackup/streamagent/errs"
	"logbackup/streamagent/feedcodec"
	"logbackup/streamagent/logfile"
	"logbackup/streamagent/matcher"
	"logbackup/streamagent/retry"
)

// Intake: the EventFeed stream to this agent's own store, and what the
// loop does with each event — rows through the region's matcher into the
// builder, resolved ts into the matchers, region errors into placement.

// ticdcVersion is the client version the agent announces in request
// headers. TiKV enables store-level batched resolved ts for clients at or
// above 4.0.8 and checks cluster ids from 5.3.0 (FeatureGate).
const ticdcVersion = "8.5.0"

// feedStream is the EventFeed stream to this agent's own store.
type feedStream struct {
	conn   *grpc.ClientConn
	stream cdcpb.ChangeData_EventFeedClient
	cancel context.CancelFunc
}

// streamEvent is what the receive goroutine hands the loop.
type streamEvent struct {
	stream *feedStream
	ev     *cdcpb.ChangeDataEvent
	err    error
	// held is the intake window this message holds until the loop has
	// handled it.
	held int64
}

// intakeWindow bounds the bytes of received messages waiting for the loop:
// without it the receiver queued up to 256 whole messages, hundreds of
// MiB in a burst, beside the memory quota (BenchmarkBurstRSS).
const intakeWindow = 8 << 20

// streamOpenTimeout bounds opening the EventFeed stream to the store.
const streamOpenTimeout = 10 * time.Second

// openError is a failure to open the store's EventFeed stream: the TiKV
// beside the agent cannot be reached. It counts against the retry budget
// (openFailed), with the address in the report.
type openError struct {
	addr string
	err  error
}

func (e *openError) Error() string { return e.err.Error() }
func (e *openError) Unwrap() error { return e.err }

func (t *Runner) ensureStream(ctx context.Context) (*feedStream, error) {
	if t.stream != nil {
		return t.stream, nil
	}
	// A removed store is the agent's to handle (its store.go): OwnStore stops
	// it, never a nil store dereferenced here.
	store, err := t.env.PD.OwnStore(ctx)
	if err != nil {
		return nil, err
	}
	creds := insecure.NewCredentials()
	if tc := t.env.Settings.TLS; tc != nil {
		creds = credentials.NewTLS(tc)
	}
	conn, err := grpc.NewClient(store.Address, grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20), grpc.ForceCodecV2(feedcodec.New())))
	if err != nil {
		return nil, &openError{addr: store.Address, err: fmt.Errorf("dial store %d at %s: %w", t.env.Settings.StoreID, store.Address, err)}
	}
	// grpc.NewClient connects lazily: an unreachable TiKV shows first
	// here, when the stream needs a transport (fails fast once the
	// connection attempt failed). The Timer bounds a black-holed address;
	// the stream itself lives on with sctx.
	sctx, scancel := context.WithCancel(ctx)
	openTimer := time.AfterFunc(streamOpenTimeout, scancel)
	stream, err := cdcpb.NewChangeDataClient(conn).EventFeed(sctx)
	fired := !openTimer.Stop()
	if err != nil || fired {
		scancel()
		conn.Close()
		if fired && ctx.Err() == nil {
			err = fmt.Errorf("no connection within %s: %w", streamOpenTimeout, context.DeadlineExceeded)
		}
		return nil, &openError{addr: store.Address, err: fmt.Errorf("open the event feed of store %d at %s: %w", t.env.Settings.StoreID, store.Address, err)}
	}
	fs := &feedStream{conn: conn, stream: stream, cancel: scancel}
	t.stream = fs
	t.opened()
	// The receiver ends with the stream (closeStream, or ctx); run joins it.
	events, intake := t.events, t.intake
	t.receivers.Go(func() error {
		for {
			var msg feedcodec.Received
			err := stream.RecvMsg(&msg)
			ev := msg.Event
			if err != nil {
				ev = nil // as Recv: no event with an error
			}
			var held int64
			if ev != nil {
				// A message larger than the window takes all of it.
				held = min(int64(msg.WireLen), intakeWindow)
				if aerr := intake.Acquire(sctx, held); aerr != nil {
					return nil
				}
			}
			select {
			case events <- streamEvent{stream: fs, ev: ev, err: err, held: held}:
			case <-sctx.Done():
				intake.Release(held)
				return nil
			}
			if err != nil {
				return nil
			}
		}
	})
	return fs, nil
}

func (t *Runner) closeStream() {
	if t.stream != nil {
		t.stream.cancel()
		t.stream.conn.Close()
		t.stream = nil
	}
}

// streamLost fails every subscription of a broken stream.
func (t *Runner) streamLost(st *feedStream) {
	if t.stream == st {
		t.closeStream()
	}
	for _, sub := range t.subs {
		if sub.stream == st {
			t.drop(sub, "stream-lost")
		}
	}
}

func (t *Runner) handle(e streamEvent) {
	if e.err != nil {
		if t.stream == e.stream { // not the end of a stream we closed ourselves
			info := errs.Classify(e.err)
			t.env.Metrics.CountError(string(info.Code))
			if info.Class == errs.Fatal {
				// E.g. Unimplemented: this TiKV has no CDC service we can
				// use. Retrying forever would hide it.
				t.fatal = &retry.Fatal{Info: info, Err: fmt.Errorf("event feed of store %d: %w", t.env.Settings.StoreID, e.err)}
				return
			}
		}
		t.streamLost(e.stream)
		return
	}
	// The rows refer to the message's buffer (feedcodec): once the message
	// is handled, the matchers copy out the prewrites they keep.
	var matched []*matcher.Matcher
	defer func() {
		for _, m := range matched {
			m.Own()
		}
	}()
	for _, ev := range e.ev.Events {
		sub := t.subs[ev.RequestId]
		if sub == nil || sub.region.Id != ev.RegionId {
			continue // a subscription we already dropped
		}
		switch x := ev.Event.(type) {
		case *cdcpb.Event_Entries_:
			t.env.Metrics.m.TiKV.HandleKVBatch.Observe(float64(len(x.Entries.Entries)))
			matched = append(matched, sub.m)
			scanned := sub.m.Initialized()
			err := sub.m.Rows(x.Entries.Entries, func(row *cdcpb.Event_Row) {
				if !sub.contains(row.Key) {
					return // between two task ranges in one region
				}
				t.builder.Add(logfile.RegionInfo{ID: sub.region.Id, StartKey: sub.region.StartKey, EndKey: sub.region.EndKey, Epoch: sub.region.RegionEpoch},
					logfile.Change{Key: row.Key, Value: row.Value, StartTS: row.StartTs, CommitTS: row.CommitTs, Op: opOf(row)})
				t.env.Metrics.m.EventsIn.Inc()
				t.env.Metrics.m.BytesIn.Add(float64(len(row.Key) + len(row.Value)))
				t.progress.received(len(row.Key) + len(row.Value))
			})
			if !scanned && sub.m.Initialized() {
				t.scanning--
			}
			if err != nil {
				t.log.Warn("region stream broke its promises; rescanning", "region", sub.region.Id, "err", err)
				t.deregister(sub)
				t.drop(sub, "matcher")
			}
		case *cdcpb.Event_Error:
			// Classified where it arrives: a region moving is routine, but
			// another cluster's TiKV or an incompatible one never heals.
			rerr := &errs.RegionError{RegionID: sub.region.Id, Err: x.Error}
			info := errs.Classify(rerr)
			t.env.Metrics.CountError(string(info.Code))
			if info.Class == errs.Fatal {
				t.fatal = &retry.Fatal{Info: info, Err: fmt.Errorf("store %d: %w", t.env.Settings.StoreID, rerr)}
				return
			}
			t.drop(sub, errs.RegionErrorKind(x.Error))
		case *cdcpb.Event_ResolvedTs:
			// The per-region form TiKV sends clients older than 4.0.8.
			sub.m.Resolve(x.ResolvedTs)
		}
	}
	if rt := e.ev.ResolvedTs; rt != nil {
		for _, id := range rt.Regions {
			// request_id 0 (EventFeed without multiplexing) names the
			// region's subscription on this stream, whatever its request.
			sub := t.byRegion[id]
			if sub != nil && sub.stream == e.stream && (rt.RequestId == 0 || rt.RequestId == sub.reqID) {
				sub.m.Resolve(rt.Ts)
			}
		}
	}
}

func opOf(row *cdcpb.Event_Row) logfile.Op {
	if row.OpType == cdcpb.Event_Row_DELETE {
		return logfile.OpDelete
	}
	return logfile.OpPut
}

// openWarnEvery rate-limits the WARN about a store that cannot be reached.
const openWarnEvery = 30 * time.Second

// openState is a task loop's record of failures to open its store's
// EventFeed stream.
type openState struct {
	err     error     // the latest failure; nil once a stream opened
	retryAt time.Time // no new attempt before then
	warned  time.Time // the last WARN
	backoff *backoff.ExponentialBackOff
}

// openFailed takes a failed placement. A stream that could not be opened
// (the TiKV beside the agent is unreachable) is a retryable failure like a
// failed flush: counted, reported as RETRYING with the address and the
// error, logged at most every openWarnEvery, retried with backoff, and
// fatal once the retry budget is spent. Anything else is retried on the
// next placement tick.
func (t *Runner) openFailed(ctx context.Context, err error) {
	var oe *openError
	if !errors.As(err, &oe) || ctx.Err() != nil {
		t.log.Debug("place range later", "err", err)
		return
	}
	if t.open.backoff == nil {
		t.open.backoff = retry.NewBackoff(time.Second, 30*time.Second)
	}
	t.open.err = err
	if f := t.env.noteError(&t.budget, err); f != nil {
		t.fatal = f
		return
	}
	t.env.retried(err)
	t.progress.lastErr = storage.Redact(err.Error())
	wait := t.open.backoff.NextBackOff()
	now := t.env.Clock.Now()
	t.open.retryAt = now.Add(wait)
	if now.Sub(t.open.warned) >= openWarnEvery {
		t.open.warned = now
		t.log.Warn("cannot reach this agent's TiKV; retrying", "address", oe.addr, "err", storage.Redact(err.Error()),
			"failures", t.budget.Failures, "in", wait.Round(time.Millisecond))
	}
}

// opened notes a stream opened after failures.
func (t *Runner) opened() {
	if t.open.err != nil {
		t.log.Info("this agent's TiKV answers again", "failures", t.budget.Failures)
	}
	t.open.err, t.open.warned = nil, time.Time{}
	if t.open.backoff != nil {
		t.open.backoff.Reset()
	}
}
