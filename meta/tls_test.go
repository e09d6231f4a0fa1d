package meta

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pki is a CA with a server and a client certificate, written as PEM
// files.
type pki struct {
	dir                                              string
	ca, serverCert, serverKey, clientCert, clientKey string
	otherKey                                         string // a key that matches no certificate
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	p := &pki{dir: dir}
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	keyPEM := func(name string, k *ecdsa.PrivateKey) string {
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(name, "EC PRIVATE KEY", der)
	}
	caKey := newKey()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	p.ca = write("ca.pem", "CERTIFICATE", caDER)
	leaf := func(serial int64, usage x509.ExtKeyUsage, certName, keyName string) (string, string) {
		k := newKey()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: certName},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return write(certName, "CERTIFICATE", der), keyPEM(keyName, k)
	}
	p.serverCert, p.serverKey = leaf(2, x509.ExtKeyUsageServerAuth, "server.pem", "server-key.pem")
	p.clientCert, p.clientKey = leaf(3, x509.ExtKeyUsageClientAuth, "client.pem", "client-key.pem")
	p.otherKey = keyPEM("other-key.pem", newKey())
	return p
}

func TestTLSFilesValidate(t *testing.T) {
	p := newPKI(t)
	garbage := filepath.Join(p.dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(p.dir, "missing.pem")
	cases := []struct {
		name  string
		files TLSFiles
		want  string // "" = valid; else a part of the error
	}{
		{"none: plaintext", TLSFiles{}, ""},
		{"ca only", TLSFiles{CA: p.ca}, ""},
		{"mutual", TLSFiles{CA: p.ca, Cert: p.clientCert, Key: p.clientKey}, ""},
		{"cert and key without ca", TLSFiles{Cert: p.clientCert, Key: p.clientKey}, "--cert and --key are given without --ca"},
		{"cert without ca", TLSFiles{Cert: p.clientCert}, "--cert is given without --ca"},
		{"key without ca", TLSFiles{Key: p.clientKey}, "--key is given without --ca"},
		{"cert without key", TLSFiles{CA: p.ca, Cert: p.clientCert}, "--cert " + p.clientCert + " is given without --key"},
		{"key without cert", TLSFiles{CA: p.ca, Key: p.clientKey}, "--key " + p.clientKey + " is given without --cert"},
		{"missing ca", TLSFiles{CA: missing}, "--ca " + missing + ": cannot read"},
		{"ca is a directory", TLSFiles{CA: p.dir}, "--ca " + p.dir + " is a directory"},
		{"ca is not PEM", TLSFiles{CA: garbage}, "--ca " + garbage + " holds no PEM certificate"},
		{"ca is a key", TLSFiles{CA: p.clientKey}, "--ca " + p.clientKey + " holds no PEM certificate"},
		{"missing cert", TLSFiles{CA: p.ca, Cert: missing, Key: p.clientKey}, "--cert " + missing + ": cannot read"},
		{"missing key", TLSFiles{CA: p.ca, Cert: p.clientCert, Key: missing}, "--key " + missing + ": cannot read"},
		{"cert is not PEM", TLSFiles{CA: p.ca, Cert: garbage, Key: p.clientKey}, "--cert " + garbage + " and --key " + p.clientKey + " are not"},
		{"key does not match", TLSFiles{CA: p.ca, Cert: p.clientCert, Key: p.otherKey}, "--key " + p.otherKey + " are not a valid"},
	}
	for _, c := range cases {
		cfg, err := c.files.ClientConfig()
		if c.want == "" {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			if (cfg == nil) != !c.files.Enabled() {
				t.Errorf("%s: config %v for files %+v", c.name, cfg, c.files)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) || cfg != nil {
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
		}
		if c.files.Validate() == nil {
			t.Errorf("%s: Validate accepts what ClientConfig refuses", c.name)
		}
	}
}

// TestTLSClientConfigWorks: the configuration really does mutual TLS
// against a server that requires a client certificate from our CA.
func TestTLSClientConfigWorks(t *testing.T) {
	p := newPKI(t)
	serverPair, err := tls.LoadX509KeyPair(p.serverCert, p.serverKey)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := loadCA(p.ca)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{serverPair},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	done := make(chan error, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		done <- c.(*tls.Conn).Handshake()
	}()
	cfg, err := TLSFiles{CA: p.ca, Cert: p.clientCert, Key: p.clientKey}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	d := tls.Dialer{Config: cfg, NetDialer: &net.Dialer{Timeout: 20 * time.Second}}
	conn, err := d.DialContext(context.Background(), "tcp", lis.Addr().String())
	if err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	conn.Close()
	if err := <-done; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
}

// TestDialRefusesBadTLSBeforeDialling: Dial with a certificate but no CA
// fails at once, naming the flag, instead of connecting in plaintext.
func TestDialRefusesBadTLSBeforeDialling(t *testing.T) {
	p := newPKI(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := lis.Accept(); err == nil {
			accepted <- struct{}{}
			c.Close()
		}
	}()
	for _, cfg := range []DialConfig{
		{CertFile: p.clientCert, KeyFile: p.clientKey},
		{CAFile: filepath.Join(p.dir, "nope.pem")},
		{CAFile: p.ca, CertFile: p.clientCert, KeyFile: p.otherKey},
	} {
		cfg.Endpoints = []string{lis.Addr().String()}
		cfg.DialTimeout = 10 * time.Second
		cli, err := Dial(context.Background(), cfg)
		if err == nil {
			cli.Close()
			t.Fatalf("Dial(%+v) succeeded", cfg)
		}
		if !strings.Contains(err.Error(), "TLS: --") {
			t.Fatalf("Dial error does not name the TLS flag: %v", err)
		}
	}
	select {
	case <-accepted:
		t.Fatal("Dial connected although its TLS settings were invalid")
	default:
	}
}
