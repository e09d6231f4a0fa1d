package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/streamagent"
	"logbackup/tests/eventually"
	"logbackup/tests/simcluster"
)

const garbage = "\xff\x00garbage"

// TestRepairUnreadableGlobalCheckpoint: garbage in central_global used to
// freeze the task silently (status NORMAL, every advance refused, the
// agents' storage checkpoints stopped with it). The coordinator rewrites
// it from the store checkpoints and logs a WARN; nothing is lost.
func TestRepairUnreadableGlobalCheckpoint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "b")
	h := newHarness(t, ctx, simcluster.Config{Stores: 1}, "local://"+dir, 0)
	logs := &lockedBuffer{}
	_, stop := h.agent(1, nil, func(c *streamagent.Config) { c.Logger = slog.New(slog.NewTextHandler(logs, nil)) })
	defer stop()
	if _, err := h.c.Put(ctx, []byte("t1"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	end, _ := h.c.TSO(ctx)
	h.waitGlobal(end)
	if _, err := h.etcd.Client(t).Put(ctx, meta.GlobalCheckpointKey("pitr"), garbage); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		if _, err := h.c.Put(ctx, []byte("t2"), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	end, _ = h.c.TSO(ctx)
	global := h.waitGlobal(end)
	// The agents' copies move again too.
	eventually.NoError(t, 30*time.Second, func(ctx context.Context) error {
		scs, err := h.m.StorageCheckpoints(ctx, "pitr")
		if err == nil && scs[1] < end {
			err = fmt.Errorf("storage checkpoints %v", scs)
		}
		return err
	}, "store 1's storage checkpoint to reach %d", end)
	if !strings.Contains(logs.String(), "level=WARN msg=\"the global checkpoint could not be read; rewrote it") {
		t.Fatalf("no WARN for the rewrite:\n%s", logs.String())
	}
	if n := assertBackedUp(t, ctx, "local://"+dir, h.c, h.startTS, global); n != 11 {
		t.Fatalf("%d versions, want 11", n)
	}
}

// TestRepairUnreadableOwnCheckpoint: garbage in a store's own store or
// storage checkpoint stops the task with MalformedMetadata, saying that a
// resume with --clear-error rewrites it; that resume used to meet the
// garbage again within seconds (the agent would not overwrite the key
// only it writes). Now the restarted runner rewrites it from the global
// checkpoint, and the task runs on.
func TestRepairUnreadableOwnCheckpoint(t *testing.T) {
	for name, key := range map[string]string{"store": meta.StoreCheckpointKey("pitr", 1), "storage": meta.StorageCheckpointKey("pitr", 1)} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			dir := filepath.Join(t.TempDir(), "b")
			h := newHarness(t, ctx, simcluster.Config{Stores: 1}, "local://"+dir, 0)
			_, stop := h.agent(1, nil, nil)
			defer stop()
			if _, err := h.c.Put(ctx, []byte("t1"), []byte("v")); err != nil {
				t.Fatal(err)
			}
			end, _ := h.c.TSO(ctx)
			h.waitGlobal(end)
			if _, err := h.etcd.Client(t).Put(ctx, key, garbage); err != nil {
				t.Fatal(err)
			}
			if _, err := h.c.Put(ctx, []byte("t2"), []byte("v")); err != nil {
				t.Fatal(err)
			}
			le := waitLastError(t, ctx, h.m)
			if le.ErrorCode != "KV:LogBackup:MalformedMetadata" || !strings.Contains(le.ErrorMessage, "resume --clear-error") {
				t.Fatalf("LastError %s: %s", le.ErrorCode, le.ErrorMessage)
			}
			if err := br.Resume(ctx, h.env(), "pitr", true, io.Discard); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 10; i++ {
				if _, err := h.c.Put(ctx, []byte("t3"), []byte("v")); err != nil {
					t.Fatal(err)
				}
			}
			end, _ = h.c.TSO(ctx)
			global := h.waitGlobal(end)
			// Both keys readable and moving, and no new ERROR.
			eventually.NoError(t, 30*time.Second, func(ctx context.Context) error {
				scs, err := h.m.StorageCheckpoints(ctx, "pitr")
				if err != nil {
					return err
				}
				cps, err := h.m.CheckpointsExceptRegions(ctx, "pitr")
				if err != nil {
					return err
				}
				var store uint64
				for _, cp := range cps {
					if cp.Kind == meta.CheckpointStore && cp.StoreID == 1 {
						store = cp.TS
					}
				}
				if scs[1] < end || store < end {
					return fmt.Errorf("storage checkpoints %v, store checkpoint %d", scs, store)
				}
				return nil
			}, "store 1's storage and store checkpoints to reach %d", end)
			st, err := h.m.GetTask(ctx, "pitr")
			if err != nil || st.Pause.Paused {
				t.Fatalf("task after the repair: %+v %v", st.Pause, err)
			}
			if n := assertBackedUp(t, ctx, "local://"+dir, h.c, h.startTS, global); n != 12 {
				t.Fatalf("%d versions, want 12", n)
			}
		})
	}
}

// TestStuckGlobalCheckpointReported: a global checkpoint the coordinator
// cannot advance (here: garbage in the span-checkpoint record of a store
// that has no agent to rewrite it) used to leave the task NORMAL, the
// stores HEALTHY and the only lag gauge (the store's) near zero, with a
// WARN log as the only sign. Now the coordinator's store reports RETRYING
// with the reason, the global lag gauge keeps growing, and once the
// retry budget is spent the task gets a LastError and an ERROR pause.
func TestStuckGlobalCheckpointReported(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h := newHarness(t, ctx, simcluster.Config{Stores: 1}, "local://"+filepath.Join(t.TempDir(), "b"), 0)
	reg := prometheus.NewRegistry()
	_, stop := h.agent(1, reg, func(c *streamagent.Config) { c.RetryBudget = streamagent.RetryBudget{Duration: 5 * time.Second} })
	defer stop()
	if _, err := h.c.Put(ctx, []byte("t1"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	end, _ := h.c.TSO(ctx)
	h.waitGlobal(end)
	st, err := h.m.GetTask(ctx, "pitr")
	if err != nil {
		t.Fatal(err)
	}
	key := meta.SpanCheckpointKey("pitr", st.Incarnation, 9)
	if _, err := h.etcd.Client(t).Put(ctx, key, garbage); err != nil {
		t.Fatal(err)
	}
	sawRetrying, lagGrew := false, false
	eventually.NoError(t, 30*time.Second, func(ctx context.Context) error {
		if _, err := h.c.Put(ctx, []byte("t2"), []byte("v")); err != nil {
			t.Fatal(err)
		}
		if rs, err := h.m.Progresses(ctx, "pitr", st.Incarnation); err == nil && rs[1] != nil && rs[1].State == meta.StateRetrying {
			if !strings.Contains(rs[1].LastError, "global checkpoint cannot advance") || !strings.Contains(rs[1].LastError, key) {
				t.Fatalf("RETRYING without the reason: %q", rs[1].LastError)
			}
			sawRetrying = true
		}
		if lag, ok := scrape(t, reg, "logbackup_agent_global_checkpoint_lag_seconds", "task=pitr"); ok && lag > 2 {
			lagGrew = true
		}
		if !sawRetrying || !lagGrew {
			return fmt.Errorf("RETRYING reported %v, global lag grew %v", sawRetrying, lagGrew)
		}
		return nil
	}, "the stuck global checkpoint to be reported")
	le := waitLastError(t, ctx, h.m)
	if le.ErrorCode != "KV:LogBackup:MalformedMetadata" || !strings.Contains(le.ErrorMessage, key) || !strings.Contains(le.ErrorMessage, "retry budget") {
		t.Fatalf("LastError %s: %s", le.ErrorCode, le.ErrorMessage)
	}
}

// TestSilentStallReported: a global checkpoint that stands while every
// flush and advance succeeds (here: store 2 has no agent, and never had
// one, so status had no "NO AGENT" to show either) used to leave the task
// NORMAL with every store HEALTHY. Past flush interval + 30 s the
// coordinator's store reports RETRYING, naming the store that holds it
// back; once that store's agent runs, the checkpoint moves and the report
// clears.
func TestSilentStallReported(t *testing.T) {
	t.Parallel() // mostly waiting: run beside the other long tests (README's test command stays under 10 minutes)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	h := newHarness(t, ctx, simcluster.Config{Stores: 2}, "local://"+filepath.Join(t.TempDir(), "b"), 0)
	ids := h.c.StoreIDs()
	// A region led by store 2, whose agent is not running.
	region, err := h.c.Split([]byte("t5"))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.c.TransferLeader(region, ids[1]); err != nil {
		t.Fatal(err)
	}
	_, stop := h.agent(ids[0], nil, nil)
	defer stop()
	st, err := h.m.GetTask(ctx, "pitr")
	if err != nil {
		t.Fatal(err)
	}
	eventually.NoError(t, 90*time.Second, func(ctx context.Context) error {
		if _, err := h.c.Put(ctx, []byte("t1"), []byte("v")); err != nil {
			t.Fatal(err)
		}
		rs, err := h.m.Progresses(ctx, "pitr", st.Incarnation)
		if err != nil {
			return err
		}
		r := rs[ids[0]]
		if r == nil || r.State != meta.StateRetrying {
			return fmt.Errorf("progresses %v", rs)
		}
		if !strings.Contains(r.LastError, "has not moved") || !strings.Contains(r.LastError, fmt.Sprintf("stores with no checkpoint for this task (is their agent running?): %d", ids[1])) {
			t.Fatalf("RETRYING without the reason: %q", r.LastError)
		}
		return nil
	}, "the standing global checkpoint to be reported")
	_, stop2 := h.agent(ids[1], nil, nil)
	defer stop2()
	end, _ := h.c.TSO(ctx)
	h.waitGlobal(end)
	eventually.True(t, 30*time.Second, func() bool {
		rs, err := h.m.Progresses(ctx, "pitr", st.Incarnation)
		r := rs[ids[0]]
		return err == nil && r != nil && r.State != meta.StateRetrying
	}, "the stall report to clear once the checkpoint moved")
}
