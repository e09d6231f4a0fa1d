package task

import (
	"context"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/pingcap/kvproto/pkg/cdcpb"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"logbackup/streamagent/feedcodec"
	"logbackup/streamagent/retry"
)

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

// feed is the loop's EventFeed stream to its own store: opened when a
// subscription needs it, its receive goroutine (joined by Run through
// receivers) handing messages to events within the intake window, and the
// record of failures to open it.
type feed struct {
	env    *Env
	stream *feedStream
	open   openState
	events chan streamEvent
	window *semaphore.Weighted // bytes of received messages not yet handled
	// receivers are the stream receive goroutines, joined by Run.
	receivers *errgroup.Group
}

func newFeed(env *Env) *feed {
	return &feed{env: env, events: make(chan streamEvent, 256), window: semaphore.NewWeighted(intakeWindow)}
}

// ensure returns the open stream, opening it first if there is none.
func (f *feed) ensure(ctx context.Context) (*feedStream, error) {
	if f.stream != nil {
		return f.stream, nil
	}
	// A removed store is the agent's to handle (its store.go): OwnStore stops
	// it, never a nil store dereferenced here.
	store, err := f.env.PD.OwnStore(ctx)
	if err != nil {
		return nil, err
	}
	storeID := f.env.Settings.StoreID
	creds := insecure.NewCredentials()
	if tc := f.env.Settings.TLS; tc != nil {
		creds = credentials.NewTLS(tc)
	}
	conn, err := grpc.NewClient(store.Address, grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20), grpc.ForceCodecV2(feedcodec.New())))
	if err != nil {
		return nil, &openError{addr: store.Address, err: fmt.Errorf("dial store %d at %s: %w", storeID, store.Address, err)}
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
		return nil, &openError{addr: store.Address, err: fmt.Errorf("open the event feed of store %d at %s: %w", storeID, store.Address, err)}
	}
	fs := &feedStream{conn: conn, stream: stream, cancel: scancel}
	f.stream = fs
	f.opened()
	// The receiver ends with the stream (close, or ctx); Run joins it.
	events, window := f.events, f.window
	f.receivers.Go(func() error {
		mem := newMemGauge()
		for {
			if waited := mem.waitForCollector(sctx); waited > 0 {
				f.env.Metrics.m.MemoryWait.Add(waited.Seconds())
			}
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
				if aerr := window.Acquire(sctx, held); aerr != nil {
					return nil
				}
			}
			select {
			case events <- streamEvent{stream: fs, ev: ev, err: err, held: held}:
			case <-sctx.Done():
				window.Release(held)
				return nil
			}
			if err != nil {
				return nil
			}
		}
	})
	return fs, nil
}

// close ends the open stream, if any.
func (f *feed) close() {
	if f.stream != nil {
		f.stream.cancel()
		f.stream.conn.Close()
		f.stream = nil
	}
}

// lost closes st if it is the open stream (a stream closed earlier is
// gone already).
func (f *feed) lost(st *feedStream) {
	if f.stream == st {
		f.close()
	}
}

// current reports whether st is the open stream: the end of one closed by
// the loop itself is no failure.
func (f *feed) current(st *feedStream) bool { return f.stream == st }

// openWarnEvery rate-limits the WARN about a store that cannot be reached.
const openWarnEvery = 30 * time.Second

// openState is the feed's record of failures to open its stream.
type openState struct {
	err      error     // the latest failure; nil once a stream opened
	failures int       // since the stream last opened
	retryAt  time.Time // no new attempt before then
	warned   time.Time // the last WARN
	backoff  *backoff.ExponentialBackOff
}

// waiting reports whether a new attempt to open the stream must wait.
func (f *feed) waiting(now time.Time) bool { return f.stream == nil && now.Before(f.open.retryAt) }

// failed records a failure to open the stream: the time of the next
// attempt (backing off) and whether to WARN of it now (at most every
// openWarnEvery).
func (f *feed) failed(now time.Time, err error) (wait time.Duration, warn bool) {
	if f.open.backoff == nil {
		f.open.backoff = retry.NewBackoff(time.Second, 30*time.Second)
	}
	f.open.err = err
	f.open.failures++
	wait = f.open.backoff.NextBackOff()
	f.open.retryAt = now.Add(wait)
	if now.Sub(f.open.warned) >= openWarnEvery {
		f.open.warned = now
		warn = true
	}
	return wait, warn
}

// opened notes a stream opened after failures.
func (f *feed) opened() {
	if f.open.err != nil {
		f.env.Log.Info("this agent's TiKV answers again", "failures", f.open.failures)
	}
	f.open.err, f.open.failures, f.open.warned = nil, 0, time.Time{}
	if f.open.backoff != nil {
		f.open.backoff.Reset()
	}
}
