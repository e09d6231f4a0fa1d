package simcluster

import (
	"fmt"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/errorpb"
)

func (c *Cluster) store(id uint64) *storeServer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stores[id]
}

func (c *Cluster) mustStore(id uint64) (*storeServer, error) {
	s := c.store(id)
	if s == nil {
		return nil, fmt.Errorf("no store %d", id)
	}
	return s, nil
}

// DropStreams breaks every EventFeed stream of a store (clients see
// Unavailable and must reconnect and resubscribe).
func (c *Cluster) DropStreams(store uint64) {
	if s := c.store(store); s != nil {
		s.dropStreams()
	}
}

// StallStreams stops (true) or resumes (false) sending on a store's streams;
// events queue up meanwhile (and past Config.StreamQueueLimit the stream's
// subscriptions end with `congested`).
func (c *Cluster) StallStreams(store uint64, stalled bool) {
	if s := c.store(store); s != nil {
		s.setFaults(func(f *storeFaults) { f.stalled = stalled })
	}
}

// DelayEvents delays each send on a store's streams by d (0 = no delay).
func (c *Cluster) DelayEvents(store uint64, d time.Duration) {
	if s := c.store(store); s != nil {
		s.setFaults(func(f *storeFaults) { f.delay = d })
	}
}

// HoldScans makes a store's registrations take their snapshot and then
// wait (true) before sending the initial scan, until released (false).
// Live rows of writes after the snapshot flow meanwhile, so a client sees
// them before the scan rows and INITIALIZED — the interleaving TiKV
// produces when its incremental scan is slow.
func (c *Cluster) HoldScans(store uint64, hold bool) {
	if s := c.store(store); s != nil {
		s.setFaults(func(f *storeFaults) { f.holdScans = hold })
	}
}

// FailRegistrations answers the next n registrations on a store with err
// (nil = server_is_busy). See ServerIsBusy and Congested.
func (c *Cluster) FailRegistrations(store uint64, n int, err *cdcpb.Error) {
	if err == nil {
		err = ServerIsBusy()
	}
	if s := c.store(store); s != nil {
		s.setFaults(func(f *storeFaults) { f.failRegistrations, f.failErr = n, err })
	}
}

// ServerIsBusy is TiKV's overload answer (it sends it when too many
// incremental scans are pending).
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
	s, err := c.mustStore(store)
	if err != nil {
		return fmt.Errorf("restart cdc: %w", err)
	}
	s.dropStreams()
	s.stop()
	if err := s.serve(s.address()); err != nil {
		return fmt.Errorf("restart cdc: %w", err)
	}
	return nil
}
