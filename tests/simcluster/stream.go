package simcluster

import (
	"context"
	"sync"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
)

// maxMessageBytes bounds one ChangeDataEvent.
const maxMessageBytes = 1 << 20

// feedStream is one client EventFeed stream on a store: an ordered queue of
// events that one goroutine sends.
type feedStream struct {
	s    *storeServer
	subs map[*subscription]struct{} // guarded by Cluster.mu

	mu     sync.Mutex
	cond   *sync.Cond
	queue  []any // *cdcpb.Event or *cdcpb.ChangeDataEvent (resolved ts)
	closed bool
	err    error
}

func newFeedStream(s *storeServer, ctx context.Context) *feedStream {
	st := &feedStream{s: s, subs: map[*subscription]struct{}{}}
	st.cond = sync.NewCond(&st.mu)
	go func() {
		<-ctx.Done()
		st.close(ctx.Err())
	}()
	return st
}

// push queues an item; the caller holds Cluster.mu, which keeps the order
// of items for one region equal to the order of the writes. A stream whose
// queue is over the limit loses its subscriptions with `congested`, like a
// TiKV whose sink memory quota is exceeded.
func (st *feedStream) push(c *Cluster, item any) {
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return
	}
	if len(st.queue) >= c.cfg.StreamQueueLimit {
		for sub := range st.subs {
			st.queue = append(st.queue, &cdcpb.Event{RegionId: sub.regionID, RequestId: sub.requestID,
				Event: &cdcpb.Event_Error{Error: &cdcpb.Error{Congested: &cdcpb.Congested{RegionId: sub.regionID}}}})
			defer c.removeSubLocked(sub)
		}
		st.cond.Broadcast()
		st.mu.Unlock()
		return
	}
	st.queue = append(st.queue, item)
	st.cond.Broadcast()
	st.mu.Unlock()
}

func (st *feedStream) close(err error) {
	st.mu.Lock()
	if !st.closed {
		st.closed, st.err = true, err
	}
	st.cond.Broadcast()
	st.mu.Unlock()
}

// sendLoop sends queued items until the stream closes. Consecutive events
// share one ChangeDataEvent; a resolved-ts message goes alone (TiKV never
// mixes the two), so it is never sent before events queued earlier.
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
				batch = append(batch, v)
				// Keep messages well under gRPC's default 4 MiB receive
				// limit, as TiKV caps its CDC messages.
				if batchBytes += v.Size(); len(batch) >= 256 || batchBytes >= maxMessageBytes {
					if err := flush(); err != nil {
						return err
					}
				}
			case *cdcpb.ChangeDataEvent:
				if err := flush(); err != nil {
					return err
				}
				if err := srv.Send(v); err != nil {
					return err
				}
			}
		}
		if err := flush(); err != nil {
			return err
		}
	}
}

// waitFaults applies the store's stall and delay faults before a send.
func (st *feedStream) waitFaults() error {
	for {
		st.s.mu.Lock()
		stalled, delay := st.s.faults.stalled, st.s.faults.delay
		st.s.mu.Unlock()
		st.mu.Lock()
		closed, err := st.closed, st.err
		st.mu.Unlock()
		if closed {
			return err
		}
		if stalled {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		if delay > 0 {
			time.Sleep(delay)
		}
		return nil
	}
}
