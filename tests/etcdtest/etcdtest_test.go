package etcdtest_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"logbackup/tests/etcdtest"
	"logbackup/tests/eventually"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/pkg/v3/logutil.(*MergeLogger).outputLoop"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
	)
}

// TestStopRestart: while stopped, requests fail; after Restart the same
// endpoint serves the same data, and the old client reconnects.
func TestStopRestart(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ep := srv.Endpoint()
	ctx := context.Background()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	srv.Stop(t)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := cli.Get(short, "k")
	cancel()
	if err == nil {
		t.Fatal("a stopped server answered")
	}
	srv.Stop(t) // harmless twice
	srv.Restart(t)
	if srv.Endpoint() != ep {
		t.Fatalf("endpoint moved from %s to %s", ep, srv.Endpoint())
	}
	eventually.NoError(t, 20*time.Second, func(ctx context.Context) error {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		resp, err := cli.Get(rctx, "k")
		if err != nil {
			return err
		}
		if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
			t.Fatalf("data lost across restart: %v", resp.Kvs)
		}
		return nil
	}, "the old client to reconnect")
	if _, err := srv.Client(t).Get(ctx, "k"); err != nil {
		t.Fatal(err)
	}
}
