// Package realstorage starts the storage servers users run — MinIO,
// Azurite and fake-gcs-server — as processes on 127.0.0.1, each with free
// ports and its own temp dir, for the storage conformance suite and the
// playground's end-to-end runs.
//
// The binaries come from LOGBACKUP_MINIO, LOGBACKUP_AZURITE and
// LOGBACKUP_FAKEGCS, or from PATH (minio, azurite-blob, fake-gcs-server).
// Without one the test skips, saying how to install it; with CI=true a
// missing server fails the test instead. The versions are pinned in
// .ci/storage-servers.sh, which installs them.
package realstorage

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Server is one running server process.
type Server struct {
	Name string // "minio", "azurite", "fake-gcs-server"
	Addr string // 127.0.0.1:PORT

	cmd      *exec.Cmd
	exited   chan struct{}
	logPath  string
	stopOnce sync.Once
}

// Stop kills the server and waits for it; later calls do nothing. Tests
// stop a server to see what an outage does to the storage.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		_ = s.cmd.Process.Kill()
		<-s.exited
	})
}

// Endpoint is "http://" + Addr.
func (s *Server) Endpoint() string { return "http://" + s.Addr }

// versions reads the pinned versions from .ci/storage-servers.sh, the one
// place they are set, for the skip messages.
func versions() map[string]string {
	v := map[string]string{}
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return v
	}
	f, err := os.Open(filepath.Join(filepath.Dir(file), "..", "..", ".ci", "storage-servers.sh"))
	if err != nil {
		return v
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, val, ok := strings.Cut(sc.Text(), "="); ok && strings.HasPrefix(k, "LOGBACKUP_") && strings.HasSuffix(k, "_VERSION") {
			v[k] = val
		}
	}
	return v
}

// binary finds a server's binary, or skips the test (fails it under
// CI=true) with how to install it.
func binary(t testing.TB, env, name, install string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s=%s: %v", env, p, err)
		}
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	msg := fmt.Sprintf("%s is not installed: run `source .ci/storage-servers.sh` (installs every server and sets %s), "+
		"or %s and put %s on PATH", name, env, install, name)
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true needs every real storage server: %s", msg)
	}
	t.Skip(msg)
	return ""
}

// freePort is a port that was free a moment ago; start retries when the
// server loses a race for it.
func freePort(t testing.TB) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}

// start runs bin with the arguments args(addr) returns, until ready(addr)
// holds; it stops when the test ends. secrets are removed from the
// server's log before any of it is shown.
func start(t testing.TB, name, bin string, env []string, args func(addr, dir string) []string,
	ready func(ctx context.Context, addr string) bool, secrets ...string) *Server {
	t.Helper()
	var last string
	for try := 0; try < 3; try++ {
		dir := t.TempDir()
		addr := freePort(t)
		s := &Server{Name: name, Addr: addr, exited: make(chan struct{}), logPath: filepath.Join(dir, name+".log")}
		logf, err := os.Create(s.logPath)
		if err != nil {
			t.Fatal(err)
		}
		s.cmd = exec.Command(bin, args(addr, dir)...)
		s.cmd.Dir = dir
		s.cmd.Env = append(os.Environ(), env...)
		s.cmd.Stdout, s.cmd.Stderr = logf, logf
		// The server dies with the test binary, even one killed by a timeout.
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := s.cmd.Start(); err != nil {
			logf.Close()
			t.Fatalf("start %s: %v", name, err)
		}
		go func() {
			_ = s.cmd.Wait()
			logf.Close()
			close(s.exited)
		}()
		if s.waitReady(ready, 90*time.Second) {
			t.Cleanup(s.Stop)
			return s
		}
		s.Stop()
		last = s.logTail(secrets)
	}
	t.Fatalf("%s did not start on 127.0.0.1 (3 tries); its log ends:\n%s", name, last)
	return nil
}

func (s *Server) waitReady(ready func(ctx context.Context, addr string) bool, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		ok := ready(ctx, s.Addr)
		cancel()
		if ok {
			return true
		}
		select {
		case <-s.exited:
			return false
		case <-tick.C:
		}
	}
	return false
}

func (s *Server) logTail(secrets []string) string {
	b, _ := os.ReadFile(s.logPath)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	for _, sec := range secrets {
		if sec != "" {
			b = bytes.ReplaceAll(b, []byte(sec), []byte("redacted"))
		}
	}
	return string(b)
}

// httpStatus is the status of GET url, or 0 if there was no answer.
func httpStatus(ctx context.Context, url string) int {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// NoSecret fails the test if text holds any of the credentials.
func NoSecret(t testing.TB, what, text string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(text, s) {
			// Not the text itself: it holds the secret.
			t.Errorf("%s: a credential appears in it (%d bytes)", what, len(text))
			return
		}
	}
}
