package simcluster

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"sort"
	"strconv"
	"time"
)

// PD's GC state, as PD (since its GC-barrier rework, the PD the pinned
// client belongs to) keeps it behind the old service-safepoint API:
//
//   - the txn safe point: no snapshot below it may be read. The service
//     safepoint "gc_worker" is this value (TiDB's GC worker advances it).
//   - GC barriers: every other service safepoint. A barrier holds the txn
//     safe point at or below its ts until it expires or is removed; one
//     below the current txn safe point is refused.
//   - the GC safe point: TiKV may collect versions below it. It never
//     passes the txn safe point, so it never passes a live barrier.
//
// gcStates is the pure part: each operation works on a copy and returns the
// etcd writes that make it durable, in PD's key layout, so the caller can
// persist before it commits (as PD writes etcd in one transaction).
type gcStates struct {
	gcSafePoint  uint64
	txnSafePoint uint64
	barriers     map[string]gcBarrier
}

type gcBarrier struct {
	ts      uint64
	expires time.Time // zero: never
}

func (b gcBarrier) expired(now time.Time) bool { return !b.expires.IsZero() && now.After(b.expires) }

// gcWorkerID is the service id that stands for the txn safe point.
const gcWorkerID = "gc_worker"

// ServiceSafePoint is one live service safepoint as PD reports it.
type ServiceSafePoint struct {
	SafePoint uint64
	// ExpiresAt is when PD drops it, on PD's clock (AdvancePDClock moves
	// it); zero for one that never expires (gc_worker's).
	ExpiresAt time.Time
}

// gcWrite is one etcd operation of a GC state change.
type gcWrite struct {
	key, value string
	delete     bool
}

func (g *gcStates) clone() *gcStates {
	c := *g
	c.barriers = maps.Clone(g.barriers)
	if c.barriers == nil {
		c.barriers = map[string]gcBarrier{}
	}
	return &c
}

// serviceSafePoints lists gc_worker (the txn safe point) and the barriers
// that have not expired by now.
func (g *gcStates) serviceSafePoints(now time.Time) map[string]ServiceSafePoint {
	out := map[string]ServiceSafePoint{gcWorkerID: {SafePoint: g.txnSafePoint}}
	for id, b := range g.barriers {
		if !b.expired(now) {
			out[id] = ServiceSafePoint{SafePoint: b.ts, ExpiresAt: b.expires}
		}
	}
	return out
}

// minService is the answer to UpdateServiceGCSafePoint: PD reports the
// minimum over all service safepoints, which is gc_worker's (the txn safe
// point is never above a live barrier), unless gc_worker's own update was
// held back by a barrier, in which case that barrier is the minimum.
type minService struct {
	id        string
	expiresAt int64 // unix seconds; math.MaxInt64 for never
	safePoint uint64
}

// updateServiceSafePoint is PD's UpdateServiceGCSafePoint. For gc_worker it
// advances the txn safe point (ttl must be "forever", math.MaxInt64); for
// any other id, ttl > 0 sets a barrier expiring ttl seconds from now
// (rounded up to a whole second), refused without an error when ts is below
// the txn safe point, and ttl <= 0 removes it. updated says whether the
// service's safepoint was stored.
func (g *gcStates) updateServiceSafePoint(clusterID uint64, id string, ttl int64, ts uint64, now time.Time) (min minService, updated bool, writes []gcWrite, err error) {
	if id == "" {
		return minService{}, false, nil, fmt.Errorf("service id of a service safepoint cannot be empty")
	}
	if id == gcWorkerID {
		if ttl != math.MaxInt64 {
			return minService{}, false, nil, fmt.Errorf("TTL of gc_worker's service safe point must be infinity")
		}
		old := g.txnSafePoint
		reached, blocker, writes, err := g.advanceTxnSafePoint(clusterID, ts, now)
		if err != nil {
			return minService{}, false, nil, err
		}
		min = minService{id: gcWorkerID, expiresAt: math.MaxInt64, safePoint: ts}
		if reached != ts {
			min = minService{id: blocker, expiresAt: math.MaxInt64, safePoint: reached}
		}
		return min, reached != old, writes, nil
	}
	if ttl > 0 {
		if ts >= g.txnSafePoint {
			b := gcBarrier{ts: ts, expires: expiry(now, ttl)}
			g.barriers[id] = b
			writes = append(writes, barrierWrite(clusterID, id, b))
			updated = true
		}
		// Below the txn safe point PD refuses the barrier and answers as
		// usual: the caller sees a minimum above what it asked for.
	} else if _, ok := g.barriers[id]; ok {
		delete(g.barriers, id)
		writes = append(writes, gcWrite{key: barrierKey(clusterID, id), delete: true})
	}
	return minService{id: gcWorkerID, expiresAt: math.MaxInt64, safePoint: g.txnSafePoint}, updated, writes, nil
}

// expiry is now+ttl seconds rounded up to a whole second, or zero (never)
// when that is past what a time.Duration holds, as PD saturates it.
func expiry(now time.Time, ttl int64) time.Time {
	if ttl >= math.MaxInt64/int64(time.Second) {
		return time.Time{}
	}
	return now.Add(time.Duration(ttl) * time.Second).Add(time.Second - time.Nanosecond).Truncate(time.Second)
}

// advanceTxnSafePoint moves the txn safe point towards target, stopping at
// the lowest live barrier, and drops expired barriers on the way (PD
// deletes them lazily, here). It never moves backwards: a target below the
// current value is an error. It returns where it stopped and, if short of
// target, the id of the barrier that held it.
func (g *gcStates) advanceTxnSafePoint(clusterID uint64, target uint64, now time.Time) (reached uint64, blocker string, writes []gcWrite, err error) {
	if target < g.txnSafePoint {
		return 0, "", nil, fmt.Errorf("trying to update txn safe point to a smaller value: current %d, target %d", g.txnSafePoint, target)
	}
	ids := make([]string, 0, len(g.barriers))
	for id := range g.barriers {
		ids = append(ids, id)
	}
	sort.Strings(ids) // a deterministic blocker among equals
	minTS := target
	for _, id := range ids {
		b := g.barriers[id]
		if b.expired(now) {
			delete(g.barriers, id)
			writes = append(writes, gcWrite{key: barrierKey(clusterID, id), delete: true})
			continue
		}
		if b.ts < minTS {
			minTS, blocker = b.ts, id
		}
	}
	g.txnSafePoint = max(g.txnSafePoint, minTS)
	writes = append(writes, gcWrite{key: txnSafePointKey, value: strconv.FormatUint(g.txnSafePoint, 10)})
	return g.txnSafePoint, blocker, writes, nil
}

// updateGCSafePoint is PD's UpdateGCSafePoint: a target below the current
// GC safe point changes nothing and answers the current one (so 0 reads
// it); a target past the txn safe point is an error; otherwise it moves.
func (g *gcStates) updateGCSafePoint(clusterID uint64, target uint64) (uint64, []gcWrite, error) {
	if target <= g.gcSafePoint {
		return g.gcSafePoint, nil, nil
	}
	if target > g.txnSafePoint {
		return 0, nil, fmt.Errorf("trying to update GC safe point to a too large value: current %d, target %d, txn safe point %d", g.gcSafePoint, target, g.txnSafePoint)
	}
	g.gcSafePoint = target
	return target, []gcWrite{{key: gcSafePointKey(clusterID), value: strconv.FormatUint(target, 16)}}, nil
}

// PD's etcd keys (PD's keypath package): the GC safe point is hex, the txn
// safe point decimal (it is the key TiDB's GC worker used to keep), a
// barrier is a service safepoint in JSON.
const (
	pdClusterIDKey  = "/pd/cluster_id"
	txnSafePointKey = "/tidb/store/gcworker/saved_safe_point"
)

func gcSafePointKey(clusterID uint64) string { return fmt.Sprintf("/pd/%d/gc/safe_point", clusterID) }

func barrierKey(clusterID uint64, id string) string {
	return fmt.Sprintf("/pd/%d/gc/safe_point/service/%s", clusterID, id)
}

func barrierWrite(clusterID uint64, id string, b gcBarrier) gcWrite {
	expiredAt := int64(math.MaxInt64)
	if !b.expires.IsZero() {
		expiredAt = b.expires.Unix()
	}
	v, _ := json.Marshal(struct { // cannot fail: plain fields
		ServiceID string `json:"service_id"`
		ExpiredAt int64  `json:"expired_at"`
		SafePoint uint64 `json:"safe_point"`
	}{id, expiredAt, b.ts})
	return gcWrite{key: barrierKey(clusterID, id), value: string(v)}
}
