package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"logbackup/meta"
	"logbackup/streamagent"
	"logbackup/tests/certtest"
	"logbackup/tests/simcluster"
)

// TestTLSEverywhere: PD, its etcd and every store's CDC service require
// mutual TLS. The CLI (PD and etcd) and the agent (PD, etcd and TiKV's CDC)
// back up with the given certificates; with a CA that did not sign the
// cluster's certificates, or with no TLS at all, they fail with a clear
// error instead of downgrading or hanging.
func TestTLSEverywhere(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	certs := certtest.New(t)
	c := startPDCluster(t, ctx, simcluster.Config{Stores: 1, TLS: &simcluster.TLSFiles{CA: certs.CA, Cert: certs.ServerCert, Key: certs.ServerKey}})
	good := meta.DialConfig{Endpoints: []string{c.PDAddr()}, CAFile: certs.CA, CertFile: certs.ClientCert, KeyFile: certs.ClientKey, DialTimeout: 5 * time.Second}
	cli, err := meta.Dial(ctx, good)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	pdc, err := meta.DialPD(ctx, good)
	if err != nil {
		t.Fatal(err)
	}
	defer pdc.Close()
	m := meta.NewClient(cli)
	dir := filepath.Join(t.TempDir(), "b")
	r := brRun{t: t, ep: c.PDAddr()}
	r.ok("stream", "start", "--task-name", "pitr", "--storage", "local://"+dir, "--ca", certs.CA, "--cert", certs.ClientCert, "--key", certs.ClientKey)
	start, _ := c.TSO(ctx)

	tlsCfg, err := certs.ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	a, err := streamagent.New(streamagent.Config{StoreID: c.StoreIDs()[0], PD: pdc, Meta: m, ClusterID: c.ClusterID(), TLS: tlsCfg,
		FlushInterval: 100 * time.Millisecond, CoordinatorInterval: 50 * time.Millisecond, TempDir: t.TempDir(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, nil)
	if err != nil {
		t.Fatal(err)
	}
	actx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); a.Run(actx) }()
	defer func() { stop(); <-done }()
	for i := 0; i < 20; i++ {
		if _, err := c.Put(ctx, []byte(fmt.Sprintf("t%02d", i)), []byte("over tls")); err != nil {
			t.Fatal(err)
		}
	}
	end, _ := c.TSO(ctx)
	h := &harness{t: t, ctx: ctx, c: c, m: m}
	global := h.waitGlobal(end)
	if n := assertBackedUp(t, ctx, "local://"+dir, c, start, global); n != 20 {
		t.Fatalf("%d versions backed up over TLS, want 20", n)
	}

	// A CA that signed nothing of the cluster's, and no TLS at all.
	other := certtest.New(t)
	bad := good
	bad.CAFile, bad.CertFile, bad.KeyFile = other.CA, other.ClientCert, other.ClientKey
	bad.DialTimeout = 2 * time.Second
	for name, cfg := range map[string]meta.DialConfig{"wrong CA": bad, "plaintext": {Endpoints: good.Endpoints, DialTimeout: 2 * time.Second}} {
		began := time.Now()
		if _, err := meta.DialPD(ctx, cfg); err == nil || !strings.Contains(err.Error(), "cannot reach PD") {
			t.Errorf("%s: PD dial: %v", name, err)
		}
		if _, err := meta.Dial(ctx, cfg); err == nil || !strings.Contains(err.Error(), "cannot reach etcd") {
			t.Errorf("%s: etcd dial: %v", name, err)
		}
		if took := time.Since(began); took > 20*time.Second {
			t.Errorf("%s: failing took %s", name, took)
		}
	}
	res := r.fails("cannot connect", "stream", "status", "--ca", other.CA, "--cert", other.ClientCert, "--key", other.ClientKey, "--dial-timeout", "2s")
	if !strings.Contains(res.stderr, "Hint:") {
		t.Fatalf("no hint: %s", res.stderr)
	}
}
