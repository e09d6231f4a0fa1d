package br

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	pd "github.com/tikv/pd/client"

	"logbackup/meta"
)

// moveTxnSafePoint moves PD's txn safe point to ts as TiDB's GC worker does
// (gc_worker's service safepoint), leaving the GC safe point behind.
func moveTxnSafePoint(t *testing.T, ctx context.Context, pdc pd.Client, ts uint64) {
	t.Helper()
	if got, err := pdc.UpdateServiceGCSafePoint(ctx, "gc_worker", math.MaxInt64, ts); err != nil || got != ts {
		t.Fatalf("moving the txn safe point to %d: reached %d, %v", ts, got, err)
	}
}

// TestStartBetweenSafePointsWritesNothing: a start ts above PD's GC safe
// point but not above its txn safe point is refused as a user error, and
// nothing changes: not the storage, not one etcd key or revision, not PD's
// service safepoints.
func TestStartBetweenSafePointsWritesNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o := newOwnerCluster(t, ctx)
	gc, _ := o.c.TSO(ctx)
	if _, err := o.c.SetGCSafePoint(ctx, gc); err != nil {
		t.Fatal(err)
	}
	between, _ := o.c.TSO(ctx)
	txn, _ := o.c.TSO(ctx)
	moveTxnSafePoint(t, ctx, o.c.PD(), txn)
	url := "local://" + t.TempDir()
	storageBefore, etcdBefore, sps := storageState(t, ctx, url), etcdState(t, ctx, o.cli), len(o.c.ServiceSafePoints())
	var out bytes.Buffer
	err := Start(ctx, o.env, StartOptions{TaskName: "pitr", Storage: url, StartTS: fmt.Sprint(between)}, &out)
	var ue *Error
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "txn safe point") || !strings.Contains(ue.Hint, "omit it to start now") {
		t.Fatalf("start between the safe points: %v (hint %q)", err, HintOf(err))
	}
	assertUntouched(t, ctx, url, o, storageBefore, etcdBefore, sps)
}

// gcRacingPD is the simulated PD's own client, with TiDB's GC worker
// moving the txn safe point to jumpTo right after start has read it: the
// race between start's check and its barrier, which no server produces on
// cue. Everything else is the real client.
type gcRacingPD struct {
	pd.Client
	t      *testing.T
	jumpTo uint64
}

func (p *gcRacingPD) UpdateServiceGCSafePoint(ctx context.Context, id string, ttl int64, ts uint64) (uint64, error) {
	sp, err := p.Client.UpdateServiceGCSafePoint(ctx, id, ttl, ts)
	if id == meta.TxnSafePointProbeID && p.jumpTo != 0 {
		moveTxnSafePoint(p.t, ctx, p.Client, p.jumpTo)
		p.jumpTo = 0
	}
	return sp, err
}

// TestStartBarrierRefusedWritesNothing: when the txn safe point passes the
// start between start's check and its br-<uuid> barrier, PD refuses the
// barrier and start fails having written nothing to storage or etcd, so
// the next start on the storage is not held to that start ts.
func TestStartBarrierRefusedWritesNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o := newOwnerCluster(t, ctx)
	start, _ := o.c.TSO(ctx)
	later, _ := o.c.TSO(ctx)
	o.env.PD = &gcRacingPD{Client: o.c.PD(), t: t, jumpTo: later}
	url := "local://" + t.TempDir()
	storageBefore, etcdBefore, sps := storageState(t, ctx, url), etcdState(t, ctx, o.cli), len(o.c.ServiceSafePoints())
	var out bytes.Buffer
	err := Start(ctx, o.env, StartOptions{TaskName: "pitr", Storage: url, StartTS: fmt.Sprint(start)}, &out)
	if !errors.Is(err, meta.ErrGCPassed) || !strings.Contains(HintOf(err), "omit it to start now") {
		t.Fatalf("start whose barrier PD refused: %v (hint %q)", err, HintOf(err))
	}
	assertUntouched(t, ctx, url, o, storageBefore, etcdBefore, sps)
	if _, err := o.start(ctx, "pitr", url, false); err != nil {
		t.Fatalf("a plain start after the refused one: %v", err)
	}
}
