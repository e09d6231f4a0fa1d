package simcluster

import (
	"context"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
)

// features are what TiKV enables on an EventFeed connection from the
// ticdc_version in the header of its first request (service.rs
// FeatureGate::default_features). An empty or unparsable version counts as
// 0.0.0, as in TiKV.
type features struct {
	// batchResolvedTs (≥ 4.0.8): resolved ts come as store-level
	// ResolvedTs{regions, ts, request_id: 0} messages; before that, as one
	// deprecated per-region Event.resolved_ts per subscription.
	batchResolvedTs bool
	// validateClusterID (≥ 5.3.0): registrations with another cluster id
	// get cluster_id_mismatch; before that the id is not checked.
	validateClusterID bool
}

func featuresOf(version string) features {
	v := parseSemver(version)
	return features{
		batchResolvedTs:   !less(v, [3]int{4, 0, 8}),
		validateClusterID: !less(v, [3]int{5, 3, 0}),
	}
}

// parseSemver reads MAJOR.MINOR.PATCH with an optional -pre or +build
// suffix, strictly like Rust's semver crate ("v5.3.0" is invalid).
func parseSemver(s string) [3]int {
	if i := strings.IndexAny(s, "-+"); i >= 0 {
		s = s[:i]
	}
	parts := strings.Split(s, ".")
	var v [3]int
	if len(parts) != 3 {
		return [3]int{}
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || p == "" || (len(p) > 1 && p[0] == '0') || strings.HasPrefix(p, "+") {
			return [3]int{}
		}
		v[i] = n
	}
	return v
}

func less(a, b [3]int) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}

// resolvedTsLoop sends resolved ts on its interval until ctx ends.
func (c *Cluster) resolvedTsLoop(ctx context.Context) {
	t := time.NewTicker(c.cfg.ResolvedTsInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.ResolveOnce(ctx)
	}
}

type regionTs struct {
	region, ts uint64
}

// ResolveOnce computes and sends one round of resolved ts, as TiKV's
// endpoint does on each min-ts tick (the loop calls it on its interval;
// tests may call it directly).
//
// Per subscription (TiKV's downstream), only once its INITIALIZED is sent:
// advanced_to = max(advanced_to, min(T, the smallest start_ts of a Put or
// Delete lock in its key range)), where T is a TSO taken before the lock
// table is read under the mutex that records prewrites. A prewrite recorded
// later belongs to a transaction whose commit ts comes from a TSO fetched
// after that, so > T: no commit at or below a sent resolved ts can follow.
// As in TiKV, advanced_to starts at 0 — so it can be sent below the
// registration's checkpoint_ts while an older lock is held — and it is sent
// every round, advanced or not.
//
// Batch-capable streams get ResolvedTs messages with request_id 0 whose
// regions are grouped slowest first in batches of 8, 32, 128, …, each
// carrying the minimum ts of its batch (endpoint.rs Advance); older clients
// get one Event{resolved_ts} per region.
func (c *Cluster) ResolveOnce(ctx context.Context) {
	ts, err := c.TSO(ctx)
	if err != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	batched := map[*feedStream][]regionTs{}
	type compatKey struct {
		stream *feedStream
		region uint64
	}
	compat := map[compatKey]*cdcpb.Event{}
	var compatOrder []compatKey
	regions := make([]uint64, 0, len(c.subs))
	for id := range c.subs {
		regions = append(regions, id)
	}
	slices.Sort(regions)
	for _, regionID := range regions {
		for sub := range c.subs[regionID] {
			if sub.state != subNormal {
				continue
			}
			r := ts
			m, ok := c.ledger.minLockIn(sub.start, sub.end)
			if sub.rawOK {
				m, ok = c.ledger.minLockInRaw(sub.rawLo, sub.rawHi, sub.rawUnbounded)
			}
			if ok && m < r {
				r = m
			}
			if r > sub.advancedTo {
				sub.advancedTo = r
			}
			if sub.stream.features.batchResolvedTs {
				batched[sub.stream] = append(batched[sub.stream], regionTs{regionID, sub.advancedTo})
				continue
			}
			k := compatKey{sub.stream, regionID}
			if compat[k] == nil {
				compatOrder = append(compatOrder, k)
			}
			compat[k] = &cdcpb.Event{RegionId: regionID, RequestId: sub.requestID,
				Event: &cdcpb.Event_ResolvedTs{ResolvedTs: sub.advancedTo}}
		}
	}
	for st, rts := range batched {
		sort.SliceStable(rts, func(i, j int) bool { return rts[i].ts < rts[j].ts })
		for n := 8; len(rts) > 0; n *= 4 {
			k := min(n, len(rts))
			msg := &cdcpb.ResolvedTs{Ts: rts[0].ts, RequestId: 0}
			for _, r := range rts[:k] {
				msg.Regions = append(msg.Regions, r.region)
			}
			st.push(c, msg)
			rts = rts[k:]
		}
	}
	for _, k := range compatOrder {
		k.stream.push(c, compat[k])
	}
}
