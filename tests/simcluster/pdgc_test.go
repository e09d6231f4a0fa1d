package simcluster_test

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/pdpb"
	pd "github.com/tikv/pd/client"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"logbackup/tests/simcluster"
)

// TestPDServerGCSafePoints: service safepoints and the GC safe point with
// PD's rules, through the network PD and the in-process PD alike: the GC
// safe point never passes a live service safepoint, a service safepoint
// below the txn safe point is refused, TTLs expire on PD's clock, ttl <= 0
// removes, UpdateGCSafePoint(0) reads, and etcd holds PD's layout.
func TestPDServerGCSafePoints(t *testing.T) {
	c := startPD(t, simcluster.Config{})
	ctx := testCtx(t)
	cli := newPDClient(t, c, pd.SecurityOption{})
	local := c.PD()

	if sp, err := cli.UpdateGCSafePoint(ctx, 0); err != nil || sp != 0 {
		t.Fatalf("initial GC safe point %d, %v", sp, err)
	}
	base, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// A service safepoint (as BR or an agent's pause guard sets one).
	if min, err := cli.UpdateServiceGCSafePoint(ctx, "svc-a", 3600, base); err != nil || min != 0 {
		t.Fatalf("set svc-a: min %d, %v; want 0 (gc_worker)", min, err)
	}
	ssp := c.ServiceSafePoints()
	if a, ok := ssp["svc-a"]; !ok || a.SafePoint != base || a.ExpiresAt.Before(time.Now().Add(3599*time.Second)) {
		t.Fatalf("svc-a: %+v (%v), want safe point %d for an hour", a, ok, base)
	}
	if w := ssp["gc_worker"]; w.SafePoint != 0 || !w.ExpiresAt.IsZero() {
		t.Fatalf("gc_worker: %+v", w)
	}

	// The GC worker cannot pass it.
	if got, err := c.SetGCSafePoint(ctx, base+1000); err != nil || got != base {
		t.Fatalf("SetGCSafePoint past svc-a: %d, %v; want %d", got, err, base)
	}
	for name, p := range map[string]pd.Client{"network": cli, "in-process": local} {
		if sp, err := p.UpdateGCSafePoint(ctx, 0); err != nil || sp != base {
			t.Fatalf("%s UpdateGCSafePoint(0) = %d, %v; want %d", name, sp, err, base)
		}
	}
	if c.GCSafePoint() != base {
		t.Fatalf("GCSafePoint() = %d, want %d", c.GCSafePoint(), base)
	}

	// Below the txn safe point a service safepoint is refused: the answer
	// is above what was asked.
	if min, err := cli.UpdateServiceGCSafePoint(ctx, "svc-b", 3600, base-1); err != nil || min != base {
		t.Fatalf("svc-b below: min %d, %v; want %d", min, err, base)
	}
	if _, ok := c.ServiceSafePoints()["svc-b"]; ok {
		t.Fatal("svc-b stored below the txn safe point")
	}

	// One set in process is visible over the network's answers and the
	// other way round.
	if min, err := local.UpdateServiceGCSafePoint(ctx, "svc-c", 60, base+500); err != nil || min != base {
		t.Fatalf("in-process svc-c: min %d, %v", min, err)
	}
	if got := c.ServiceSafePoints()["svc-c"].SafePoint; got != base+500 {
		t.Fatalf("svc-c = %d", got)
	}

	// ttl <= 0 removes svc-a; then svc-c holds the GC worker.
	if _, err := cli.UpdateServiceGCSafePoint(ctx, "svc-a", 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.ServiceSafePoints()["svc-a"]; ok {
		t.Fatal("svc-a kept after ttl 0")
	}
	if got, err := c.SetGCSafePoint(ctx, base+1000); err != nil || got != base+500 {
		t.Fatalf("SetGCSafePoint past svc-c: %d, %v; want %d", got, err, base+500)
	}

	// svc-c's 60 s run out on PD's clock; then nothing holds GC.
	c.AdvancePDClock(62 * time.Second)
	if _, ok := c.ServiceSafePoints()["svc-c"]; ok {
		t.Fatal("svc-c alive after its TTL")
	}
	if got, err := c.SetGCSafePoint(ctx, base+1000); err != nil || got != base+1000 {
		t.Fatalf("SetGCSafePoint after expiry: %d, %v; want %d", got, err, base+1000)
	}
	if _, err := c.SetGCSafePoint(ctx, base); err == nil {
		t.Fatal("SetGCSafePoint backwards: no error")
	}

	// UpdateGCSafePoint moves only up to the txn safe point.
	if _, err := cli.UpdateGCSafePoint(ctx, base+2000); err == nil {
		t.Fatal("UpdateGCSafePoint past the txn safe point: no error")
	}
	if sp, err := cli.UpdateGCSafePoint(ctx, base+10); err != nil || sp != base+1000 {
		t.Fatalf("UpdateGCSafePoint backwards = %d, %v; want the current %d", sp, err, base+1000)
	}

	// gc_worker is the txn safe point: it takes only an infinite TTL and
	// is held by live barriers.
	if _, err := cli.UpdateServiceGCSafePoint(ctx, "gc_worker", 600, base+3000); err == nil {
		t.Fatal("gc_worker with a finite TTL: no error")
	}
	if _, err := cli.UpdateServiceGCSafePoint(ctx, "svc-d", 3600, base+2000); err != nil {
		t.Fatal(err)
	}
	if min, err := cli.UpdateServiceGCSafePoint(ctx, "gc_worker", math.MaxInt64, base+3000); err != nil || min != base+2000 {
		t.Fatalf("gc_worker held by svc-d: min %d, %v; want %d", min, err, base+2000)
	}
	raw := rawPD(t, c)
	resp, err := raw.UpdateServiceGCSafePoint(ctx, &pdpb.UpdateServiceGCSafePointRequest{
		Header: &pdpb.RequestHeader{ClusterId: c.ClusterID()}, ServiceId: []byte("svc-e"), TTL: 100, SafePoint: base + 2500})
	if err != nil || string(resp.ServiceId) != "gc_worker" || resp.MinSafePoint != base+2000 || resp.TTL < math.MaxInt64/2 {
		t.Fatalf("raw UpdateServiceGCSafePoint: %v, %v", resp, err)
	}

	// etcd holds PD's layout: the cluster id, the GC and txn safe points,
	// the service safepoints; meta's reader (used by resume) agrees.
	etcd, err := clientv3.New(clientv3.Config{Endpoints: []string{c.PDAddr()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Close()
	get := func(key string) (string, bool) {
		t.Helper()
		r, err := etcd.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Kvs) == 0 {
			return "", false
		}
		return string(r.Kvs[0].Value), true
	}
	if id, ok := get("/pd/cluster_id"); !ok || len(id) != 8 || binary.BigEndian.Uint64([]byte(id)) != c.ClusterID() {
		t.Fatalf("/pd/cluster_id = %x", id)
	}
	if v, ok := get(fmt.Sprintf("/pd/%d/gc/safe_point", c.ClusterID())); !ok || v != strconv.FormatUint(base+1000, 16) {
		t.Fatalf("GC safepoint in etcd %q, want %x", v, base+1000)
	}
	if v, _ := get("/tidb/store/gcworker/saved_safe_point"); v != strconv.FormatUint(base+2000, 10) {
		t.Fatalf("txn safe point in etcd %q, want %d", v, base+2000)
	}
	prefix := fmt.Sprintf("/pd/%d/gc/safe_point/service/", c.ClusterID())
	v, ok := get(prefix + "svc-d")
	var stored struct {
		ServiceID string `json:"service_id"`
		ExpiredAt int64  `json:"expired_at"`
		SafePoint uint64 `json:"safe_point"`
	}
	if !ok || json.Unmarshal([]byte(v), &stored) != nil || stored.ServiceID != "svc-d" || stored.SafePoint != base+2000 || stored.ExpiredAt < time.Now().Unix()+3000 {
		t.Fatalf("svc-d in etcd: %q", v)
	}
	for _, gone := range []string{"svc-a", "svc-b", "svc-c"} {
		if v, ok := get(prefix + gone); ok {
			t.Errorf("%s still in etcd: %q", gone, v)
		}
	}
}

// TestPDInProcessGC: without a network PD the in-process PD keeps the same
// rules (and nothing is written anywhere).
func TestPDInProcessGC(t *testing.T) {
	c := start(t)
	ctx := testCtx(t)
	if c.PDAddr() != "" {
		t.Fatalf("PDAddr %q without ServePD", c.PDAddr())
	}
	base, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.PD().UpdateServiceGCSafePoint(ctx, "guard", 60, base); err != nil {
		t.Fatal(err)
	}
	if got, err := c.SetGCSafePoint(ctx, base+5); err != nil || got != base {
		t.Fatalf("SetGCSafePoint = %d, %v; want %d", got, err, base)
	}
	if sp, err := c.PD().UpdateGCSafePoint(ctx, 0); err != nil || sp != base {
		t.Fatalf("UpdateGCSafePoint(0) = %d, %v", sp, err)
	}
	c.SetPDDown(true) // no network PD: nothing to take down
	if _, _, err := c.PD().GetTS(ctx); err != nil {
		t.Fatal(err)
	}
}
