// Package certtest makes TLS material for tests: a fresh certificate
// authority and a server and a client certificate it signed, written as PEM
// files (as PD, TiKV, etcd and BR take them: --cacert/--cert/--key).
//
// The server certificate names the loopback host (localhost, 127.0.0.1,
// ::1), so a client dialling 127.0.0.1:port verifies it. Every Generate
// makes a new CA, so two sets never trust each other: a client given one
// set's CA against a server of the other fails verification — the "wrong
// CA" case.
package certtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Files are the paths of one generated set, all PEM.
type Files struct {
	Dir        string
	CA         string // the CA certificate (trust anchor for both sides)
	ServerCert string // for localhost, 127.0.0.1 and ::1; usable as server and client
	ServerKey  string
	ClientCert string // client authentication only
	ClientKey  string
}

// validity is long enough for any test run and short enough that a leaked
// file is worthless soon.
const validity = 7 * 24 * time.Hour

// New generates a set into a temp dir of the test, failing it on error.
func New(t testing.TB) *Files {
	t.Helper()
	f, err := Generate(t.TempDir())
	if err != nil {
		t.Fatalf("certtest: %v", err)
	}
	return f
}

// Generate writes a new CA and a server and a client certificate signed by
// it into dir (ca.pem, server.pem, server-key.pem, client.pem,
// client-key.pem). Keys are ECDSA P-256 (fast to make, accepted by Go's and
// etcd's TLS stacks).
func Generate(dir string) (*Files, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("certtest: %w", err)
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certtest: CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "logbackup test CA"},
		NotBefore:             now.Add(-time.Hour), // tolerate a skewed clock
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	if caTmpl.SerialNumber, err = serial(); err != nil {
		return nil, err
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("certtest: CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("certtest: CA certificate: %w", err)
	}
	f := &Files{
		Dir:        dir,
		CA:         filepath.Join(dir, "ca.pem"),
		ServerCert: filepath.Join(dir, "server.pem"),
		ServerKey:  filepath.Join(dir, "server-key.pem"),
		ClientCert: filepath.Join(dir, "client.pem"),
		ClientKey:  filepath.Join(dir, "client-key.pem"),
	}
	if err := writePEM(f.CA, "CERTIFICATE", caDER); err != nil {
		return nil, err
	}
	// The server certificate also allows client auth: etcd's embedded
	// server dials itself (its gRPC gateway) with its own certificate, and
	// PD and TiKV deployments commonly use one certificate both ways.
	server := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(validity),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if err := issue(server, ca, caKey, f.ServerCert, f.ServerKey); err != nil {
		return nil, err
	}
	client := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "logbackup-test-client"},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(validity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if err := issue(client, ca, caKey, f.ClientCert, f.ClientKey); err != nil {
		return nil, err
	}
	return f, nil
}

// ClientTLS is a client configuration that trusts the set's CA and presents
// its client certificate.
func (f *Files) ClientTLS() (*tls.Config, error) {
	return f.tlsConfig(f.ClientCert, f.ClientKey, false)
}

// ServerTLS is a server configuration with the server certificate that
// requires clients to present a certificate signed by the set's CA.
func (f *Files) ServerTLS() (*tls.Config, error) {
	return f.tlsConfig(f.ServerCert, f.ServerKey, true)
}

func (f *Files) tlsConfig(certFile, keyFile string, server bool) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("certtest: load key pair: %w", err)
	}
	pool, err := CertPool(f.CA)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if server {
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	} else {
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// CertPool reads a PEM file of CA certificates into a pool.
func CertPool(caFile string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("certtest: read CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("certtest: no certificate in %s", caFile)
	}
	return pool, nil
}

func issue(tmpl, ca *x509.Certificate, caKey *ecdsa.PrivateKey, certFile, keyFile string) error {
	var err error
	if tmpl.SerialNumber, err = serial(); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("certtest: key for %s: %w", tmpl.Subject.CommonName, err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("certtest: certificate for %s: %w", tmpl.Subject.CommonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("certtest: key for %s: %w", tmpl.Subject.CommonName, err)
	}
	if err := writePEM(certFile, "CERTIFICATE", der); err != nil {
		return err
	}
	return writePEM(keyFile, "PRIVATE KEY", keyDER)
}

func writePEM(path, typ string, der []byte) error {
	data := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("certtest: write %s: %w", path, err)
	}
	return nil
}

// serial is a random 128-bit serial number, as RFC 5280 asks (unique per
// CA; a collision across runs is harmless since every run has its own CA).
func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("certtest: serial number: %w", err)
	}
	return n, nil
}
