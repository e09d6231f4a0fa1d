package simcluster

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

const (
	// respMaxBytes bounds one ChangeDataEvent, as TiKV's EventBatcher does
	// (CDC_RESP_MAX_BYTES, 6 MiB). That is past gRPC's default 4 MiB receive
	// limit: a client must raise MaxCallRecvMsgSize, as TiCDC does.
	respMaxBytes = 6 << 20
	// scanEventMaxBytes bounds the rows of one initial-scan Event
	// (CDC_EVENT_MAX_BYTES, 32 KiB); a larger row goes alone.
	scanEventMaxBytes = 32 << 10
)

// feedStream is one client EventFeed stream on a store: an ordered queue of
// items that one goroutine sends.
type feedStream struct {
	s    *storeServer
	subs map[*subscription]struct{} // guarded by Cluster.mu
	// features are fixed by the first request's header, as TiKV fixes a
	// connection's features (guarded by Cluster.mu).
	features *features

	mu     sync.Mutex
	cond   *sync.Cond
	queue  []any // *cdcpb.Event or *cdcpb.ResolvedTs
	closed bool
	err    error
	done   chan struct{} // closed with closed
}

func newFeedStream(s *storeServer, ctx context.Context) *feedStream {
	st := &feedStream{s: s, subs: map[*subscription]struct{}{}, done: make(chan struct{})}
	st.cond = sync.NewCond(&st.mu)
	go func() {
		select {
		case <-ctx.Done():
			st.close(ctx.Err())
		case <-st.done:
		}
	}()
	return st
}

// push queues an item. The caller holds Cluster.mu, which keeps the order of
// items for one region equal to the order of the writes. A stream whose
// queue passes the limit loses all its subscriptions with `congested`, like
// a TiKV whose sink memory quota is exceeded; errors are always queued, so
// a client is never left waiting for an answer that was dropped.
func (st *feedStream) push(c *Cluster, item any) { st.pushAll(c, []any{item}) }

// pushAll queues items in order, as push would one by one, but under one
// lock and with one wake-up of the sender, which then finds them all and
// sends them in few messages rather than one message per event. Once the
// stream is congested, every subscription on it is gone, so the items
// after that (all for this stream's subscriptions) are dropped but errors.
func (st *feedStream) pushAll(c *Cluster, items []any) {
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return
	}
	var congested []*subscription
	done := false
	for _, item := range items {
		ev, isEvent := item.(*cdcpb.Event)
		isErr := isEvent && ev.GetError() != nil
		if !isErr && (done || len(st.queue) >= c.cfg.StreamQueueLimit) {
			if !done {
				for sub := range st.subs {
					st.queue = append(st.queue, errorEvent(sub.regionID, sub.requestID, Congested(sub.regionID)))
					congested = append(congested, sub)
				}
				done = true
			}
			continue
		}
		st.queue = append(st.queue, item)
	}
	st.cond.Broadcast()
	st.mu.Unlock()
	for _, sub := range congested {
		c.removeSubLocked(sub)
	}
}

func (st *feedStream) close(err error) {
	st.mu.Lock()
	if !st.closed {
		st.closed, st.err = true, err
		close(st.done)
	}
	st.cond.Broadcast()
	st.mu.Unlock()
}

// sendLoop sends queued items until the stream closes. Consecutive events
// share one ChangeDataEvent up to respMaxBytes; a resolved ts goes alone
// and is never batched with what follows (TiKV's EventBatcher), so it is
// never sent before events queued earlier.
func (st *feedStream) sendLoop(srv cdcpb.ChangeData_EventFeedServer) error {
	for {
		st.mu.Lock()
		for len(st.queue) == 0 && !st.closed {
			st.cond.Wait()
		}
		if st.closed {
			err := st.err
			st.mu.Unlock()
			return err
		}
		st.mu.Unlock()
		// Faults apply before the queue is taken, so a stalled stream
		// really accumulates (and can become congested).
		if err := st.waitFaults(); err != nil {
			return err
		}
		st.mu.Lock()
		items := st.queue
		st.queue = nil
		st.mu.Unlock()
		var batch []*cdcpb.Event
		batchBytes := 0
		flush := func() error {
			if len(batch) == 0 {
				return nil
			}
			err := srv.Send(&cdcpb.ChangeDataEvent{Events: batch})
			batch, batchBytes = nil, 0
			return err
		}
		for _, it := range items {
			switch v := it.(type) {
			case *cdcpb.Event:
				size := v.Size()
				if len(batch) > 0 && batchBytes+size >= respMaxBytes {
					if err := flush(); err != nil {
						return err
					}
				}
				batch = append(batch, v)
				batchBytes += size
			case *cdcpb.ResolvedTs:
				if err := flush(); err != nil {
					return err
				}
				if err := srv.Send(&cdcpb.ChangeDataEvent{ResolvedTs: v}); err != nil {
					return err
				}
			}
		}
		if err := flush(); err != nil {
			return err
		}
	}
}

// waitFaults applies the store's stall and delay faults before a send,
// waking on a fault change or the stream's end rather than polling.
func (st *feedStream) waitFaults() error {
	for {
		f, changed := st.s.currentFaults()
		if f.stalled {
			select {
			case <-changed:
				continue
			case <-st.done:
				return st.closeErr()
			}
		}
		if f.delay > 0 {
			t := time.NewTimer(f.delay)
			select {
			case <-t.C:
			case <-st.done:
				t.Stop()
				return st.closeErr()
			}
		}
		return nil
	}
}

func (st *feedStream) closeErr() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.err
}

func errorEvent(regionID, requestID uint64, e *cdcpb.Error) *cdcpb.Event {
	return &cdcpb.Event{RegionId: regionID, RequestId: requestID, Event: &cdcpb.Event_Error{Error: e}}
}

// gogoCodec is the stores' gRPC codec. kvproto's messages are generated by
// gogoproto with their own Marshal and Unmarshal; gRPC's proto codec
// reaches those same methods through protobuf-go's legacy wrapper, after
// sizing the message once more and then copying the output, which at a
// million rows a second is a good part of a store's send cost. The bytes
// on the wire are the same. Other messages (the health service's) go to
// gRPC's codec.
type gogoCodec struct{ fallback encoding.CodecV2 }

type gogoMessage interface {
	Size() int
	MarshalToSizedBuffer([]byte) (int, error)
	Unmarshal([]byte) error
}

func newGogoCodec() gogoCodec { return gogoCodec{fallback: encoding.GetCodecV2(proto.Name)} }

func (c gogoCodec) Name() string { return proto.Name }

func (c gogoCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(gogoMessage)
	if !ok {
		return c.fallback.Marshal(v)
	}
	size := m.Size()
	if mem.IsBelowBufferPoolingThreshold(size) {
		buf := make([]byte, size)
		if _, err := m.MarshalToSizedBuffer(buf); err != nil {
			return nil, fmt.Errorf("marshal %T: %w", v, err)
		}
		return mem.BufferSlice{mem.SliceBuffer(buf)}, nil
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(size)
	if _, err := m.MarshalToSizedBuffer((*buf)[:size]); err != nil {
		pool.Put(buf)
		return nil, fmt.Errorf("marshal %T: %w", v, err)
	}
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}

func (c gogoCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(gogoMessage)
	if !ok {
		return c.fallback.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	// gogoproto's Unmarshal copies bytes fields, so the buffer can go back.
	if err := m.Unmarshal(buf.ReadOnlyData()); err != nil {
		return fmt.Errorf("unmarshal %T: %w", v, err)
	}
	return nil
}
