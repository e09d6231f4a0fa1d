// Package embedetcd runs an etcd server inside the process, on loopback:
// the stand-in for PD's etcd in the playground and in tests.
package embedetcd

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
	"google.golang.org/grpc"
)

// Config says where the server keeps data and listens.
type Config struct {
	// Dir holds the data; reuse it to restart with the same contents.
	Dir string
	// ClientURL is where clients connect, e.g. "http://127.0.0.1:2379";
	// port 0 picks a free port. Default "http://127.0.0.1:0", or
	// "https://127.0.0.1:0" with TLS. The scheme must be https exactly when
	// TLS is set.
	ClientURL string
	// Name is the member's name (default "logbackup"). PD names its etcd
	// member after itself; clients see it in the member list.
	Name string
	// Fast shortens the election timeout so the single member is ready in
	// tens of milliseconds (tests, playground).
	Fast bool
	// TLS serves the client URL over TLS; nil serves plain text. Peer
	// traffic (to itself only) stays plain.
	TLS *TLS
	// ServiceRegister registers more gRPC services on the server's client
	// gRPC server, so that they share the client port with etcd's API — the
	// way PD serves pdpb.PD. etcd calls it once for each gRPC server it
	// builds (one per client URL scheme); it must not block.
	ServiceRegister func(*grpc.Server)
	// HTTPHandlers are served on the client port too, by path pattern (as
	// http.ServeMux takes them), beside etcd's own HTTP endpoints — the way
	// PD serves its HTTP API (/pd/api/v1/) on its client URL: plain HTTP
	// without TLS, HTTPS with the same certificates with it.
	HTTPHandlers map[string]http.Handler
}

// TLS names the PEM files of the server's certificate and of the CA that
// signs client certificates.
type TLS struct {
	CertFile, KeyFile string
	// CAFile, when set, makes the server require client certificates
	// signed by this CA (mutual TLS, as PD and TiKV configure it).
	CAFile string
}

// Server is a running embedded etcd.
type Server struct {
	etcd      *embed.Etcd
	name      string
	scheme    string
	closeOnce sync.Once

	clientOnce sync.Once
	client     *clientv3.Client
}

// Start starts the server and waits until it serves, or until ctx ends.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("embedded etcd needs a data dir")
	}
	scheme := "http"
	if cfg.TLS != nil {
		scheme = "https"
		if cfg.TLS.CertFile == "" || cfg.TLS.KeyFile == "" {
			return nil, fmt.Errorf("embedded etcd: TLS needs a certificate and a key file")
		}
	}
	if cfg.ClientURL == "" {
		cfg.ClientURL = scheme + "://127.0.0.1:0"
	}
	client, err := url.Parse(cfg.ClientURL)
	if err != nil || client.Host == "" {
		return nil, fmt.Errorf("bad client URL %q", cfg.ClientURL)
	}
	if client.Scheme != scheme {
		// etcd would serve an http URL in plain text even with TLS files.
		return nil, fmt.Errorf("client URL %q: scheme must be %s (TLS %v)", cfg.ClientURL, scheme, cfg.TLS != nil)
	}
	peer, _ := url.Parse("http://127.0.0.1:0")
	if cfg.Name == "" {
		cfg.Name = "logbackup"
	}

	ec := embed.NewConfig()
	ec.Dir = cfg.Dir
	ec.Name = cfg.Name
	ec.LogLevel = "fatal" // shutdown otherwise logs harmless "use of closed network connection" noise
	if cfg.Fast {
		ec.TickMs, ec.ElectionMs = 10, 50
	}
	if cfg.TLS != nil {
		ec.ClientTLSInfo = transport.TLSInfo{
			CertFile: cfg.TLS.CertFile, KeyFile: cfg.TLS.KeyFile,
			TrustedCAFile: cfg.TLS.CAFile, ClientCertAuth: cfg.TLS.CAFile != "",
		}
	}
	ec.ServiceRegister = cfg.ServiceRegister
	ec.UserHandlers = cfg.HTTPHandlers
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)

	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return &Server{etcd: e, name: cfg.Name, scheme: scheme}, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd failed: %w", err)
	case <-ctx.Done():
		e.Server.Stop()
		e.Close()
		return nil, fmt.Errorf("embedded etcd not ready: %w", ctx.Err())
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		e.Close()
		return nil, fmt.Errorf("embedded etcd not ready after 60s")
	}
}

// Endpoint is the real host:port clients connect to (with port 0 the
// configured URL would say :0).
func (s *Server) Endpoint() string { return s.etcd.Clients[0].Addr().String() }

// Member describes the server as a member of its (single-member) etcd
// cluster, with real ports.
type Member struct {
	ID        uint64
	Name      string
	ClientURL string // scheme://host:port
	PeerURL   string
}

// Member returns this server's member description.
func (s *Server) Member() Member {
	return Member{
		ID:        uint64(s.etcd.Server.MemberID()),
		Name:      s.name,
		ClientURL: s.scheme + "://" + s.Endpoint(),
		PeerURL:   "http://" + s.etcd.Peers[0].Addr().String(),
	}
}

// Client is an in-process client of this server (no network, no TLS), for
// code that runs beside the server, as PD's own storage does. It is made
// on first use and closed by Close; after Close it is nil.
func (s *Server) Client() *clientv3.Client {
	s.clientOnce.Do(func() { s.client = v3client.New(s.etcd.Server) })
	return s.client
}

// Close stops the server; its data stays in Dir. Closing twice is
// harmless. With clients holding watch streams it can take etcd's request
// timeout (about 5 s): etcd stops gRPC gracefully and only then by force.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		// Marks the client closed; Close below stops the server under it.
		s.clientOnce.Do(func() {})
		if s.client != nil {
			_ = s.client.Close()
		}
		s.etcd.Close()
	})
}
