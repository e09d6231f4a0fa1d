package embedetcd_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"logbackup/meta/embedetcd"
	"logbackup/tests/certtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// etcd's server and client leave these behind until process exit.
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/pkg/v3/logutil.(*MergeLogger).outputLoop"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
	)
}

func start(t *testing.T, cfg embedetcd.Config) *embedetcd.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := embedetcd.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func client(t *testing.T, ep string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	return cli
}

// TestRestartSamePortAndData: a closed server started again with its port
// and data dir serves the same data at the same endpoint.
func TestRestartSamePortAndData(t *testing.T) {
	dir := t.TempDir()
	s := start(t, embedetcd.Config{Dir: dir, Fast: true})
	ep := s.Endpoint()
	if strings.HasSuffix(ep, ":0") || !strings.HasPrefix(ep, "127.0.0.1:") {
		t.Fatalf("endpoint %q is not a real loopback port", ep)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cli := client(t, ep)
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	cli.Close()
	s.Close()
	s.Close() // harmless twice

	s = start(t, embedetcd.Config{Dir: dir, ClientURL: "http://" + ep, Fast: true})
	defer s.Close()
	if s.Endpoint() != ep {
		t.Fatalf("restarted at %s, want %s", s.Endpoint(), ep)
	}
	cli = client(t, ep)
	defer cli.Close()
	resp, err := cli.Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("after restart: %v %v", resp, err)
	}
}

func TestStartRefusals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := embedetcd.Start(ctx, embedetcd.Config{}); err == nil {
		t.Error("no data dir accepted")
	}
	if _, err := embedetcd.Start(ctx, embedetcd.Config{Dir: t.TempDir(), ClientURL: "::bad"}); err == nil {
		t.Error("bad client URL accepted")
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if s, err := embedetcd.Start(ctx, embedetcd.Config{Dir: t.TempDir(), ClientURL: "http://" + busy.Addr().String(), Fast: true}); err == nil {
		s.Close()
		t.Error("started on a port in use")
	}
}

// echoService is a gRPC service of the test's own: one unary method that
// returns its argument.
var echoService = grpc.ServiceDesc{
	ServiceName: "embedetcdtest.Echo",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.StringValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			return in, nil
		},
	}},
}

func callEcho(ctx context.Context, conn *grpc.ClientConn) (string, error) {
	out := new(wrapperspb.StringValue)
	err := conn.Invoke(ctx, "/embedetcdtest.Echo/Echo", wrapperspb.String("ping"), out)
	return out.GetValue(), err
}

// TestServiceRegister: a service registered through ServiceRegister answers
// on the client port, beside etcd's own API; without it the port does not
// know the service.
func TestServiceRegister(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := start(t, embedetcd.Config{Dir: t.TempDir(), Fast: true, Name: "pd-test",
		ServiceRegister: func(g *grpc.Server) { g.RegisterService(&echoService, struct{}{}) }})
	defer s.Close()
	conn, err := grpc.NewClient(s.Endpoint(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got, err := callEcho(ctx, conn); err != nil || got != "ping" {
		t.Fatalf("echo = %q, %v", got, err)
	}
	cli := client(t, s.Endpoint())
	defer cli.Close()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("etcd on the same port: %v", err)
	}
	m := s.Member()
	if m.ID == 0 || m.Name != "pd-test" || m.ClientURL != "http://"+s.Endpoint() || !strings.HasPrefix(m.PeerURL, "http://127.0.0.1:") || strings.HasSuffix(m.PeerURL, ":0") {
		t.Fatalf("member %+v", m)
	}
	// The in-process client sees what the network client wrote.
	resp, err := s.Client().Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("in-process client: %v %v", resp, err)
	}

	plain := start(t, embedetcd.Config{Dir: t.TempDir(), Fast: true})
	defer plain.Close()
	pconn, err := grpc.NewClient(plain.Endpoint(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer pconn.Close()
	if _, err := callEcho(ctx, pconn); status.Code(err) != codes.Unimplemented {
		t.Fatalf("echo without registration: %v, want Unimplemented", err)
	}
}

// TestTLS: with TLS the client port serves etcd and registered services to
// clients with the CA's certificates, and refuses a client that trusts
// another CA or has no certificate — with an error before the deadline.
func TestTLS(t *testing.T) {
	certs := certtest.New(t)
	s := start(t, embedetcd.Config{Dir: t.TempDir(), Fast: true,
		TLS:             &embedetcd.TLS{CertFile: certs.ServerCert, KeyFile: certs.ServerKey, CAFile: certs.CA},
		ServiceRegister: func(g *grpc.Server) { g.RegisterService(&echoService, struct{}{}) }})
	defer s.Close()
	if m := s.Member(); !strings.HasPrefix(m.ClientURL, "https://127.0.0.1:") {
		t.Fatalf("client URL %q", m.ClientURL)
	}
	good, err := certs.ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	// A refused client fails at its deadline (etcd's client keeps retrying
	// the handshake until then), so refusals get a short one.
	etcdWith := func(cfg *tls.Config, timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.Endpoint()}, TLS: cfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			return err
		}
		defer cli.Close()
		_, err = cli.Put(ctx, "k", "v")
		return err
	}
	echoWith := func(cfg *tls.Config, timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		creds := insecure.NewCredentials() // nil: plain text
		if cfg != nil {
			creds = credentials.NewTLS(cfg)
		}
		conn, err := grpc.NewClient(s.Endpoint(), grpc.WithTransportCredentials(creds))
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = callEcho(ctx, conn)
		return err
	}
	if err := etcdWith(good, 20*time.Second); err != nil {
		t.Fatalf("etcd over TLS: %v", err)
	}
	if err := echoWith(good, 20*time.Second); err != nil {
		t.Fatalf("registered service over TLS: %v", err)
	}

	wrongCA, err := certtest.New(t).ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	noCert := good.Clone()
	noCert.Certificates = nil
	for name, cfg := range map[string]*tls.Config{"wrong CA": wrongCA, "no client certificate": noCert} {
		if err := etcdWith(cfg, 2*time.Second); err == nil {
			t.Errorf("etcd, %s: accepted", name)
		}
		if err := echoWith(cfg, 2*time.Second); err == nil {
			t.Errorf("registered service, %s: accepted", name)
		}
	}
	// Plain text to a TLS port fails too.
	if err := echoWith(nil, 2*time.Second); err == nil {
		t.Error("plain-text client accepted")
	}
}

func TestTLSRefusals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	certs := certtest.New(t)
	tlsFiles := &embedetcd.TLS{CertFile: certs.ServerCert, KeyFile: certs.ServerKey, CAFile: certs.CA}
	for name, cfg := range map[string]embedetcd.Config{
		"http URL with TLS":     {Dir: t.TempDir(), ClientURL: "http://127.0.0.1:0", TLS: tlsFiles},
		"https URL without TLS": {Dir: t.TempDir(), ClientURL: "https://127.0.0.1:0"},
		"TLS without a key":     {Dir: t.TempDir(), TLS: &embedetcd.TLS{CertFile: certs.ServerCert}},
	} {
		if s, err := embedetcd.Start(ctx, cfg); err == nil {
			s.Close()
			t.Errorf("%s: started", name)
		}
	}
}

// getBody is a GET with a deadline; it returns the status and the body.
func getBody(t *testing.T, cli *http.Client, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// TestHTTPHandlers: handlers registered through HTTPHandlers answer
// HTTP/1.1 on the client port, beside a registered gRPC service and etcd's
// own API, as PD serves its HTTP API; with TLS they answer HTTPS only, to
// clients with the CA's certificates.
func TestHTTPHandlers(t *testing.T) {
	hello := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello "+r.URL.Path+" "+r.Proto)
	})
	handlers := map[string]http.Handler{"/pd/api/v1/": hello}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("plain", func(t *testing.T) {
		s := start(t, embedetcd.Config{Dir: t.TempDir(), Fast: true, HTTPHandlers: handlers,
			ServiceRegister: func(g *grpc.Server) { g.RegisterService(&echoService, struct{}{}) }})
		defer s.Close()
		cli := &http.Client{Transport: &http.Transport{}}
		defer cli.CloseIdleConnections()
		code, body := getBody(t, cli, "http://"+s.Endpoint()+"/pd/api/v1/version")
		if code != http.StatusOK || body != "hello /pd/api/v1/version HTTP/1.1" {
			t.Fatalf("user handler: %d %q", code, body)
		}
		// etcd's own HTTP endpoints stay.
		if code, body := getBody(t, cli, "http://"+s.Endpoint()+"/version"); code != http.StatusOK || !strings.Contains(body, "etcdserver") {
			t.Fatalf("etcd /version: %d %q", code, body)
		}
		conn, err := grpc.NewClient(s.Endpoint(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if got, err := callEcho(ctx, conn); err != nil || got != "ping" {
			t.Fatalf("gRPC beside the handlers: %q, %v", got, err)
		}
	})

	t.Run("TLS", func(t *testing.T) {
		certs := certtest.New(t)
		s := start(t, embedetcd.Config{Dir: t.TempDir(), Fast: true, HTTPHandlers: handlers,
			TLS:             &embedetcd.TLS{CertFile: certs.ServerCert, KeyFile: certs.ServerKey, CAFile: certs.CA},
			ServiceRegister: func(g *grpc.Server) { g.RegisterService(&echoService, struct{}{}) }})
		defer s.Close()
		good, err := certs.ClientTLS()
		if err != nil {
			t.Fatal(err)
		}
		cli := &http.Client{Transport: &http.Transport{TLSClientConfig: good}}
		defer cli.CloseIdleConnections()
		code, body := getBody(t, cli, "https://"+s.Endpoint()+"/pd/api/v1/health")
		if code != http.StatusOK || !strings.HasPrefix(body, "hello /pd/api/v1/health HTTP/") {
			t.Fatalf("user handler over TLS: %d %q", code, body)
		}
		conn, err := grpc.NewClient(s.Endpoint(), grpc.WithTransportCredentials(credentials.NewTLS(good)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if got, err := callEcho(ctx, conn); err != nil || got != "ping" {
			t.Fatalf("gRPC over TLS beside the handlers: %q, %v", got, err)
		}
		// Plain HTTP to the TLS port gets no answer from the handler.
		plain := &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}
		defer plain.CloseIdleConnections()
		if resp, err := plain.Get("http://" + s.Endpoint() + "/pd/api/v1/health"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.HasPrefix(string(b), "hello") {
				t.Fatalf("plain HTTP served by the handler on a TLS port: %q", b)
			}
		}
		noCert := good.Clone()
		noCert.Certificates = nil
		nc := &http.Client{Transport: &http.Transport{TLSClientConfig: noCert}, Timeout: 5 * time.Second}
		defer nc.CloseIdleConnections()
		if resp, err := nc.Get("https://" + s.Endpoint() + "/pd/api/v1/health"); err == nil {
			resp.Body.Close()
			t.Fatalf("HTTPS without a client certificate accepted: %s", resp.Status)
		}
	})
}
