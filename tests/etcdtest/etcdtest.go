// Package etcdtest gives tests a real etcd server on loopback that can be
// stopped and restarted on the same endpoint.
package etcdtest

import (
	"context"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"logbackup/meta/embedetcd"
)

// Server is an embedded etcd owned by one test.
type Server struct {
	dir      string
	endpoint string

	mu  sync.Mutex
	srv *embedetcd.Server
}

// Start starts a server in a temp dir; it stops when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{dir: t.TempDir()}
	s.start(t, "http://127.0.0.1:0")
	s.endpoint = s.srv.Endpoint()
	t.Cleanup(func() { s.Stop(t) })
	return s
}

func (s *Server) start(t testing.TB, url string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The port of a just-closed server can linger briefly; retry a restart
	// for a few seconds before failing.
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; {
		var srv *embedetcd.Server
		srv, err = embedetcd.Start(ctx, embedetcd.Config{Dir: s.dir, ClientURL: url, Fast: true})
		if err == nil {
			s.mu.Lock()
			s.srv = srv
			s.mu.Unlock()
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("start etcd: %v", err)
}

// Endpoint is host:port; it stays the same across Stop and Restart.
func (s *Server) Endpoint() string { return s.endpoint }

// Client returns a client that is closed when the test ends.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{s.endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Stop stops the server, keeping its data. Stopping twice is harmless.
func (s *Server) Stop(t testing.TB) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		s.srv.Close()
		s.srv = nil
	}
}

// Restart starts the stopped server again on the same endpoint and data.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop(t)
	s.start(t, "http://"+s.endpoint)
}
