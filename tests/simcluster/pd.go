package simcluster

import (
	"context"
	"encoding/binary"
	"fmt"
	"strconv"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/clients/tso"
)

// pdState is what PD owns in the simulated cluster besides the topology
// (which lives in mocktikv): the cluster id, the TSO and the GC state. The
// in-process pd.Client and the PD gRPC server are two doors to this one
// state, so tests see the same timestamps and safepoints through either.
type pdState struct {
	clusterID uint64
	clock     pdClock

	gcMu sync.Mutex
	gc   *gcStates
	// etcd persists GC changes in PD's layout when PD is served (nil
	// otherwise); written before the change is committed in memory, so
	// etcd never holds less than what a caller was told.
	etcd *clientv3.Client

	http *pdHTTPState // what PD's HTTP API changes (pdhttp.go)
}

func newPDState(clusterID uint64) *pdState {
	return &pdState{clusterID: clusterID, gc: &gcStates{barriers: map[string]gcBarrier{}}, http: newPDHTTPState()}
}

// etcdTimeout bounds one write of PD state to its own embedded etcd.
const etcdTimeout = 10 * time.Second

// bootstrap writes what PD keeps in etcd from the start: the cluster id
// (8 bytes big-endian) and the GC state.
func (s *pdState) bootstrap(ctx context.Context, cli *clientv3.Client) error {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	id := make([]byte, 8)
	binary.BigEndian.PutUint64(id, s.clusterID)
	writes := []gcWrite{
		{key: pdClusterIDKey, value: string(id)},
		{key: txnSafePointKey, value: strconv.FormatUint(s.gc.txnSafePoint, 10)},
		{key: gcSafePointKey(s.clusterID), value: strconv.FormatUint(s.gc.gcSafePoint, 16)},
	}
	s.etcd = cli
	return s.persistLocked(ctx, writes)
}

func (s *pdState) persistLocked(ctx context.Context, writes []gcWrite) error {
	if s.etcd == nil || len(writes) == 0 {
		return nil
	}
	ops := make([]clientv3.Op, 0, len(writes))
	for _, w := range writes {
		if w.delete {
			ops = append(ops, clientv3.OpDelete(w.key))
		} else {
			ops = append(ops, clientv3.OpPut(w.key, w.value))
		}
	}
	ctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	if _, err := s.etcd.Txn(ctx).Then(ops...).Commit(); err != nil {
		return fmt.Errorf("persist PD GC state: %w", err)
	}
	return nil
}

// updateServiceSafePoint is UpdateServiceGCSafePoint for both doors.
func (s *pdState) updateServiceSafePoint(ctx context.Context, id string, ttl int64, ts uint64) (minService, time.Time, error) {
	now, err := s.clock.now()
	if err != nil {
		return minService{}, time.Time{}, err
	}
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	next := s.gc.clone()
	min, _, writes, err := next.updateServiceSafePoint(s.clusterID, id, ttl, ts, now)
	if err != nil {
		return minService{}, now, err
	}
	if err := s.persistLocked(ctx, writes); err != nil {
		return minService{}, now, err
	}
	s.gc = next
	return min, now, nil
}

// updateGCSafePoint is UpdateGCSafePoint for both doors.
func (s *pdState) updateGCSafePoint(ctx context.Context, target uint64) (uint64, error) {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	next := s.gc.clone()
	sp, writes, err := next.updateGCSafePoint(s.clusterID, target)
	if err != nil {
		return 0, err
	}
	if err := s.persistLocked(ctx, writes); err != nil {
		return 0, err
	}
	s.gc = next
	return sp, nil
}

// GCSafePoint is PD's GC safe point: TiKV may collect versions below it.
// With an external PD it is read from PD's HTTP API (0 when that fails).
func (c *Cluster) GCSafePoint() uint64 {
	if c.ext != nil {
		sp, _, _ := c.ext.gcState(context.Background())
		return sp
	}
	c.pd.gcMu.Lock()
	defer c.pd.gcMu.Unlock()
	return c.pd.gc.gcSafePoint
}

// SetGCSafePoint does what TiDB's GC worker does with a new safe point:
// it advances the txn safe point (gc_worker's service safepoint) to ts, or
// only as far as the lowest live service safepoint allows, and then the GC
// safe point to the same value. It returns the GC safe point reached, below
// ts when a service safepoint held it back (ServiceSafePoints says which).
// A ts below the current txn safe point is an error, as in PD.
func (c *Cluster) SetGCSafePoint(ctx context.Context, ts uint64) (uint64, error) {
	if c.ext != nil {
		return c.ext.setGCSafePoint(ctx, ts)
	}
	s := c.pd
	now, err := s.clock.now()
	if err != nil {
		return 0, err
	}
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	next := s.gc.clone()
	reached, _, writes, err := next.advanceTxnSafePoint(s.clusterID, ts, now)
	if err != nil {
		return 0, fmt.Errorf("set GC safe point: %w", err)
	}
	sp, w, err := next.updateGCSafePoint(s.clusterID, reached)
	if err != nil {
		return 0, fmt.Errorf("set GC safe point: %w", err)
	}
	if err := s.persistLocked(ctx, append(writes, w...)); err != nil {
		return 0, err
	}
	s.gc = next
	return sp, nil
}

// ServiceSafePoints lists the live service safepoints by service id,
// including gc_worker (the txn safe point, never expiring). Expired ones
// are gone, whether or not PD has deleted them from etcd yet.
// With an external PD they are read from PD's HTTP API (nil when that
// fails).
func (c *Cluster) ServiceSafePoints() map[string]ServiceSafePoint {
	if c.ext != nil {
		_, sps, _ := c.ext.gcState(context.Background())
		return sps
	}
	now, err := c.pd.clock.now()
	if err != nil {
		now = time.Now() // unreachable: allocating one timestamp cannot fail
	}
	c.pd.gcMu.Lock()
	defer c.pd.gcMu.Unlock()
	return c.pd.gc.serviceSafePoints(now)
}

// AdvancePDClock moves PD's clock forward by d, as if d passed for PD
// only: later timestamps are at least d ahead of the wall clock, and
// service safepoints expire accordingly. Tests use it to expire a TTL
// without waiting for it.
// With an external PD it does nothing: a real PD's clock is the wall's.
func (c *Cluster) AdvancePDClock(d time.Duration) {
	if c.ext == nil {
		c.pd.clock.advance(d)
	}
}

// localPD is the in-process door to PD: mocktikv's pd.Client for the
// topology, with the cluster id, the TSO and the GC calls served from
// pdState so they agree with the PD gRPC server.
type localPD struct {
	pd.Client
	s *pdState
	c *Cluster // its stores' liveness (withHeartbeat)
}

func (p *localPD) GetClusterID(context.Context) uint64 { return p.s.clusterID }

func (p *localPD) GetTS(ctx context.Context) (int64, int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	return p.s.clock.allocate(1)
}

func (p *localPD) GetTSAsync(ctx context.Context) tso.TSFuture {
	physical, logical, err := p.GetTS(ctx)
	return tsFuture{physical, logical, err}
}

func (p *localPD) GetLocalTS(ctx context.Context, _ string) (int64, int64, error) {
	return p.GetTS(ctx)
}

func (p *localPD) GetLocalTSAsync(ctx context.Context, _ string) tso.TSFuture {
	return p.GetTSAsync(ctx)
}

// GetMinTS is a fresh timestamp, as PD (not the TSO microservice) answers.
func (p *localPD) GetMinTS(ctx context.Context) (int64, int64, error) { return p.GetTS(ctx) }

func (p *localPD) UpdateGCSafePoint(ctx context.Context, safePoint uint64) (uint64, error) {
	return p.s.updateGCSafePoint(ctx, safePoint)
}

func (p *localPD) UpdateServiceGCSafePoint(ctx context.Context, serviceID string, ttl int64, safePoint uint64) (uint64, error) {
	min, _, err := p.s.updateServiceSafePoint(ctx, serviceID, ttl, safePoint)
	return min.safePoint, err
}

type tsFuture struct {
	physical, logical int64
	err               error
}

func (f tsFuture) Wait() (int64, int64, error) { return f.physical, f.logical, f.err }
