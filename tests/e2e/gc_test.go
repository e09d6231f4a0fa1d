package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tikv/client-go/v2/oracle"

	"logbackup/meta"
	"logbackup/tests/eventually"
	"logbackup/tests/simcluster"
)

// safePoints lists PD's live service safepoints, id=ts, sorted.
func safePoints(c *simcluster.Cluster) []string {
	var out []string
	for id, sp := range c.ServiceSafePoints() {
		if id == "gc_worker" {
			continue
		}
		out = append(out, fmt.Sprintf("%s=%d", id, sp.SafePoint))
	}
	sort.Strings(out)
	return out
}

func hasPrefix(ids []string, prefix string) (string, bool) {
	for _, id := range ids {
		if strings.HasPrefix(id, prefix) {
			return id, true
		}
	}
	return "", false
}

// TestGCSafePointsAsTiKVAndBR: the PD service safepoints a log backup
// task holds over its life, through the real CLI and the agents, with
// TiKV's and BR's ids and values:
//   - start refuses a start-ts PD's GC has reached, and sets BR's start
//     safepoint (br-<uuid>) at start-ts − 1;
//   - each store's agent keeps backup-stream-<task>-<store> at its store
//     checkpoint − 1, refreshed as flushes go on;
//   - pause sets <task>_pause_safepoint at the checkpoint − 1 for --gc-ttl;
//   - resume removes the agents' pause guards and cuts the pause safepoint
//     to 30 minutes; stop removes every safepoint of the task.
func TestGCSafePointsAsTiKVAndBR(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := startPDCluster(t, ctx, simcluster.Config{Stores: 2, SplitKeys: [][]byte{[]byte("t5")}})
	e := pdEtcd{c}
	r := brRun{t: t, ep: e.Endpoint()}
	h := &harness{t: t, ctx: ctx, c: c, etcd: e, m: meta.NewClient(e.Client(t))}
	dir := t.TempDir()

	// GC has run to some point: a start before it is refused.
	past, _ := c.TSO(ctx)
	// GC's safe point lies in PD's past: the clock has moved on from it.
	eventually.True(t, 10*time.Second, func() bool {
		now, _ := c.TSO(ctx)
		return oracle.ExtractPhysical(now) > oracle.ExtractPhysical(past)
	}, "PD's clock to pass %d", past)
	if _, err := c.SetGCSafePoint(ctx, past); err != nil {
		t.Fatal(err)
	}
	r.fails("at or below PD's txn safe point", "stream", "start", "--task-name", "pitr", "--storage", "local://"+filepath.Join(dir, "b"),
		"--start-ts", fmt.Sprint(past-1000))
	start, _ := c.TSO(ctx)
	r.ok("stream", "start", "--task-name", "pitr", "--storage", "local://"+filepath.Join(dir, "b"), "--start-ts", fmt.Sprint(start), "--gc-ttl", "10m")
	sps := safePoints(c)
	if id, ok := hasPrefix(sps, "br-"); !ok || !strings.HasSuffix(id, fmt.Sprintf("=%d", start-1)) {
		t.Fatalf("no BR start safepoint at start-1 (%d): %v", start-1, sps)
	}
	if exp := c.ServiceSafePoints(); true {
		for id, sp := range exp {
			if strings.HasPrefix(id, "br-") && sp.ExpiresAt.Sub(time.Now()) > 11*time.Minute {
				t.Fatalf("start safepoint lives until %s, want --gc-ttl 10m", sp.ExpiresAt)
			}
		}
	}

	for _, s := range c.StoreIDs() {
		_, stop := h.agent(s, nil, nil)
		defer stop()
	}
	for i := 0; i < 20; i++ {
		if _, err := c.Put(ctx, []byte(fmt.Sprintf("t%d", i%9)), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	end, _ := c.TSO(ctx)
	h.waitGlobal(end)
	// Each store's flush safepoint follows its store checkpoint.
	eventually.NoError(t, 20*time.Second, func(ctx context.Context) error {
		cps, err := h.m.Checkpoints(ctx, "pitr")
		if err != nil {
			t.Fatal(err)
		}
		live := c.ServiceSafePoints()
		ok, stores := true, 0
		for _, cp := range cps {
			if cp.Kind != meta.CheckpointStore {
				continue // a store leading no region has no store checkpoint
			}
			stores++
			sp, found := live[meta.FlushSafePointID("pitr", cp.StoreID)]
			if !found || sp.SafePoint != cp.TS-1 || cp.TS < end {
				ok = false
			}
		}
		if !ok || stores == 0 {
			return fmt.Errorf("safepoints %v, checkpoints %v", safePoints(c), cps)
		}
		return nil
	}, "the flush safepoints to follow the store checkpoints")

	// The pause holds GC at the checkpoint it read; the agents' final
	// flushes may still move the checkpoint after it, so it lies between
	// the checkpoint before the pause and the one after.
	before, _, _ := h.m.GlobalCheckpoint(ctx, "pitr")
	r.ok("stream", "pause", "--task-name", "pitr", "--gc-ttl", "2h")
	after, _, _ := h.m.GlobalCheckpoint(ctx, "pitr")
	pause, ok := c.ServiceSafePoints()["pitr_pause_safepoint"]
	if !ok || pause.SafePoint < before-1 || pause.SafePoint > after-1 || pause.ExpiresAt.Sub(oracle.GetTimeFromTS(end)) > 3*time.Hour {
		t.Fatalf("pause safepoint %+v, want between %d and %d for 2h", pause, before-1, after-1)
	}
	// An agent's pause guard (the fatal path sets them) goes with resume.
	guard := meta.PauseGuardID("pitr", c.StoreIDs()[0])
	if err := meta.SetServiceSafePoint(ctx, c.PD(), guard, time.Hour, after-1); err != nil {
		t.Fatal(err)
	}
	r.ok("stream", "resume", "--task-name", "pitr")
	live := c.ServiceSafePoints()
	if _, ok := live[guard]; ok {
		t.Fatalf("resume left the pause guard: %v", safePoints(c))
	}
	if p, ok := live["pitr_pause_safepoint"]; ok && time.Until(p.ExpiresAt) > 31*time.Minute {
		t.Fatalf("resume left the pause safepoint for %s", time.Until(p.ExpiresAt))
	}

	r.ok("stream", "stop", "--task-name", "pitr")
	// The agents act on the stop too: they drop their flush safepoints.
	eventually.NoError(t, 20*time.Second, func(context.Context) error {
		for id := range c.ServiceSafePoints() {
			if strings.Contains(id, "pitr") {
				return fmt.Errorf("safepoint %s left: %v", id, safePoints(c))
			}
		}
		return nil
	}, "the stop to clear the task's safepoints")
}
