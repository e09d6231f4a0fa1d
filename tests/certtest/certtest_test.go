package certtest_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	"logbackup/tests/certtest"
)

// serve accepts TLS connections with cfg and echoes one byte on each.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	lis, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
				b := make([]byte, 1)
				if _, err := conn.Read(b); err == nil {
					_, _ = conn.Write(b)
				}
			}()
		}
	}()
	return lis.Addr().String()
}

// echo connects, sends a byte and reads it back. A refused client
// certificate surfaces here: in TLS 1.3 the server checks it after the
// client's handshake has returned.
func echo(addr string, cfg *tls.Config) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := tls.Dialer{Config: cfg}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte{'x'}); err != nil {
		return err
	}
	b := make([]byte, 1)
	if _, err := conn.Read(b); err != nil {
		return err
	}
	if b[0] != 'x' {
		return fmt.Errorf("echo %q", b)
	}
	return nil
}

// TestMutualTLS: the generated server certificate verifies for a dial to
// 127.0.0.1, the client certificate is accepted, and a client that trusts
// another set's CA or presents no certificate is refused.
func TestMutualTLS(t *testing.T) {
	f := certtest.New(t)
	other := certtest.New(t)
	srvCfg, err := f.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, srvCfg)

	good, err := f.ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	if err := echo(addr, good); err != nil {
		t.Fatalf("client with the right CA and certificate refused: %v", err)
	}

	wrongCA, err := other.ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	if err := echo(addr, wrongCA); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("client trusting another CA: err = %v, want a certificate error", err)
	}

	noCert := good.Clone()
	noCert.Certificates = nil
	if err := echo(addr, noCert); err == nil {
		t.Fatal("client without a certificate accepted")
	}
}
