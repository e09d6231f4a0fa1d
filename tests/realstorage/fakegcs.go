package realstorage

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FakeGCS is a running fake-gcs-server (memory backend) and the token
// endpoint its URLs' service account uses.
type FakeGCS struct {
	*Server
	token    *httptest.Server
	credFile string
}

// StartFakeGCS starts fake-gcs-server over plain HTTP.
func StartFakeGCS(t testing.TB) *FakeGCS {
	t.Helper()
	bin := binary(t, "LOGBACKUP_FAKEGCS", "fake-gcs-server",
		"go install github.com/fsouza/fake-gcs-server@"+versions()["LOGBACKUP_FAKEGCS_VERSION"])
	srv := start(t, "fake-gcs-server", bin, nil,
		func(addr, dir string) []string {
			host, port, _ := net.SplitHostPort(addr)
			return []string{"-scheme", "http", "-host", host, "-port", port, "-public-host", addr,
				"-external-url", "http://" + addr, "-backend", "memory", "-log-level", "warn"}
		},
		func(ctx context.Context, addr string) bool {
			return httpStatus(ctx, "http://"+addr+"/storage/v1/b") == 200
		})
	g := &FakeGCS{Server: srv}
	// Google's OAuth token endpoint, which no local server provides:
	// fake-gcs-server ignores tokens, but the storage (as in production)
	// always signs in with a service account, so something must answer
	// the token request. It grants every request a token.
	g.token = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"access_token":"fake-gcs-token","token_type":"Bearer","expires_in":3600}`)
	}))
	t.Cleanup(g.token.Close)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	sa, _ := json.Marshal(map[string]string{"type": "service_account", "project_id": "logbackup-test", "private_key_id": "k1",
		"private_key": string(keyPEM), "client_email": "br@logbackup-test.iam.gserviceaccount.com", "client_id": "1",
		"token_uri": g.token.URL + "/token"})
	g.credFile = filepath.Join(t.TempDir(), "service-account.json")
	if err := os.WriteFile(g.credFile, sa, 0o600); err != nil {
		t.Fatal(err)
	}
	return g
}

// CreateBucket makes a bucket through the JSON API.
func (g *FakeGCS) CreateBucket(t testing.TB, name string) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"name": name})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.Server.Endpoint()+"/storage/v1/b?project=logbackup-test", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("fake-gcs-server: create bucket %s: %v", name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("fake-gcs-server: create bucket %s: %s %s", name, resp.Status, b)
	}
}

// CredentialsFile is the service-account key file the URLs name.
func (g *FakeGCS) CredentialsFile() string { return g.credFile }

// URL is a gcs:// URL for bucket/prefix with the endpoint (the server's
// address alone, as README shows it) and the service-account key file.
func (g *FakeGCS) URL(bucket, prefix string) string {
	return g.URLWithEndpoint(bucket, prefix, g.Server.Endpoint())
}

// URLWithEndpoint is URL with another spelling of the endpoint.
func (g *FakeGCS) URLWithEndpoint(bucket, prefix, endpoint string) string {
	q := url.Values{}
	q.Set("endpoint", endpoint)
	q.Set("credentials-file", g.credFile)
	u := url.URL{Scheme: "gcs", Host: bucket, RawQuery: q.Encode()}
	if prefix != "" {
		u.Path = "/" + prefix
	}
	return u.String()
}
