package streamagent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/pingcap/kvproto/pkg/pdpb"
	pd "github.com/tikv/pd/client"

	"logbackup/streamagent/errs"
)

// The agent's own store as PD knows it. Real PD keeps removed stores as
// tombstones (listed by GetAllStores, hidden by the pd client's GetStore
// behind (nil, nil)) and lets a new store take a removed or physically
// destroyed store's address, so a store id can name a store that is gone
// and an address can name several stores.

// StoreGoneError says the store an agent serves is not in the cluster: a
// tombstone (removed, e.g. by a scale-in) or an id PD never had. It is a
// definite answer: waiting does not change it.
type StoreGoneError struct {
	ID      uint64
	Address string // "" when PD has no such store
	State   string // "Tombstone", or "missing"
	// Live lists PD's live stores, to name the right one.
	Live []*metapb.Store
}

func (e *StoreGoneError) Error() string {
	var b strings.Builder
	if e.State == StoreMissing {
		fmt.Fprintf(&b, "store %d does not exist in PD", e.ID)
	} else {
		fmt.Fprintf(&b, "store %d (%s) is %s in PD: it was removed from the cluster and nothing is backed up from it", e.ID, e.Address, e.State)
	}
	b.WriteString("; run the agent beside a live store")
	if len(e.Live) > 0 {
		b.WriteString(" (PD's live stores: ")
		b.WriteString(describeStores(e.Live))
		b.WriteString(")")
	}
	return b.String()
}

// StoreMissing is StoreGoneError.State for an id PD does not know.
const StoreMissing = "missing"

// ErrPDNotBootstrapped: PD answers but no TiKV has bootstrapped the
// cluster yet. Not definite: the agent waits for it.
var ErrPDNotBootstrapped = errors.New("PD is not bootstrapped yet: no TiKV store has joined the cluster")

// removed reports whether PD has removed the store for good. A store that
// is being removed (Offline) still holds regions and is served as usual.
func removed(s *metapb.Store) bool {
	return s.GetNodeState() == metapb.NodeState_Removed || s.GetState() == metapb.StoreState_Tombstone
}

// stateName is PD's name for a store's state (pd-ctl's state_name).
func stateName(s *metapb.Store) string {
	if removed(s) {
		return metapb.StoreState_Tombstone.String()
	}
	return s.GetState().String()
}

func describeStores(stores []*metapb.Store) string {
	parts := make([]string, 0, len(stores))
	for _, s := range stores {
		d := fmt.Sprintf("%d at %s %s", s.GetId(), s.GetAddress(), stateName(s))
		if s.GetPhysicallyDestroyed() {
			d += " (physically destroyed)"
		}
		parts = append(parts, d)
	}
	return strings.Join(parts, ", ")
}

// LookupStore finds the store an agent serves, by id or (id 0) by
// address, in PD's full store list (tombstones included). It answers a
// *StoreGoneError for a removed or unknown store, an error for an address
// that names no live store or several, ErrPDNotBootstrapped, or the PD
// error that kept it from knowing (to retry).
func LookupStore(ctx context.Context, pdc pd.Client, id uint64, addr string) (*metapb.Store, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	stores, err := pdc.GetAllStores(rctx)
	if err != nil {
		if notBootstrapped(rctx, pdc) {
			return nil, ErrPDNotBootstrapped
		}
		return nil, errs.Wrap(errs.CodePD, fmt.Errorf("list PD's stores: %w", err))
	}
	slices.SortFunc(stores, func(a, b *metapb.Store) int { return cmp.Compare(a.GetId(), b.GetId()) })
	var live []*metapb.Store
	for _, s := range stores {
		if !removed(s) {
			live = append(live, s)
		}
	}
	if id != 0 {
		for _, s := range stores {
			if s.GetId() != id {
				continue
			}
			if removed(s) {
				return nil, &StoreGoneError{ID: id, Address: s.GetAddress(), State: stateName(s), Live: live}
			}
			return s, nil
		}
		return nil, &StoreGoneError{ID: id, State: StoreMissing, Live: live}
	}
	return pickByAddress(stores, addr)
}

// pickByAddress picks the one store serving addr. Removed stores are
// skipped, and so are stores physically destroyed (`pd-ctl store delete
// --force`, still draining): PD lets a new TiKV register at their address,
// so what runs there now is the other one. Two that remain are refused:
// the agent must not guess which store's data it backs up.
func pickByAddress(stores []*metapb.Store, addr string) (*metapb.Store, error) {
	var cands, skipped []*metapb.Store
	for _, s := range stores {
		if s.GetAddress() != addr {
			continue
		}
		if removed(s) || s.GetPhysicallyDestroyed() {
			skipped = append(skipped, s)
			continue
		}
		cands = append(cands, s)
	}
	switch {
	case len(cands) == 1:
		return cands[0], nil
	case len(cands) > 1:
		return nil, &AddressError{fmt.Sprintf("%d live stores have the address %s in PD (%s): pass --store-id to say which one this agent serves",
			len(cands), addr, describeStores(cands))}
	case len(skipped) > 0:
		return nil, &AddressError{fmt.Sprintf("no live store has the address %s in PD, only removed ones (%s): start the agent once its TiKV has joined, or pass --store-id",
			addr, describeStores(skipped))}
	default:
		return nil, &AddressError{fmt.Sprintf("no store has the address %s in PD: check --store-addr against `pd-ctl store` (the address TiKV advertises)", addr)}
	}
}

// AddressError: an address names no live store, or several. Definite,
// like StoreGoneError.
type AddressError struct{ msg string }

func (e *AddressError) Error() string { return e.msg }

// notBootstrapped asks PD, by its typed answer, whether the cluster is
// still unbootstrapped. Any other outcome (PD unreachable, a PD that does
// not serve the call) is false: the caller reports its own error.
func notBootstrapped(ctx context.Context, pdc pd.Client) bool {
	sd := pdc.GetServiceDiscovery()
	if sd == nil {
		return false
	}
	conn := sd.GetServingEndpointClientConn()
	if conn == nil {
		return false
	}
	resp, err := pdpb.NewPDClient(conn).IsBootstrapped(ctx, &pdpb.IsBootstrappedRequest{
		Header: &pdpb.RequestHeader{ClusterId: pdc.GetClusterID(ctx)}})
	if err != nil {
		return false
	}
	if e := resp.GetHeader().GetError(); e != nil && e.GetType() != pdpb.ErrorType_OK {
		return e.GetType() == pdpb.ErrorType_NOT_BOOTSTRAPPED
	}
	return !resp.GetBootstrapped()
}

// ownStore looks up the agent's store while it runs. The pd client's
// GetStore answers (nil, nil) for a tombstone, and an error for an id PD
// no longer knows (a tombstone pruned by `pd-ctl store remove-tombstone`),
// which the full list tells apart from a failing PD.
func (a *Agent) ownStore(ctx context.Context) (*metapb.Store, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := a.cfg.PD.GetStore(rctx, a.cfg.StoreID)
	if err == nil && s != nil && !removed(s) {
		return s, nil
	}
	got, err := LookupStore(ctx, a.cfg.PD, a.cfg.StoreID, "")
	var gone *StoreGoneError
	if errors.As(err, &gone) {
		a.storeGone(gone)
		return nil, gone
	}
	if err != nil {
		return nil, err
	}
	return got, nil
}

// storeGone stops the agent's work for good: its store left the cluster,
// so there is nothing to back up and its regions' new leaders' agents take
// the ranges over. Run returns the error once every task has stopped.
func (a *Agent) storeGone(gone *StoreGoneError) {
	if !a.gone.CompareAndSwap(nil, gone) {
		return
	}
	a.cfg.Logger.Error("this agent's store was removed from the cluster; stopping every task (the stores that lead its regions now take them over)",
		"store", a.cfg.StoreID, "address", gone.Address, "state", gone.State)
	if stop := a.stopRun.Load(); stop != nil {
		(*stop)(gone)
	}
}

// watchStore checks on every reconcile tick that the store is still in
// the cluster: an agent leading no regions opens no stream, and would not
// notice otherwise.
func (a *Agent) watchStore(ctx context.Context) {
	t := time.NewTicker(a.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := a.ownStore(ctx); err != nil && ctx.Err() == nil {
				var gone *StoreGoneError
				if errors.As(err, &gone) {
					return
				}
				a.cfg.Logger.Debug("cannot check this agent's store in PD", "err", err)
			}
		}
	}
}
