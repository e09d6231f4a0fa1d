package simcluster

import (
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/errorpb"
)

func (c *Cluster) store(id uint64) *storeServer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stores[id]
}

// DropStreams breaks every EventFeed stream of a store (clients see
// Unavailable and must reconnect and resubscribe).
func (c *Cluster) DropStreams(store uint64) { c.store(store).dropStreams() }

// StallStreams stops (true) or resumes (false) sending on a store's streams;
// events queue up meanwhile.
func (c *Cluster) StallStreams(store uint64, stalled bool) {
	s := c.store(store)
	s.mu.Lock()
	s.faults.stalled = stalled
	s.mu.Unlock()
}

// DelayEvents delays each send on a store's streams by d (0 = no delay).
func (c *Cluster) DelayEvents(store uint64, d time.Duration) {
	s := c.store(store)
	s.mu.Lock()
	s.faults.delay = d
	s.mu.Unlock()
}

// FailRegistrations answers the next n registrations on a store with err
// (nil = server_is_busy). See ServerIsBusy and Congested.
func (c *Cluster) FailRegistrations(store uint64, n int, err *cdcpb.Error) {
	if err == nil {
		err = ServerIsBusy()
	}
	s := c.store(store)
	s.mu.Lock()
	s.faults.failRegistrations, s.faults.failErr = n, err
	s.mu.Unlock()
}

// ServerIsBusy is TiKV's overload answer.
func ServerIsBusy() *cdcpb.Error {
	return &cdcpb.Error{ServerIsBusy: &errorpb.ServerIsBusy{Reason: "simcluster: injected"}}
}

// Congested is TiKV's CDC memory-quota answer.
func Congested(region uint64) *cdcpb.Error {
	return &cdcpb.Error{Congested: &cdcpb.Congested{RegionId: region}}
}

// RestartCDC stops a store's CDC server (breaking its streams) and starts it
// again on the same port.
func (c *Cluster) RestartCDC(store uint64) error {
	s := c.store(store)
	s.dropStreams()
	s.stop()
	return s.serve(s.addr)
}
