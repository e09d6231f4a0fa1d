package streamagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"logbackup/meta"
	"logbackup/proto/lbpb"
	"logbackup/streamagent/retry"
)

// claimStore registers this agent as its store's one agent, retrying
// while etcd cannot be reached. Another live agent's registration is an
// error naming it, unless Config.TakeOver; one left by a dead process of
// this host, or by this very agent, is replaced, and any other is waited
// for a lease TTL (a crashed agent's expires) before giving up.
func (a *Agent) claimStore(ctx context.Context) (*lbpb.AgentRegistration, *meta.AgentClaim, error) {
	host, _ := os.Hostname()
	reg := &lbpb.AgentRegistration{StoreId: a.cfg.StoreID, Version: a.cfg.Version, StartedAtUnixMs: time.Now().UnixMilli(),
		Hostname: host, Pid: int64(os.Getpid()), StatusAddress: a.cfg.StatusAddress}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	// ownStore, not GetStore: the pd client answers (nil, nil) for a
	// removed store.
	if s, err := a.ownStore(sctx); err == nil {
		reg.StoreAddress = s.Address
	}
	cancel()
	claim, err := a.claim(ctx, reg, a.cfg.TakeOver)
	return reg, claim, err
}

// claim is one claim of the store, retried while etcd fails and while
// another registration may yet expire.
func (a *Agent) claim(ctx context.Context, reg *lbpb.AgentRegistration, takeOver bool) (*meta.AgentClaim, error) {
	replace := func(o *lbpb.AgentRegistration) bool {
		return takeOver || sameAgent(o, reg) || deadLocalAgent(o, reg)
	}
	bo := retry.NewBackoff(500*time.Millisecond, 5*time.Second)
	var conflictSince time.Time
	for {
		claim, err := a.cfg.Meta.ClaimAgent(ctx, reg, agentTTL, replace)
		if err == nil {
			if takeOver {
				a.cfg.Logger.Warn("took this store over from any other agent of it (--take-over)", "store", a.cfg.StoreID)
			}
			return claim, nil
		}
		var conflict *meta.AgentConflictError
		if errors.As(err, &conflict) {
			if conflictSince.IsZero() {
				conflictSince = time.Now()
			}
			// A crashed agent's lease expires within a TTL, a live one's
			// never. A live process of this host is known at once; one of
			// another host (or an agent of this process still stopping) is
			// given that TTL.
			o := conflict.Other
			local := o.Hostname == reg.Hostname && o.Pid != reg.Pid
			if local || time.Since(conflictSince) > agentTTL+2*time.Second {
				return nil, err
			}
			if !retry.Sleep(ctx, 500*time.Millisecond) {
				return nil, ctx.Err()
			}
			continue
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		a.cfg.Logger.Warn("agent registration failed; retrying", "err", err)
		if !retry.Sleep(ctx, bo.NextBackOff()) {
			return nil, ctx.Err()
		}
	}
}

// agentTTL is the lease of an agent's registration.
const agentTTL = 10 * time.Second

// sameAgent: the registration is this agent's own, left by a lease it lost.
func sameAgent(o, me *lbpb.AgentRegistration) bool {
	return o.Hostname == me.Hostname && o.Pid == me.Pid && o.StartedAtUnixMs == me.StartedAtUnixMs
}

// deadLocalAgent: the registration is of a process of this host that no
// longer runs (killed and restarted before its lease expired).
func deadLocalAgent(o, me *lbpb.AgentRegistration) bool {
	if o.Hostname != me.Hostname || o.Pid <= 0 || o.Pid == me.Pid {
		return false
	}
	return errors.Is(syscall.Kill(int(o.Pid), 0), syscall.ESRCH)
}

// errTakenOver ends Run when another agent took the store over.
type errTakenOver struct{ by *lbpb.AgentRegistration }

func (e errTakenOver) Error() string {
	return fmt.Sprintf("store %d was taken over by the agent on host %q (pid %d); this one stops", e.by.StoreId, e.by.Hostname, e.by.Pid)
}

// lostStore is what Run returns once its context ended: the reason when
// the store was lost to another agent, nil on a plain shutdown.
func lostStore(ctx context.Context) error {
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// keepRegistered holds the store's registration until ctx ends, claiming
// it again when the lease is lost; losing it to another agent (a take
// over, or one that registered while this one's lease had expired) stops
// this agent through stop.
func (a *Agent) keepRegistered(ctx context.Context, stop context.CancelCauseFunc, reg *lbpb.AgentRegistration, claim *meta.AgentClaim) {
	for {
		select {
		case <-claim.Lost:
		case <-ctx.Done():
			<-claim.Lost // the revoke: gone before Run returns, so a restart finds the store free
			return
		}
		if ctx.Err() != nil {
			return
		}
		if by := claim.TakenBy(); by != nil {
			a.cfg.Logger.Error("another agent took this store over; stopping", "store", a.cfg.StoreID, "host", by.Hostname, "pid", by.Pid)
			stop(errTakenOver{by})
			return
		}
		next, err := a.claim(ctx, reg, false)
		if err != nil {
			var conflict *meta.AgentConflictError
			if errors.As(err, &conflict) {
				a.cfg.Logger.Error("another agent registered this store meanwhile; stopping", "store", a.cfg.StoreID, "err", err)
				stop(err)
			}
			return
		}
		claim = next
	}
}
