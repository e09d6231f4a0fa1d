package simcluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/rand"
	"os"
	"time"

	"github.com/pingcap/kvproto/pkg/pdpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"logbackup/meta/embedetcd"
)

// TLSFiles are PEM files for serving with mutual TLS, as PD and TiKV take
// them (cacert, cert, key): the server presents Cert and requires clients to
// present a certificate signed by CA.
type TLSFiles struct {
	CA, Cert, Key string
}

// serverTLS loads the files into a server configuration.
func (f *TLSFiles) serverTLS() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("load TLS key pair: %w", err)
	}
	ca, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("read TLS CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("TLS CA %s holds no certificate", f.CA)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}, nil
}

// storeServerOptions are the gRPC options of every store's CDC server:
// TLS credentials when the cluster serves TLS.
func storeServerOptions(cfg Config) ([]grpc.ServerOption, error) {
	if cfg.TLS == nil {
		return nil, nil
	}
	tc, err := cfg.TLS.serverTLS()
	if err != nil {
		return nil, fmt.Errorf("store TLS: %w", err)
	}
	return []grpc.ServerOption{grpc.Creds(credentials.NewTLS(tc))}, nil
}

// newClusterID makes an id the way PD does: the bootstrap time in seconds
// in the high half, random bits in the low half.
func newClusterID(rng *rand.Rand) uint64 {
	return uint64(time.Now().Unix())<<32 | uint64(rng.Uint32()|1)
}

// startPD starts PD's network face: an embedded etcd whose client port
// also serves pdpb.PD, then writes PD's bootstrap keys into that etcd.
func (c *Cluster) startPD(ctx context.Context) error {
	dir := c.cfg.DataDir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "simcluster-pd-")
		if err != nil {
			return fmt.Errorf("pd data dir: %w", err)
		}
		dir, c.pdTempDir = tmp, tmp
	}
	srv := newPDServer(c)
	ecfg := embedetcd.Config{Dir: dir, Name: "pd-simcluster", Fast: true,
		ServiceRegister: func(g *grpc.Server) { pdpb.RegisterPDServer(g, srv) },
		HTTPHandlers:    pdHTTPHandlers(srv)}
	if f := c.cfg.TLS; f != nil {
		ecfg.TLS = &embedetcd.TLS{CertFile: f.Cert, KeyFile: f.Key, CAFile: f.CA}
	}
	e, err := embedetcd.Start(ctx, ecfg)
	if err != nil {
		return fmt.Errorf("pd: %w", err)
	}
	c.etcd, c.pdServer = e, srv
	if err := c.pd.bootstrap(ctx, e.Client()); err != nil {
		return fmt.Errorf("pd bootstrap: %w", err)
	}
	m := e.Member()
	srv.setMember(&pdpb.Member{Name: m.Name, MemberId: m.ID, PeerUrls: []string{m.PeerURL}, ClientUrls: []string{m.ClientURL}})
	return nil
}

// stopPD ends PD's streams, stops its etcd and removes a temporary data
// dir.
func (c *Cluster) stopPD() {
	if c.pdServer != nil {
		c.pdServer.stop()
	}
	if c.etcd != nil {
		c.etcd.Close()
	}
	if c.pdTempDir != "" {
		_ = os.RemoveAll(c.pdTempDir)
	}
}

// PDAddr is where PD serves (Config.ServePD): "127.0.0.1:port", one port
// for both PD's gRPC API and its etcd, as PD's client URL; pass it to
// pd.NewClient and to an etcd client (over TLS with Config.TLS). It is ""
// when PD is not served.
func (c *Cluster) PDAddr() string {
	if c.ext != nil {
		return c.ext.addr
	}
	if c.etcd == nil {
		return ""
	}
	return c.etcd.Endpoint()
}

// SetPDDown makes PD's gRPC API answer Unavailable (true) and end its open
// streams, or serve again (false). etcd on the same port keeps serving, and
// so does the in-process PD(): only clients of the network API see the
// outage.
func (c *Cluster) SetPDDown(down bool) {
	if c.pdServer != nil {
		c.pdServer.setDown(down)
	}
}
