package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"logbackup/streamagent"
	"logbackup/tests/eventually"
	"logbackup/tests/simcluster"
)

// runAgentErr runs an agent for store and returns its Run's error on a
// channel, and a stop func.
func runAgentErr(h *harness, store uint64, takeOver bool) (<-chan error, func()) {
	h.t.Helper()
	a, err := streamagent.New(streamagent.Config{StoreID: store, PD: h.c.PD(), Meta: h.m, ClusterID: h.c.ClusterID(),
		FlushInterval: 100 * time.Millisecond, CoordinatorInterval: 50 * time.Millisecond, ReconcileInterval: 100 * time.Millisecond,
		TempDir: h.t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), TakeOver: takeOver}, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(h.ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	return done, cancel
}

// waitRegistration waits until store's registration is the one started at
// or after since (0: any), and returns its start time.
func waitRegistration(h *harness, store uint64, since int64) int64 {
	h.t.Helper()
	var started int64
	eventually.True(h.t, 30*time.Second, func() bool {
		regs, err := h.m.Agents(h.ctx)
		r := regs[store]
		if err != nil || r == nil || r.StartedAtUnixMs < since {
			return false
		}
		started = r.StartedAtUnixMs
		return true
	}, "a registration of store %d since %d", store, since)
	return started
}

// TestOneAgentPerStore: a second agent of a store that already has a live
// one refuses to start, naming the other's host and pid, and its exit
// leaves the first one's registration alone (it used to overwrite it, and
// its lease revoke then deleted it: status said NO AGENT while the first
// ran on). With TakeOver the newcomer replaces it, the old agent stops
// with an error saying who took over, and its exit does not delete the
// newcomer's registration.
func TestOneAgentPerStore(t *testing.T) {
	t.Parallel() // its own cluster, mostly waiting: runs beside the other long tests (see TestMain)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	h := newHarness(t, ctx, simcluster.Config{Stores: 1}, "local://"+filepath.Join(t.TempDir(), "b"), 0)
	firstDone, stopFirst := runAgentErr(h, 1, false)
	defer stopFirst()
	first := waitRegistration(h, 1, 0)

	secondDone, stopSecond := runAgentErr(h, 1, false)
	defer stopSecond()
	select {
	case err := <-secondDone:
		host, _ := os.Hostname()
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) || !strings.Contains(err.Error(), host) || !strings.Contains(err.Error(), "--take-over") {
			t.Fatalf("second agent of store 1: %v, want a refusal naming the first's host and pid", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("a second agent of store 1 was accepted")
	}
	regs, err := h.m.Agents(ctx)
	if err != nil || regs[1] == nil || regs[1].StartedAtUnixMs != first {
		t.Fatalf("store 1's registration after the refused agent exited: %v %v", regs[1], err)
	}
	// The first agent still backs up.
	if _, err := h.c.Put(ctx, []byte("t1"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	end, _ := h.c.TSO(ctx)
	h.waitGlobal(end)

	thirdDone, stopThird := runAgentErr(h, 1, true)
	defer stopThird()
	third := waitRegistration(h, 1, first+1)
	select {
	case err := <-firstDone:
		if err == nil || !strings.Contains(err.Error(), "taken over") {
			t.Fatalf("the replaced agent returned %v, want a take-over error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the replaced agent did not stop")
	}
	regs, err = h.m.Agents(ctx)
	if err != nil || regs[1] == nil || regs[1].StartedAtUnixMs != third {
		t.Fatalf("store 1's registration after the replaced agent exited: %v %v", regs[1], err)
	}
	if _, err := h.c.Put(ctx, []byte("t2"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	end, _ = h.c.TSO(ctx)
	h.waitGlobal(end)
	stopThird()
	if err := <-thirdDone; err != nil {
		t.Fatalf("a plain stop returned %v", err)
	}
	if regs, _ := h.m.Agents(ctx); regs[1] != nil {
		t.Fatalf("the stopped agent left its registration: %v", regs[1])
	}
}

// agentProcRun is one agent process; exited closes once it was waited for.
type agentProcRun struct {
	cmd    *exec.Cmd
	out    *lockedBuffer
	exited chan struct{}
	err    error
}

// agentProcess runs cmd/streamagent (built to bin) for store with extra
// flags; its output goes to the returned buffer. It is killed at cleanup.
func agentProcess(t *testing.T, bin string, h *harness, store uint64, extra ...string) *agentProcRun {
	t.Helper()
	args := append([]string{"--pd", h.c.PDAddr(), "--store-id", fmt.Sprint(store), "--status-addr", "127.0.0.1:0",
		"--flush-interval", "1s", "--coordinator-interval", "200ms", "--temp-dir", t.TempDir()}, extra...)
	p := &agentProcRun{cmd: exec.Command(bin, args...), out: &lockedBuffer{}, exited: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// waitExit waits for the process to exit, at most d, and returns how.
func (p *agentProcRun) waitExit(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-p.exited:
		return p.err
	case <-time.After(d):
		t.Fatalf("%s did not exit within %s", p.cmd.Args, d)
		return nil
	}
}

// TestOneAgentPerStoreProcesses is TestOneAgentPerStore with real agent
// processes, as an operator meets it: `streamagent --store-id 1` beside a
// running one exits 1 at once, naming the other's host and pid; with
// --take-over it replaces it and the old process exits 1 saying so.
func TestOneAgentPerStoreProcesses(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "streamagent")
	if out, err := exec.Command("go", "build", "-o", bin, "logbackup/cmd/streamagent").CombinedOutput(); err != nil {
		t.Fatalf("build cmd/streamagent: %v\n%s", err, out)
	}
	h := newHarness(t, ctx, simcluster.Config{Stores: 1}, "local://"+filepath.Join(t.TempDir(), "b"), 0)
	first := agentProcess(t, bin, h, 1)
	started := waitRegistration(h, 1, 0)
	if regs, _ := h.m.Agents(ctx); regs[1].Pid != int64(first.cmd.Process.Pid) {
		t.Fatalf("store 1 registered by pid %d, want %d", regs[1].Pid, first.cmd.Process.Pid)
	}

	second := agentProcess(t, bin, h, 1)
	err := second.waitExit(t, 60*time.Second)
	host, _ := os.Hostname()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(second.out.String(), fmt.Sprintf("pid %d", first.cmd.Process.Pid)) ||
		!strings.Contains(second.out.String(), host) {
		t.Fatalf("second agent: %v, want exit 1 naming pid %d on %s:\n%s", err, first.cmd.Process.Pid, host, second.out.String())
	}
	if regs, _ := h.m.Agents(ctx); regs[1] == nil || regs[1].StartedAtUnixMs != started {
		t.Fatalf("the refused agent's exit changed store 1's registration: %v", regs[1])
	}

	third := agentProcess(t, bin, h, 1, "--take-over")
	err = first.waitExit(t, 60*time.Second)
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(first.out.String(), fmt.Sprintf("taken over by the agent on host %q (pid %d)", host, third.cmd.Process.Pid)) {
		t.Fatalf("replaced agent: %v, want exit 1 naming pid %d:\n%s", err, third.cmd.Process.Pid, first.out.String())
	}
	if regs, _ := h.m.Agents(ctx); regs[1] == nil || regs[1].Pid != int64(third.cmd.Process.Pid) {
		t.Fatalf("store 1's registration after the take-over: %v", regs[1])
	}
	if _, err := h.c.Put(ctx, []byte("t1"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	end, _ := h.c.TSO(ctx)
	h.waitGlobal(end)
}
