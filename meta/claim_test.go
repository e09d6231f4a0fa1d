package meta_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"logbackup/meta"
	"logbackup/proto/lbpb"
)

// TestClaimAgent: a claim is refused while another holds the store (the
// error names it), replaces it when told to, tells the replaced holder who
// took over, and the replaced holder's exit leaves the new registration.
// An undecodable registration is nobody's and is replaced.
func TestClaimAgent(t *testing.T) {
	c, cli, _ := setup(t)
	ctx := context.Background()
	never := func(*lbpb.AgentRegistration) bool { return false }
	always := func(*lbpb.AgentRegistration) bool { return true }
	actx, stopA := context.WithCancel(ctx)
	defer stopA()
	a, err := c.ClaimAgent(actx, &lbpb.AgentRegistration{StoreId: 1, Hostname: "h1", Pid: 11}, 5*time.Second, never)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.ClaimAgent(ctx, &lbpb.AgentRegistration{StoreId: 1, Hostname: "h2", Pid: 22}, 5*time.Second, never)
	var conflict *meta.AgentConflictError
	if !errors.As(err, &conflict) || conflict.Other.Pid != 11 || conflict.Other.Hostname != "h1" {
		t.Fatalf("second claim: %v", err)
	}
	bctx, stopB := context.WithCancel(ctx)
	defer stopB()
	b, err := c.ClaimAgent(bctx, &lbpb.AgentRegistration{StoreId: 1, Hostname: "h2", Pid: 22}, 5*time.Second, always)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.Lost:
	case <-time.After(10 * time.Second):
		t.Fatal("the replaced claim was not told")
	}
	if by := a.TakenBy(); by == nil || by.Pid != 22 {
		t.Fatalf("taken by %v, want pid 22", by)
	}
	stopA()
	regs, err := c.Agents(ctx)
	if err != nil || regs[1] == nil || regs[1].Pid != 22 {
		t.Fatalf("after the replaced holder stopped: %v %v", regs[1], err)
	}
	stopB()
	<-b.Lost
	if regs, _ := c.Agents(ctx); regs[1] != nil {
		t.Fatalf("a stopped holder left its registration: %v", regs[1])
	}
	if _, err := cli.Put(ctx, meta.AgentKey(2), "\xff\x00garbage"); err != nil {
		t.Fatal(err)
	}
	cctx, stopC := context.WithCancel(ctx)
	defer stopC()
	cl, err := c.ClaimAgent(cctx, &lbpb.AgentRegistration{StoreId: 2, Pid: 33}, 5*time.Second, never)
	if err != nil {
		t.Fatalf("an undecodable registration was not replaced: %v", err)
	}
	stopC()
	<-cl.Lost
}

// TestRepairCheckpoint: only an unreadable value is replaced.
func TestRepairCheckpoint(t *testing.T) {
	c, cli, _ := setup(t)
	ctx := context.Background()
	key := meta.GlobalCheckpointKey("pitr")
	if bad, err := c.RepairCheckpoint(ctx, "pitr", key, 100); bad != nil || err != nil {
		t.Fatalf("absent: %v %v", bad, err)
	}
	if _, err := c.AdvanceGlobalCheckpoint(ctx, "pitr", 200); err != nil {
		t.Fatal(err)
	}
	if bad, err := c.RepairCheckpoint(ctx, "pitr", key, 100); bad != nil || err != nil {
		t.Fatalf("readable: %v %v", bad, err)
	}
	if g, _, _ := c.GlobalCheckpoint(ctx, "pitr"); g != 200 {
		t.Fatalf("a readable checkpoint was rewritten: %d", g)
	}
	if _, err := cli.Put(ctx, key, "\xff\x00garbage"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AdvanceGlobalCheckpoint(ctx, "pitr", 300); !errors.Is(err, meta.ErrMalformed) {
		t.Fatalf("advance over garbage: %v", err)
	}
	bad, err := c.RepairCheckpoint(ctx, "pitr", key, 300)
	if err != nil || bad == nil || bad.Key != key {
		t.Fatalf("unreadable: %v %v", bad, err)
	}
	if g, ok, err := c.GlobalCheckpoint(ctx, "pitr"); g != 300 || !ok || err != nil {
		t.Fatalf("after the repair: %d %v %v", g, ok, err)
	}
}
