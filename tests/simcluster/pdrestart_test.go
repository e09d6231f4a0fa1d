package simcluster_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	pd "github.com/tikv/pd/client"

	"logbackup/meta"
	"logbackup/tests/eventually"
	"logbackup/tests/simcluster"
)

// TestStopAndStartPD: a stopped PD refuses PD and etcd calls on its
// address; started again it serves both on the same address with the same
// cluster id and GC state, and clients made before the stop carry on.
func TestStopAndStartPD(t *testing.T) {
	c := startPD(t, simcluster.Config{Stores: 1, DataDir: t.TempDir()})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	addr := c.PDAddr()
	pdc := newPDClient(t, c, pd.SecurityOption{})
	cli, err := meta.Dial(ctx, meta.DialConfig{Endpoints: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ts, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pdc.UpdateServiceGCSafePoint(ctx, "svc", 3600, ts); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}

	if err := c.StopPD(); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, time.Second)
	if _, _, err := pdc.GetTS(short); err == nil {
		t.Fatal("a stopped PD handed out a timestamp")
	}
	cancelShort()
	short, cancelShort = context.WithTimeout(ctx, time.Second)
	if _, err := cli.Get(short, "/k"); err == nil {
		t.Fatal("a stopped PD's etcd answered")
	}
	cancelShort()
	if _, err := c.TSO(ctx); err != nil {
		t.Fatalf("the in-process PD stopped too: %v", err)
	}

	if err := c.StartPD(ctx); err != nil {
		t.Fatal(err)
	}
	if c.PDAddr() != addr {
		t.Fatalf("PD came back at %s, was %s", c.PDAddr(), addr)
	}
	eventually.NoError(t, 60*time.Second, func(ctx context.Context) error {
		rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
		defer rcancel()
		_, _, tsErr := pdc.GetTS(rctx)
		resp, getErr := cli.Get(rctx, "/k")
		if tsErr != nil || getErr != nil {
			return fmt.Errorf("tso %v, etcd %v", tsErr, getErr)
		}
		if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
			t.Fatalf("etcd lost its data across the restart: %v", resp.Kvs)
		}
		return nil
	}, "the clients to reconnect")
	if got := pdc.GetClusterID(ctx); got != c.ClusterID() {
		t.Fatalf("cluster id %d, want %d", got, c.ClusterID())
	}
	if sp, ok := c.ServiceSafePoints()["svc"]; !ok || sp.SafePoint != ts {
		t.Fatalf("service safepoint after restart: %+v %v", sp, ok)
	}
	// GC changes are persisted in the new etcd.
	if _, err := pdc.UpdateServiceGCSafePoint(ctx, "svc2", 3600, ts); err != nil {
		t.Fatalf("a GC change after the restart: %v", err)
	}
	if _, err := meta.GCSafePoint(ctx, pdc); err != nil {
		t.Fatalf("PD's GC safe point after the restart: %v", err)
	}
}

// TestStartPDWaitsForItsAddress: while PD was stopped, something else held
// its address for a moment (in CI, another test binary's connection had it
// as its local port); StartPD waits for it rather than fail.
func TestStartPDWaitsForItsAddress(t *testing.T) {
	c := startPD(t, simcluster.Config{Stores: 1, DataDir: t.TempDir()})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	addr := c.PDAddr()
	if err := c.StopPD(); err != nil {
		t.Fatal(err)
	}
	var l net.Listener
	eventually.NoError(t, 10*time.Second, func(context.Context) error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	}, "to take PD's address")
	released := make(chan struct{})
	go func() {
		time.Sleep(time.Second)
		l.Close()
		close(released)
	}()
	if err := c.StartPD(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-released:
	default:
		t.Fatal("StartPD returned while its address was still held")
	}
	if c.PDAddr() != addr {
		t.Fatalf("PD came back at %s, was %s", c.PDAddr(), addr)
	}
	if _, err := c.TSO(ctx); err != nil {
		t.Fatal(err)
	}
}
