// Package embedetcd runs an etcd server inside the process, on loopback:
// the stand-in for PD's etcd in the playground and in tests.
package embedetcd

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// Config says where the server keeps data and listens.
type Config struct {
	// Dir holds the data; reuse it to restart with the same contents.
	Dir string
	// ClientURL is where clients connect, e.g. "http://127.0.0.1:2379";
	// port 0 picks a free port. Default "http://127.0.0.1:0".
	ClientURL string
	// Fast shortens the election timeout so the single member is ready in
	// tens of milliseconds (tests, playground).
	Fast bool
}

// Server is a running embedded etcd.
type Server struct {
	etcd      *embed.Etcd
	closeOnce sync.Once
}

// Start starts the server and waits until it serves, or until ctx ends.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("embedded etcd needs a data dir")
	}
	if cfg.ClientURL == "" {
		cfg.ClientURL = "http://127.0.0.1:0"
	}
	client, err := url.Parse(cfg.ClientURL)
	if err != nil || client.Host == "" {
		return nil, fmt.Errorf("bad client URL %q", cfg.ClientURL)
	}
	peer, _ := url.Parse("http://127.0.0.1:0")

	ec := embed.NewConfig()
	ec.Dir = cfg.Dir
	ec.Name = "logbackup"
	ec.LogLevel = "fatal" // shutdown otherwise logs harmless "use of closed network connection" noise
	if cfg.Fast {
		ec.TickMs, ec.ElectionMs = 10, 50
	}
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)

	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return &Server{etcd: e}, nil
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

// Close stops the server; its data stays in Dir. Closing twice is
// harmless. With clients holding watch streams it can take etcd's request
// timeout (about 5 s): etcd stops gRPC gracefully and only then by force.
func (s *Server) Close() { s.closeOnce.Do(s.etcd.Close) }
