package br

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/pd/client/opt"

	"logbackup/meta"
)

// checkRequirements is `start --check-requirements` (on by default, as in
// BR). BR checks the cluster's versions and that TiKV's own log backup is
// enabled, since a task nothing observes never advances. Here the
// observers are our agents, so the check is:
//   - PD answers and has heard from at least one TiKV store within the last
//     20 s (an error otherwise: a task on such a cluster cannot be backed
//     up). PD keeps a store that stopped heartbeating Up, so its state
//     alone cannot tell;
//   - every such store has a live agent registered in etcd (a warning
//     naming the stores otherwise: the agents may be started after the
//     task, but until each store has one the task's checkpoint stays at its
//     start).
//
// --check-requirements=false skips both.
func checkRequirements(ctx context.Context, env *Env, w io.Writer) error {
	pdc, err := env.pd(ctx)
	if err != nil {
		return err
	}
	rctx, cancel := meta.PDCallContext(ctx, 10*time.Second)
	stores, err := pdc.GetAllStores(rctx, opt.WithExcludeTombstone())
	cancel()
	if err != nil {
		return userError("check PD's health, or pass --check-requirements=false", err, "cannot list the stores from PD")
	}
	// PD's heartbeat times are on PD's clock.
	nowTS, err := env.tso(ctx)
	if err != nil {
		return err
	}
	now := PhysicalTime(nowTS)
	var up []*metapb.Store
	silent := 0
	for _, s := range stores {
		if s.GetState() != metapb.StoreState_Up || isTiFlash(s) {
			continue
		}
		if hb := s.GetLastHeartbeat(); hb == 0 || now.Sub(time.Unix(0, hb)) > storeDisconnected {
			silent++
			continue
		}
		up = append(up, s)
	}
	if len(up) == 0 {
		return userError("check the cluster (pd-ctl store) and that the TiKV stores run, or pass --check-requirements=false", nil,
			"PD has heard from no TiKV store within %s (%d stores in all, %d up in PD's records but silent)", storeDisconnected, len(stores), silent)
	}
	agents, err := env.Meta.Agents(ctx)
	if err != nil {
		return fmt.Errorf("read agent registrations: %w", err)
	}
	var missing []string
	for _, s := range up {
		if _, ok := agents[s.GetId()]; !ok {
			missing = append(missing, fmt.Sprintf("%d (%s)", s.GetId(), s.GetAddress()))
		}
	}
	sort.Strings(missing)
	env.log().Info("requirements checked", "tikv_stores_up", len(up), "agents", len(agents), "stores_without_agent", missing)
	if len(missing) > 0 {
		fmt.Fprintf(w, "warning: no log backup agent is registered for store %s: the task will not advance until one runs beside each store\n",
			strings.Join(missing, ", "))
	}
	return nil
}

// isTiFlash tells TiFlash stores apart as PD's clients do: by the engine
// label. They hold no TiKV data to observe.
func isTiFlash(s *metapb.Store) bool {
	for _, l := range s.GetLabels() {
		if l.GetKey() == "engine" && strings.HasPrefix(l.GetValue(), "tiflash") {
			return true
		}
	}
	return false
}
