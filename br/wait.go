package br

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/tikv/client-go/v2/util/codec"

	"logbackup/meta"
)

// DefaultWaitTimeout bounds `--wait` when no --timeout is given.
const DefaultWaitTimeout = 5 * time.Minute

// waitObserved returns once every store that leads regions of the task's
// ranges has an agent that observes them (initial scans done) and has
// flushed past since — the moment of the resume or start — printing how
// long each store took. On timeout it fails naming each store that did
// not, and why. The task's leaders are read from PD once at the start: a
// leader moving meanwhile is the new store's to catch up with.
func waitObserved(ctx context.Context, env *Env, name string, since uint64, timeout time.Duration, w io.Writer) error {
	if timeout <= 0 {
		timeout = DefaultWaitTimeout
	}
	began := time.Now()
	deadline := began.Add(timeout)
	t, err := getTask(ctx, env, name)
	if err != nil {
		return err
	}
	leaders, err := leaderStores(ctx, env, name)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "Waiting for the agents of %d store(s) to observe the task and flush past %s...\n", len(leaders), FormatTS(since, env.loc()))
	done := map[uint64]time.Duration{}
	var why map[uint64]string
	for {
		why, err = pendingStores(ctx, env, t, leaders, since, done)
		if err != nil {
			return err
		}
		for s, took := range done {
			if took >= 0 {
				fmt.Fprintf(w, "  store %d: observing %d region(s), flushed past the point after %s\n", s, leaders[s], took.Round(time.Millisecond))
				done[s] = -1 // printed
			}
		}
		if len(why) == 0 {
			fmt.Fprintf(w, "Every store caught up in %s.\n", time.Since(began).Round(time.Millisecond))
			return nil
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	stores := make([]uint64, 0, len(why))
	for s := range why {
		stores = append(stores, s)
	}
	sort.Slice(stores, func(i, j int) bool { return stores[i] < stores[j] })
	var lines []string
	for _, s := range stores {
		lines = append(lines, fmt.Sprintf("store %d: %s", s, why[s]))
	}
	return userError("check `br stream status` and the agents named; the task itself is resumed and they catch up when they can", nil,
		"%d store(s) did not catch up within %s: %s", len(stores), timeout, strings.Join(lines, "; "))
}

// leaderStores maps each store that leads regions of the task's ranges to
// how many (distinct regions).
func leaderStores(ctx context.Context, env *Env, name string) (map[uint64]int, error) {
	pdc, err := env.pd(ctx)
	if err != nil {
		return nil, err
	}
	ranges, err := env.Meta.Ranges(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("read ranges of %q: %w", name, err)
	}
	out := map[uint64]int{}
	seen := map[uint64]bool{} // a region spanning two ranges counts once
	for _, r := range ranges {
		start := codec.EncodeBytes(nil, r.StartKey)
		var end []byte
		if len(r.EndKey) > 0 {
			end = codec.EncodeBytes(nil, r.EndKey)
		}
		regions, err := meta.ScanRegions(ctx, pdc, start, end)
		if err != nil {
			return nil, userError("check PD's health", err, "cannot list the task's regions")
		}
		for _, reg := range regions {
			if reg.Leader != nil && !seen[reg.Meta.GetId()] {
				seen[reg.Meta.GetId()] = true
				out[reg.Leader.StoreId]++
			}
		}
	}
	return out, nil
}

// pendingStores says, for each leader store not yet caught up, why; it
// records in done how long each store that is caught up took.
func pendingStores(ctx context.Context, env *Env, t *meta.TaskStatus, leaders map[uint64]int, since uint64, done map[uint64]time.Duration) (map[uint64]string, error) {
	name := t.Info.Name
	agents, err := env.Meta.Agents(ctx)
	if err != nil {
		return nil, fmt.Errorf("read agent registrations: %w", err)
	}
	reports, err := env.Meta.Progresses(ctx, name, t.Incarnation)
	if err != nil {
		return nil, fmt.Errorf("read agent reports of %q: %w", name, err)
	}
	cps, err := env.Meta.Checkpoints(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("read checkpoints of %q: %w", name, err)
	}
	storeCP := map[uint64]uint64{}
	for _, cp := range cps {
		if cp.Kind == meta.CheckpointStore {
			storeCP[cp.StoreID] = cp.TS
		}
	}
	lastErrors, err := env.Meta.LastErrors(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("read last errors of %q: %w", name, err)
	}
	now := env.now()
	why := map[uint64]string{}
	for s := range leaders {
		if _, ok := done[s]; ok {
			continue
		}
		r := reports[s]
		switch {
		case lastErrors[s] != nil:
			why[s] = fmt.Sprintf("LastError %s: %s", lastErrors[s].ErrorCode, lastErrors[s].ErrorMessage)
		case agents[s] == nil:
			why[s] = "no live agent"
		case r == nil || now.Sub(time.UnixMilli(r.UpdatedUnixMs)) > staleProgress:
			why[s] = "its agent has not reported on this task yet"
		case r.Scanning > 0 || r.PendingRanges > 0:
			why[s] = fmt.Sprintf("still scanning %d of %d region(s), %d range(s) to place", r.Scanning, r.ObservedRegions, r.PendingRanges)
		case r.State == meta.StateRetrying:
			why[s] = fmt.Sprintf("flushes failing (%d attempts): %s", r.Attempts, r.LastError)
		case storeCP[s] < since:
			why[s] = "observing, not yet flushed past the point"
		default:
			done[s] = time.Since(PhysicalTime(since))
		}
	}
	return why, nil
}

// Wait is `--wait`: see waitObserved.
func Wait(ctx context.Context, env *Env, name string, since uint64, timeout time.Duration, w io.Writer) error {
	return waitObserved(ctx, env, name, since, timeout, w)
}

// TSO takes a timestamp from PD (the point `--wait` waits past).
func TSO(ctx context.Context, env *Env) (uint64, error) { return env.tso(ctx) }
