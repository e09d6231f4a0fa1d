package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"logbackup/streamagent"
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
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		regs, err := h.m.Agents(h.ctx)
		if r := regs[store]; err == nil && r != nil && r.StartedAtUnixMs >= since {
			return r.StartedAtUnixMs
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("no registration of store %d since %d", store, since)
		}
	}
}

// TestOneAgentPerStore: a second agent of a store that already has a live
// one refuses to start, naming the other's host and pid, and its exit
// leaves the first one's registration alone (it used to overwrite it, and
// its lease revoke then deleted it: status said NO AGENT while the first
// ran on). With TakeOver the newcomer replaces it, the old agent stops
// with an error saying who took over, and its exit does not delete the
// newcomer's registration.
func TestOneAgentPerStore(t *testing.T) {
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
