// Package realpd runs a real PD server (pd-server, tikv/pd v8.5.x) on
// loopback for tests, and speaks to it as a TiKV store does (Bootstrap,
// PutStore, heartbeats) so a test can put it in the states a real cluster
// reaches: unbootstrapped, stores up, disconnected or tombstoned, a txn safe
// point ahead of the GC safe point.
//
// The binary comes from LOGBACKUP_PD_SERVER. `bash ../shared/realpd/build.sh`
// builds one from PD's source and prints its path; tiup's `pd` v8.5.x
// (`tiup install pd:v8.5.6`, then `tiup --binary pd`) works too. Without it
// the tests that need it skip, except under CI=true, where a missing
// pd-server is a failure.
package realpd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EnvBinary names the environment variable holding pd-server's path.
const EnvBinary = "LOGBACKUP_PD_SERVER"

// Binary returns pd-server's path, skipping the test without one (failing
// it under CI=true).
func Binary(t testing.TB) string {
	t.Helper()
	bin := os.Getenv(EnvBinary)
	if bin == "" {
		msg := EnvBinary + " is not set: the real-PD tests need a pd-server v8.5.x. " +
			"Build one with `bash ../shared/realpd/build.sh` (it prints the path) or use tiup's pd, " +
			"then run with " + EnvBinary + "=/path/to/pd-server"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s=%s: %v", EnvBinary, bin, err)
	}
	return bin
}

// Server is one pd-server process owned by a test. Its address stays the
// same across Stop and Start, as does its data.
type Server struct {
	bin, dir   string
	clientPort int
	peerPort   int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start starts a fresh PD (not bootstrapped) and waits until it answers;
// it is killed when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{bin: Binary(t), dir: t.TempDir()}
	var err error
	if s.clientPort, err = freePort(); err != nil {
		t.Fatal(err)
	}
	if s.peerPort, err = freePort(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Kill()
		if t.Failed() {
			s.dumpLogTail(t)
		}
	})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	return s
}

// Addr is "127.0.0.1:port": PD's gRPC API, its etcd and its HTTP API.
func (s *Server) Addr() string { return fmt.Sprintf("127.0.0.1:%d", s.clientPort) }

// URL is the client URL, http://Addr.
func (s *Server) URL() string { return "http://" + s.Addr() }

// LogFile is PD's own log.
func (s *Server) LogFile() string { return filepath.Join(s.dir, "pd.log") }

// Start (re)starts the process on the same ports and data and waits until
// PD serves its API.
func (s *Server) Start() error {
	s.mu.Lock()
	if s.cmd != nil {
		s.mu.Unlock()
		return errors.New("pd-server is already running")
	}
	// PD refuses a log file inside its data dir.
	cmd := exec.Command(s.bin, "--name", "pd1", "--data-dir", filepath.Join(s.dir, "data"),
		"--log-file", s.LogFile(),
		"--client-urls", s.URL(), "--peer-urls", fmt.Sprintf("http://127.0.0.1:%d", s.peerPort))
	out, err := os.OpenFile(filepath.Join(s.dir, "stderr.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		out.Close()
		s.mu.Unlock()
		return fmt.Errorf("start pd-server: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); out.Close(); close(done) }()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return s.waitServing(ctx, done)
}

// waitServing waits until PD answers its HTTP API (PD answers "server not
// started" for a second or two after it listens).
func (s *Server) waitServing(ctx context.Context, exited <-chan struct{}) error {
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL()+"/pd/api/v1/members", nil)
		if resp, err := hc.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("pd-server exited at start; see %s", s.LogFile())
		case <-ctx.Done():
			return fmt.Errorf("pd-server at %s did not serve within the deadline; see %s", s.Addr(), s.LogFile())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop ends the process gracefully (SIGTERM), as an operator's restart
// does; Kill ends it with SIGKILL. Both wait for it to exit.
func (s *Server) Stop() { s.signal(syscall.SIGTERM) }

// Kill ends the process at once.
func (s *Server) Kill() { s.signal(syscall.SIGKILL) }

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd, s.done = nil, nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// Restart stops PD and starts it again on the same address and data.
func (s *Server) Restart() error {
	s.Stop()
	return s.Start()
}

func (s *Server) dumpLogTail(t testing.TB) {
	b, err := os.ReadFile(s.LogFile())
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	t.Logf("the last lines of PD's log (%s):\n%s", s.LogFile(), strings.Join(lines, "\n"))
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
