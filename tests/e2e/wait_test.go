package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"logbackup/tests/eventually"
	"logbackup/tests/simcluster"
)

// TestResumeWait: `resume --wait` returns only once every store leading
// the task's regions has an agent that observes them again and has flushed
// past the resume, printing each store's time; with a store's agent down
// it fails after --timeout naming that store and why. `status` shows each
// store's state and the speed.
func TestResumeWait(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	h := newHarness(t, ctx, simcluster.Config{SplitKeys: [][]byte{[]byte("t3"), []byte("t6")}}, "local://"+filepath.Join(t.TempDir(), "b"), 0)
	stops := map[uint64]func(){}
	for _, s := range h.c.StoreIDs() {
		_, stop := h.agent(s, nil, nil)
		stops[s] = stop
	}
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()
	// Leaders on every store, so each one must catch up.
	for i, r := range h.c.Regions() {
		if err := h.c.TransferLeader(r.Meta.Id, h.c.StoreIDs()[i%len(h.c.StoreIDs())]); err != nil {
			t.Fatal(err)
		}
	}
	r := h.brRun()
	for i := 0; i < 30; i++ {
		if _, err := h.c.Put(ctx, []byte{'t', byte('0' + i%9), byte(i)}, []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	end, _ := h.c.TSO(ctx)
	h.waitGlobal(end)

	// Status: a state per store, and the speed.
	var views []struct {
		Status, State string
		Stores        []struct {
			StoreID uint64 `json:"store_id"`
			State   string `json:"state"`
		} `json:"stores"`
		EstimateQPS *float64 `json:"estimate_qps"`
	}
	eventually.NoError(t, 20*time.Second, func(context.Context) error {
		if err := json.Unmarshal([]byte(r.ok("stream", "status", "--task-name", "pitr", "--json")), &views); err != nil {
			t.Fatal(err)
		}
		healthy := 0
		for _, s := range views[0].Stores {
			if s.State == "HEALTHY" {
				healthy++
			}
		}
		if healthy != 3 || views[0].EstimateQPS == nil {
			return fmt.Errorf("status %+v", views[0])
		}
		return nil
	}, "every store HEALTHY and a speed estimate")
	if table := r.ok("stream", "status", "--task-name", "pitr"); !strings.Contains(table, "speed(est.):") || !strings.Contains(table, "store[1]: ● HEALTHY") {
		t.Fatalf("status table:\n%s", table)
	}

	r.ok("stream", "pause", "--task-name", "pitr")
	if table := r.ok("stream", "status", "--task-name", "pitr"); !strings.Contains(table, "PAUSED") {
		t.Fatalf("paused status table:\n%s", table)
	}
	out := r.ok("stream", "resume", "--task-name", "pitr", "--wait", "--timeout", "60s")
	for _, s := range []string{"store 1:", "store 2:", "store 3:", "Every store caught up"} {
		if !strings.Contains(out, s) {
			t.Fatalf("resume --wait output lacks %q:\n%s", s, out)
		}
	}

	// One store's agent goes away: --wait names it.
	down := h.c.StoreIDs()[1]
	stops[down]()
	delete(stops, down)
	r.ok("stream", "pause", "--task-name", "pitr")
	began := time.Now()
	res := r.fails("did not catch up", "stream", "resume", "--task-name", "pitr", "--wait", "--timeout", "3s")
	if !strings.Contains(res.stderr, "no live agent") || !strings.Contains(res.stderr, "store 2") {
		t.Fatalf("timeout does not name the store and why: %s", res.stderr)
	}
	if took := time.Since(began); took > 30*time.Second {
		t.Fatalf("--timeout 3s took %s", took)
	}
	if v := statusOf(t, r, "pitr"); v.Status != "NORMAL" {
		t.Fatalf("JSON status %q, want BR's NORMAL (STALLED lives in its own field)", v.Status)
	}
}
