package e2e

import (
	"context"
	"encoding/binary"
	"math/rand"
	"sync"
	"testing"
	"time"

	"logbackup/tests/simcluster"
)

// TestBulkFullSpeedUnderChurn: the bulk writer at full speed (no rate
// limit) into 32 regions over three stores, one agent per store, while
// leaders move between the stores and regions split inside the writer's
// range (during the writes and while the agents catch up); then every version committed up to the global checkpoint must be
// in storage with its value (and verify must prove the storage). The
// agents' intake, flush pipeline and checkpoints under the fastest source
// the simulator has, with topology changes racing both.
func TestBulkFullSpeedUnderChurn(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	h := newHarness(t, ctx, simcluster.Config{Stores: 3}, "local://"+t.TempDir(), 0)
	w, err := h.c.NewBulkWriter(simcluster.BulkConfig{Keys: simcluster.KeysTiDBRow, Regions: 32, Split: true, ValueSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range h.c.StoreIDs() {
		_, stop := h.agent(s, nil, nil)
		defer stop()
	}
	seed := time.Now().UnixNano()
	t.Logf("churn seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	start, end := w.Range()
	churnCtx, stopChurn := context.WithCancel(ctx)
	var wg sync.WaitGroup
	moves, splits := 0, 0
	wg.Go(func() {
		for churnCtx.Err() == nil {
			// Time is the subject: the churn's pace, a change every
			// 5–25 ms at random.
			time.Sleep(time.Duration(5+rng.Intn(20)) * time.Millisecond)
			regions := h.c.Regions()
			reg := regions[rng.Intn(len(regions))]
			if rng.Intn(3) == 0 {
				// A split between two of the writer's keys: TiDB row key
				// t{100}_r{shard<<43 | seq} of a random shard.
				handle := uint64(rng.Intn(32))<<43 | uint64(rng.Intn(2000))
				at := []byte{'t'}
				at = binary.BigEndian.AppendUint64(at, uint64(100)^(1<<63))
				at = append(at, "_r"...)
				at = binary.BigEndian.AppendUint64(at, handle^(1<<63))
				if string(at) > string(start) && string(at) < string(end) {
					if _, err := h.c.Split(at); err == nil {
						splits++
					}
				}
				continue
			}
			if err := h.c.TransferLeader(reg.Meta.Id, h.c.StoreIDs()[rng.Intn(3)]); err == nil {
				moves++
			}
		}
	})
	st, err := w.Write(ctx, 150_000)
	if err != nil {
		t.Fatal(err)
	}
	last, err := h.c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The churn goes on while the agents catch up.
	global := h.waitGlobal(last)
	stopChurn()
	wg.Wait()
	n := assertBackedUp(t, ctx, h.url, h.c, h.startTS, global)
	if int64(n) < st.Rows {
		t.Fatalf("%d versions in storage's range, %d written", n, st.Rows)
	}
	if moves == 0 || splits == 0 {
		t.Fatalf("no churn: %d leader moves, %d splits", moves, splits)
	}
	t.Logf("%d rows at %.0f rows/s, %d leader moves, %d splits", st.Rows, float64(st.Rows)/st.Elapsed.Seconds(), moves, splits)
}
