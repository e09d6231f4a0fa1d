package meta

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
)

// TLSFiles are the --ca, --cert and --key flags of br and the agent: PEM
// files for TLS to PD, etcd and TiKV. TLS is on when CA is set, as in BR.
type TLSFiles struct {
	CA, Cert, Key string
}

// Enabled reports whether any TLS file is given.
func (f TLSFiles) Enabled() bool { return f.CA != "" || f.Cert != "" || f.Key != "" }

// Validate checks the files before anything dials, so a mistake is an
// error that names the file, never a silent plaintext connection:
//   - a certificate or key without a CA is refused (TLS is on only with
//     --ca; without it the client would connect in plaintext and the
//     certificate would be ignored);
//   - a certificate needs its key and a key its certificate;
//   - every file given must be readable and hold what it should: the CA
//     at least one PEM certificate, the certificate and key a matching
//     pair.
func (f TLSFiles) Validate() error {
	_, err := f.ClientConfig()
	return err
}

// ClientConfig validates the files (see Validate) and builds the client
// TLS configuration; it is nil when no file is given (plaintext).
func (f TLSFiles) ClientConfig() (*tls.Config, error) {
	if !f.Enabled() {
		return nil, nil
	}
	if f.CA == "" {
		var given string
		switch {
		case f.Cert != "" && f.Key != "":
			given = "--cert and --key are"
		case f.Cert != "":
			given = "--cert is"
		default:
			given = "--key is"
		}
		return nil, fmt.Errorf("%s given without --ca: TLS needs --ca (the CA that signed the servers' certificates); refusing to connect in plaintext", given)
	}
	if (f.Cert == "") != (f.Key == "") {
		if f.Cert == "" {
			return nil, fmt.Errorf("--key %s is given without --cert", f.Key)
		}
		return nil, fmt.Errorf("--cert %s is given without --key", f.Cert)
	}
	pool, err := loadCA(f.CA)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if f.Cert != "" {
		if err := readable("--cert", f.Cert); err != nil {
			return nil, err
		}
		if err := readable("--key", f.Key); err != nil {
			return nil, err
		}
		pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			// The error never quotes the key itself, only what is wrong.
			return nil, fmt.Errorf("--cert %s and --key %s are not a valid certificate and matching private key: %w", f.Cert, f.Key, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

func readable(flag, path string) error {
	fh, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%s %s: cannot read: %w", flag, path, err)
	}
	defer fh.Close()
	if fi, err := fh.Stat(); err == nil && fi.IsDir() {
		return fmt.Errorf("%s %s is a directory, not a PEM file", flag, path)
	}
	return nil
}

// loadCA reads a PEM bundle and insists on at least one certificate that
// parses: x509's AppendCertsFromPEM alone skips what it cannot read.
func loadCA(path string) (*x509.CertPool, error) {
	if err := readable("--ca", path); err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--ca %s: cannot read: %w", path, err)
	}
	pool := x509.NewCertPool()
	n := 0
	for rest := raw; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("--ca %s: certificate %d does not parse: %w", path, n+1, err)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("--ca %s holds no PEM certificate", path)
	}
	return pool, nil
}
