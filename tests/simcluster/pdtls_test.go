package simcluster_test

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/opt"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"logbackup/tests/certtest"
	"logbackup/tests/simcluster"
)

// TestPDServerTLS: with Config.TLS, PD (gRPC and etcd on one port) and
// every store's CDC server serve mutual TLS. Clients with the generated
// certificates work; a client that trusts another CA, or speaks plain
// text, fails with an error before its deadline.
func TestPDServerTLS(t *testing.T) {
	certs := certtest.New(t)
	c := startPD(t, simcluster.Config{TLS: &simcluster.TLSFiles{CA: certs.CA, Cert: certs.ServerCert, Key: certs.ServerKey}}, "m")
	ctx := testCtx(t)

	good := pd.SecurityOption{CAPath: certs.CA, CertPath: certs.ClientCert, KeyPath: certs.ClientKey}
	cli := newPDClient(t, c, good)
	if cli.GetClusterID(ctx) != c.ClusterID() {
		t.Fatalf("cluster id %d, want %d", cli.GetClusterID(ctx), c.ClusterID())
	}
	if got, want := cli.GetLeaderURL(), "https://"+c.PDAddr(); got != want {
		t.Fatalf("leader %q, want %q", got, want)
	}
	if _, _, err := cli.GetTS(ctx); err != nil {
		t.Fatalf("TSO over TLS: %v", err)
	}
	checkRegions(t, ctx, c, cli)
	stores, err := cli.GetAllStores(ctx)
	if err != nil || len(stores) != len(c.StoreIDs()) {
		t.Fatalf("stores over TLS: %v, %v", stores, err)
	}

	clientTLS, err := certs.ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	if err := etcdPut(c.PDAddr(), clientTLS, 20*time.Second); err != nil {
		t.Fatalf("etcd over TLS: %v", err)
	}
	// Each store's CDC server (its address in PD) speaks TLS.
	for _, s := range stores {
		if err := storeHealth(s.Address, credentials.NewTLS(clientTLS), true); err != nil {
			t.Fatalf("store %d over TLS: %v", s.Id, err)
		}
	}

	// The wrong CA: the server's certificate does not verify.
	other := certtest.New(t)
	wrong := pd.SecurityOption{CAPath: other.CA, CertPath: other.ClientCert, KeyPath: other.ClientKey}
	// One start-up attempt, so the refusal comes at once. (The pd client
	// reports "failed to get cluster id" and logs the handshake error; the
	// same client with the right files worked above.)
	if bad, err := dialPD(c.PDAddr(), wrong, 20*time.Second, opt.WithMaxErrorRetry(1)); err == nil {
		bad.Close()
		t.Fatal("pd client with another CA connected")
	}
	wrongTLS, err := other.ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	// etcd's client retries the handshake until its deadline.
	if err := etcdPut(c.PDAddr(), wrongTLS, 3*time.Second); err == nil {
		t.Fatal("etcd client with another CA: no error")
	}
	if err := storeHealth(stores[0].Address, credentials.NewTLS(wrongTLS), false); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("store with another CA: %v, want a certificate error", err)
	}
	// Plain text to a TLS port fails.
	if err := storeHealth(stores[0].Address, insecure.NewCredentials(), false); err == nil {
		t.Fatal("plain-text client to a TLS store: no error")
	}
	if bad, err := dialPD(c.PDAddr(), pd.SecurityOption{}, 20*time.Second, opt.WithMaxErrorRetry(1)); err == nil {
		bad.Close()
		t.Fatal("plain-text pd client connected to a TLS PD")
	}
	// A restarted CDC server keeps serving TLS.
	if err := c.RestartCDC(stores[0].Id); err != nil {
		t.Fatal(err)
	}
	if err := storeHealth(stores[0].Address, credentials.NewTLS(clientTLS), true); err != nil {
		t.Fatalf("restarted store over TLS: %v", err)
	}
	if err := storeHealth(stores[0].Address, insecure.NewCredentials(), false); err == nil {
		t.Fatal("restarted store accepts plain text")
	}
}

func etcdPut(addr string, cfg *tls.Config, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{addr}, TLS: cfg, DialTimeout: timeout, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	_, err = cli.Put(ctx, "/probe", "x")
	return err
}

// storeHealth asks a store's gRPC health service (what client-go's
// liveness check asks). Expecting success it waits for the connection (a
// loaded machine may be slow); expecting failure it takes the first
// connection error, so a refusal comes at once.
func storeHealth(addr string, creds credentials.TransportCredentials, expectOK bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(expectOK))
	if err != nil {
		return err
	}
	if resp.Status != healthpb.HealthCheckResponse_SERVING {
		return &statusError{resp.Status.String()}
	}
	return nil
}

type statusError struct{ s string }

func (e *statusError) Error() string { return "health: " + strings.ToLower(e.s) }

// TestTLSBadFiles: unreadable or mismatched TLS files fail Start with an
// error.
func TestTLSBadFiles(t *testing.T) {
	certs := certtest.New(t)
	ctx := testCtx(t)
	for name, files := range map[string]*simcluster.TLSFiles{
		"missing key":     {CA: certs.CA, Cert: certs.ServerCert, Key: certs.Dir + "/nope.pem"},
		"key of another":  {CA: certs.CA, Cert: certs.ServerCert, Key: certs.ClientKey},
		"CA is not a PEM": {CA: certs.Dir, Cert: certs.ServerCert, Key: certs.ServerKey},
	} {
		for _, serve := range []bool{false, true} {
			c, err := simcluster.Start(ctx, simcluster.Config{TLS: files, ServePD: serve})
			if err == nil {
				c.Close()
				t.Errorf("%s (ServePD %v): started", name, serve)
			}
		}
	}
}
