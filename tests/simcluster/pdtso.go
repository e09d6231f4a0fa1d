package simcluster

import (
	"fmt"
	"sync"
	"time"
)

// maxLogical bounds the logical part of a timestamp: TiDB timestamps keep
// 18 bits for it (physical ms << 18 | logical).
const maxLogical = 1 << 18

// pdClock is the cluster's one timestamp oracle, PD's TSO: the in-process
// pd.Client (and through it client-go's writer and Cluster.TSO) and the PD
// gRPC Tso stream both allocate from it, so every timestamp anyone sees is
// unique and strictly increasing whichever way it was asked for. It is also
// PD's clock for service safepoint TTLs, as PD takes "now" from its TSO.
type pdClock struct {
	mu       sync.Mutex
	physical int64         // ms of the last allocation
	logical  int64         // last logical handed out at physical
	skew     time.Duration // added to the wall clock (AdvancePDClock)
}

// allocate reserves count consecutive timestamps and returns the last one
// as PD does: (physical, logical) with the batch being
// [logical-count+1, logical] at that physical.
func (c *pdClock) allocate(count uint32) (physical, logical int64, err error) {
	if count == 0 {
		return 0, 0, fmt.Errorf("tso count should be positive")
	}
	if int64(count) >= maxLogical {
		return 0, 0, fmt.Errorf("tso count %d exceeds the logical range %d", count, maxLogical-1)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := c.wallLocked().UnixMilli(); now > c.physical {
		c.physical, c.logical = now, 0
	}
	if c.logical+int64(count) >= maxLogical {
		// PD waits for its next physical tick when the logical part runs
		// out; moving the physical part on by a millisecond is the same
		// timestamp order without the wait.
		c.physical, c.logical = c.physical+1, 0
	}
	c.logical += int64(count)
	return c.physical, c.logical, nil
}

// next is one fresh timestamp, composed.
func (c *pdClock) next() (uint64, error) {
	p, l, err := c.allocate(1)
	if err != nil {
		return 0, err
	}
	return composeTS(p, l), nil
}

// now is PD's idea of the current time: the physical part of a fresh
// timestamp (PD computes service safepoint expiry from its TSO).
func (c *pdClock) now() (time.Time, error) {
	p, _, err := c.allocate(1)
	if err != nil {
		return time.Time{}, err
	}
	return time.UnixMilli(p), nil
}

// advance moves the clock forward by d, as if that much time passed for PD
// alone.
func (c *pdClock) advance(d time.Duration) {
	if d <= 0 {
		return
	}
	c.mu.Lock()
	c.skew += d
	c.mu.Unlock()
}

func (c *pdClock) wallLocked() time.Time { return time.Now().Add(c.skew) }

func composeTS(physical, logical int64) uint64 { return uint64(physical)<<18 | uint64(logical) }
