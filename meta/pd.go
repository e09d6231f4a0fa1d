package meta

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/circuitbreaker"
	"github.com/tikv/pd/client/clients/router"
	"github.com/tikv/pd/client/opt"
)

// DialPD connects the pd client to PD (which serves etcd on the same
// address) and proves it answers within cfg.DialTimeout (default 5 s).
// The client lives until Close: the pd client ends when the context it was
// made with ends, so that context is cancelled only by Close, or here if
// start-up overruns its deadline.
func DialPD(ctx context.Context, cfg DialConfig) (pd.Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("no PD endpoints")
	}
	timeout := cfg.DialTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	addrs := make([]string, 0, len(cfg.Endpoints))
	for _, ep := range cfg.Endpoints {
		if ep = strings.TrimSpace(ep); ep != "" {
			addrs = append(addrs, ep)
		}
	}
	life, cancel := context.WithCancel(context.WithoutCancel(ctx))
	timer := time.AfterFunc(timeout, cancel)
	cli, err := pd.NewClientWithContext(life, addrs,
		pd.SecurityOption{CAPath: cfg.CAFile, CertPath: cfg.CertFile, KeyPath: cfg.KeyFile},
		opt.WithCustomTimeoutOption(timeout), opt.WithMaxErrorRetry(1),
		// The pd client initialises its package-level metrics on the first
		// client that asks, racing with clients already running in the same
		// process (the race detector caught it in tests); the agent has its
		// own metrics and needs none of them.
		opt.WithInitMetricsOption(false))
	if !timer.Stop() || err != nil {
		cancel()
		if err == nil {
			cli.Close()
			err = fmt.Errorf("no answer within %s", timeout)
		}
		return nil, fmt.Errorf("cannot reach PD at %v within %s: %w", addrs, timeout, err)
	}
	return &ownedPD{Client: cli, cancel: cancel}, nil
}

// ownedPD releases the client's context when it is closed.
type ownedPD struct {
	pd.Client
	cancel context.CancelFunc
}

func (c *ownedPD) Close() {
	c.Client.Close()
	c.cancel()
}

// PDCallContext bounds one PD call: a deadline, and the circuit breaker the
// pinned pd client expects on region calls (it panics without one).
func PDCallContext(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	ctx = circuitbreaker.WithCircuitBreaker(ctx, circuitbreaker.NewCircuitBreaker("logbackup", circuitbreaker.AlwaysClosedSettings))
	return context.WithTimeout(ctx, d)
}

// GCSafePoint reads PD's GC safepoint through PD's API, as BR does:
// UpdateGCSafePoint with 0 never moves it and answers with it.
func GCSafePoint(ctx context.Context, pdc pd.Client) (uint64, error) {
	rctx, cancel := PDCallContext(ctx, 10*time.Second)
	defer cancel()
	sp, err := pdc.UpdateGCSafePoint(rctx, 0)
	if err != nil {
		return 0, fmt.Errorf("read PD's GC safepoint: %w", err)
	}
	return sp, nil
}

// SetServiceSafePoint keeps PD's GC at or below ts for ttl under id; a
// ttl of 0 removes it. PD refuses a safepoint below the GC safepoint by
// answering with a higher minimum: that is an error here, since whatever
// the caller wanted to protect is already collectable.
func SetServiceSafePoint(ctx context.Context, pdc pd.Client, id string, ttl time.Duration, ts uint64) error {
	rctx, cancel := PDCallContext(ctx, 10*time.Second)
	defer cancel()
	secs := int64(ttl / time.Second)
	if ttl > 0 && secs == 0 {
		secs = 1
	}
	min, err := pdc.UpdateServiceGCSafePoint(rctx, id, secs, ts)
	if err != nil {
		return fmt.Errorf("set GC safepoint %s: %w", id, err)
	}
	if secs > 0 && min > ts {
		return fmt.Errorf("set GC safepoint %s at %d: PD's txn safe point is already %d: %w", id, ts, min, ErrGCPassed)
	}
	return nil
}

// ErrGCPassed: PD's GC (its txn safe point) is past the timestamp a caller
// wanted to keep.
var ErrGCPassed = errors.New("the GC safepoint has passed it")

// TxnSafePointProbeID is the service safepoint TxnSafePoint deletes to read
// PD's txn safe point. Nothing ever sets it, so the delete changes nothing;
// the id names the reader in PD's log.
const TxnSafePointProbeID = "logbackup-read-txn-safe-point"

// TxnSafePoint reads PD's txn safe point: what PD enforces. PD refuses a
// service safepoint below it, and TiDB's GC worker moves it ahead of the
// GC safe point (GCSafePoint) at the start of every GC round, so a ts
// between the two is already lost to GC as far as a new safepoint goes.
// The pinned pd client has no call for it; every UpdateServiceGCSafePoint
// answers with it (PD v8.5: the txn safe point; older PDs: the lowest
// service safepoint, gc_worker's included, which is never above it), and
// deleting one that does not exist (ttl 0) is the call that writes nothing.
func TxnSafePoint(ctx context.Context, pdc pd.Client) (uint64, error) {
	rctx, cancel := PDCallContext(ctx, 10*time.Second)
	defer cancel()
	sp, err := pdc.UpdateServiceGCSafePoint(rctx, TxnSafePointProbeID, 0, 0)
	if err != nil {
		return 0, fmt.Errorf("read PD's txn safe point: %w", err)
	}
	return sp, nil
}

// PD service safepoint ids the agents hold, named as TiKV names its own so
// an operator (and PD's tooling) sees the same ids whichever writes.

// FlushSafePointID is the service safepoint each store keeps at its
// checkpoint − 1 while a task runs (TiKV: backup-stream-<task>-<store>).
func FlushSafePointID(task string, store uint64) string {
	return fmt.Sprintf("backup-stream-%s-%d", task, store)
}

// PauseGuardID is the service safepoint a store sets on a fatal error, so
// the changes a resume rescans survive the pause (TiKV's naming).
func PauseGuardID(task string, store uint64) string {
	return fmt.Sprintf("%s-%d-pause-guard", task, store)
}

// scanPage is how many regions one PD request returns.
const regionScanPage = 1024

// ScanRegions lists the regions overlapping the encoded key range
// [start, end) (empty end: to the end of the key space) from PD, a page at
// a time, each page under its own deadline.
func ScanRegions(ctx context.Context, pdc pd.Client, start, end []byte) ([]*router.Region, error) {
	var out []*router.Region
	for {
		rctx, cancel := PDCallContext(ctx, 10*time.Second)
		page, err := pdc.ScanRegions(rctx, start, end, regionScanPage)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("scan regions: %w", err)
		}
		out = append(out, page...)
		if len(page) < regionScanPage {
			return out, nil
		}
		start = page[len(page)-1].Meta.EndKey
		if len(start) == 0 || (len(end) > 0 && string(start) >= string(end)) {
			return out, nil
		}
	}
}
