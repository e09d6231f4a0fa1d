package simcluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/pingcap/kvproto/pkg/pdpb"
	"google.golang.org/grpc"

	"logbackup/meta/embedetcd"
)

// StopPD stops PD's network face the way a PD process dies: its gRPC API
// and its etcd stop answering on PDAddr (connections are refused), and the
// data stays in the data dir. The in-process PD() keeps serving timestamps
// and regions to the writer, but changes of GC state fail until StartPD, as
// PD persists them in its etcd. Not to be called concurrently with
// StartPD, PDAddr or SetPDDown.
func (c *Cluster) StopPD() error {
	if c.etcd == nil {
		return errors.New("stop PD: PD is not served (Config.ServePD)")
	}
	c.pdServer.stop()
	c.etcd.Close() // harmless when already stopped
	return nil
}

// StartPD starts PD again after StopPD: a new etcd on the same address and
// data dir, serving pdpb.PD beside it. Clients reconnect by themselves.
// Not to be called concurrently with StopPD, PDAddr or SetPDDown.
func (c *Cluster) StartPD(ctx context.Context) error {
	if c.etcd == nil {
		return errors.New("start PD: PD is not served (Config.ServePD)")
	}
	dir := c.cfg.DataDir
	if dir == "" {
		dir = c.pdTempDir
	}
	old := c.etcd.Member()
	srv := newPDServer(c)
	// The same settings as startPD, plus the address the stopped server had.
	ecfg := embedetcd.Config{Dir: dir, Name: old.Name, Fast: true, ClientURL: old.ClientURL,
		ServiceRegister: func(g *grpc.Server) { pdpb.RegisterPDServer(g, srv) },
		HTTPHandlers:    pdHTTPHandlers(srv)}
	if f := c.cfg.TLS; f != nil {
		ecfg.TLS = &embedetcd.TLS{CertFile: f.Cert, KeyFile: f.Key, CAFile: f.CA}
	}
	// The address was free only while PD ran on it: another process on
	// the machine may hold it for a while meanwhile, e.g. as the local
	// port of a connection (a CI run of parallel test binaries did), so a
	// busy address is tried again, as long as ctx allows, up to
	// restartBindWait.
	var e *embedetcd.Server
	var err error
	deadline := time.Now().Add(restartBindWait)
	for {
		e, err = embedetcd.Start(ctx, ecfg)
		if err == nil || !addrInUse(err) || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("start PD again: %w (%w)", err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err != nil {
		return fmt.Errorf("start PD again: %w", err)
	}
	c.etcd, c.pdServer = e, srv
	if err := c.pd.bootstrap(ctx, e.Client()); err != nil {
		return fmt.Errorf("pd bootstrap: %w", err)
	}
	m := e.Member()
	srv.setMember(&pdpb.Member{Name: m.Name, MemberId: m.ID, PeerUrls: []string{m.PeerURL}, ClientUrls: []string{m.ClientURL}})
	return nil
}

// restartBindWait bounds StartPD's wait for its old address to be free.
const restartBindWait = 30 * time.Second

func addrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}
