package embedetcd_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"logbackup/meta/embedetcd"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// etcd's server and client leave these behind until process exit.
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/pkg/v3/logutil.(*MergeLogger).outputLoop"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
	)
}

func start(t *testing.T, cfg embedetcd.Config) *embedetcd.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := embedetcd.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func client(t *testing.T, ep string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	return cli
}

// TestRestartSamePortAndData: a closed server started again with its port
// and data dir serves the same data at the same endpoint.
func TestRestartSamePortAndData(t *testing.T) {
	dir := t.TempDir()
	s := start(t, embedetcd.Config{Dir: dir, Fast: true})
	ep := s.Endpoint()
	if strings.HasSuffix(ep, ":0") || !strings.HasPrefix(ep, "127.0.0.1:") {
		t.Fatalf("endpoint %q is not a real loopback port", ep)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cli := client(t, ep)
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	cli.Close()
	s.Close()
	s.Close() // harmless twice

	s = start(t, embedetcd.Config{Dir: dir, ClientURL: "http://" + ep, Fast: true})
	defer s.Close()
	if s.Endpoint() != ep {
		t.Fatalf("restarted at %s, want %s", s.Endpoint(), ep)
	}
	cli = client(t, ep)
	defer cli.Close()
	resp, err := cli.Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("after restart: %v %v", resp, err)
	}
}

func TestStartRefusals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := embedetcd.Start(ctx, embedetcd.Config{}); err == nil {
		t.Error("no data dir accepted")
	}
	if _, err := embedetcd.Start(ctx, embedetcd.Config{Dir: t.TempDir(), ClientURL: "::bad"}); err == nil {
		t.Error("bad client URL accepted")
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if s, err := embedetcd.Start(ctx, embedetcd.Config{Dir: t.TempDir(), ClientURL: "http://" + busy.Addr().String(), Fast: true}); err == nil {
		s.Close()
		t.Error("started on a port in use")
	}
}
