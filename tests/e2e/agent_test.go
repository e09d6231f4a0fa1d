package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tikv/client-go/v2/txnkv/transaction"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent"
	"logbackup/streamagent/logfile"
	"logbackup/tests/etcdtest"
	"logbackup/tests/eventually"
	"logbackup/tests/s3test"
	"logbackup/tests/simcluster"
)

type agentProc struct {
	a      *streamagent.Agent
	cancel context.CancelFunc
	done   chan struct{}
}

func startAgent(t *testing.T, c *simcluster.Cluster, m *meta.Client, store uint64, quota int) *agentProc {
	t.Helper()
	a, err := streamagent.New(streamagent.Config{
		StoreID: store, PD: c.PD(), Meta: m, ClusterID: c.ClusterID(), MemoryQuota: quota, TempDir: t.TempDir(),
		FlushInterval: 150 * time.Millisecond, ReconcileInterval: 100 * time.Millisecond, CoordinatorInterval: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &agentProc{a: a, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(p.done); a.Run(ctx) }()
	return p
}

func (p *agentProc) stop() { retiredRetries.Add(p.a.Status().Retries); p.cancel(); <-p.done }

// retiredRetries keeps the retry counts of agents stopped during a run.
var retiredRetries atomic.Int64

// crash ends the agent without a final flush, like kill -9 between an
// upload and the next checkpoint write.
func (p *agentProc) crash() {
	retiredRetries.Add(p.a.Status().Retries)
	p.a.Testing().Crash()
	p.cancel()
	<-p.done
}

// TestAgentsBackUpEverything runs one agent per store of the simulated
// cluster against real etcd and file storage, under a randomized workload
// with leader transfers, splits, merges, a dropped stream and an agent
// restart, then decodes the storage and checks that every write committed
// at or below the published global checkpoint is there, and that the
// checkpoint never moved backwards.
func TestAgentsBackUpEverything(t *testing.T) {
	t.Parallel() // its own cluster, mostly waiting: runs beside the other long tests (see TestMain)
	local := func(t *testing.T) string { return "local://" + t.TempDir() }
	t.Run("local", func(t *testing.T) { backUpEverything(t, local, 0, nil) })
	t.Run("s3", func(t *testing.T) {
		backUpEverything(t, func(t *testing.T) string { return s3test.Start(t, "bk").URL("bk", "log") }, 0, nil)
	})
	// A 4 KiB memory quota: buffers spill to temp files all the time.
	t.Run("spill", func(t *testing.T) { backUpEverything(t, local, 4<<10, nil) })
	// Storage answers 503 to a run of uploads: flushes fail, are kept and
	// retried, and nothing is lost or published early.
	t.Run("s3-503s", func(t *testing.T) {
		var srv *s3test.Server
		backUpEverything(t, func(t *testing.T) string { srv = s3test.Start(t, "bk"); return srv.URL("bk", "log") }, 0, func() {
			srv.SetFault(s3test.Fault{Status: 503, Remaining: 60, Match: func(r *http.Request) bool { return r.Method == http.MethodPut }})
		})
		if srv.Faults() == 0 {
			t.Fatal("no upload met the injected 503s")
		}
		if retriesSeen == 0 {
			t.Fatal("the 503s were not counted as retries")
		}
	})
}

// retriesSeen is the retries the last backUpEverything run counted.
var retriesSeen int64

func backUpEverything(t *testing.T, newStorage func(t *testing.T) string, quota int, afterStart func()) {
	retiredRetries.Store(0)
	seed := time.Now().UnixNano()
	if s := os.Getenv("SIM_SEED"); s != "" {
		seed, _ = strconv.ParseInt(s, 10, 64)
	}
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	etcd := etcdtest.Start(t)
	m := meta.NewClient(etcd.Client(t))
	c, err := simcluster.Start(ctx, simcluster.Config{SplitKeys: [][]byte{[]byte("t2"), []byte("t5")}, ResolvedTsInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	startTS, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	url := newStorage(t)
	env := br.NewEnv(m).WithPD(c.PD())
	if err := br.Start(ctx, env, br.StartOptions{TaskName: "pitr", StartTS: fmt.Sprint(startTS), Storage: url}, io.Discard); err != nil {
		t.Fatal(err)
	}

	if afterStart != nil {
		afterStart()
	}
	agents := map[uint64]*agentProc{}
	for _, s := range c.StoreIDs() {
		agents[s] = startAgent(t, c, m, s, quota)
	}
	defer func() {
		for _, p := range agents {
			p.stop()
		}
	}()

	// Watch the published global checkpoint: it must never go back.
	var cpMu sync.Mutex
	var cps []uint64
	watchCtx, stopWatch := context.WithCancel(ctx)
	var watchWG sync.WaitGroup
	watchWG.Add(1)
	go func() {
		defer watchWG.Done()
		// A sampler: every 20 ms, what the checkpoint reads.
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for watchCtx.Err() == nil {
			if g, ok, err := m.GlobalCheckpoint(watchCtx, "pitr"); err == nil && ok {
				cpMu.Lock()
				cps = append(cps, g)
				cpMu.Unlock()
			}
			select {
			case <-watchCtx.Done():
			case <-tick.C:
			}
		}
	}()

	for i := 0; i < 200; i++ {
		if i == 100 { // at least one crash per run, whatever the seed
			s := c.StoreIDs()[0]
			agents[s].crash()
			agents[s] = startAgent(t, c, m, s, quota)
		}
		if i%10 == 0 {
			regions := c.Regions()
			reg := regions[rng.Intn(len(regions))]
			switch op := rng.Intn(6); op {
			case 0, 1:
				c.TransferLeader(reg.Meta.Id, c.StoreIDs()[rng.Intn(3)])
			case 2:
				c.Split([]byte(fmt.Sprintf("t%d%02d", rng.Intn(8), rng.Intn(100))))
			case 3:
				if raw, err := simcluster.DecodeKey(reg.Meta.StartKey); os.Getenv("NO_MERGE") == "" && err == nil && len(reg.Meta.EndKey) > 0 && len(regions) > 3 {
					c.Merge(raw)
				}
			case 4:
				c.DropStreams(c.StoreIDs()[rng.Intn(3)])
			case 5:
				s := c.StoreIDs()[rng.Intn(3)]
				if rng.Intn(2) == 0 {
					agents[s].crash()
				} else {
					agents[s].stop()
				}
				agents[s] = startAgent(t, c, m, s, quota)
			}
		}
		n := 1 + rng.Intn(4)
		st, err := c.Txn(ctx, func(txn *transaction.KVTxn) error {
			for j := 0; j < n; j++ {
				k := []byte(fmt.Sprintf("t%d%02d", rng.Intn(8), rng.Intn(100)))
				if rng.Intn(6) == 0 {
					if err := txn.Delete(k); err != nil {
						return err
					}
					continue
				}
				size := 16
				if rng.Intn(8) == 0 {
					size = 400 + rng.Intn(4000)
				}
				if err := txn.Set(k, bytes.Repeat([]byte{byte('a' + rng.Intn(26))}, size)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil && st != 0 {
			if err := c.ResolveTxn(ctx, st); err != nil {
				t.Fatal(err)
			}
		}
	}
	end, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var global uint64
	testEnd, _ := ctx.Deadline()
	eventually.NoError(t, time.Until(testEnd), func(ctx context.Context) error {
		g, ok, err := m.GlobalCheckpoint(ctx, "pitr")
		if err == nil && (!ok || g < end) {
			err = fmt.Errorf("global checkpoint %d", g)
		}
		global = g
		return err
	}, "seed %d: the global checkpoint to reach %d", seed, end)
	stopWatch()
	watchWG.Wait()
	retriesSeen = retiredRetries.Swap(0)
	for _, p := range agents {
		retriesSeen += p.a.Status().Retries
	}
	// Transient storage errors are retried, never reported or paused.
	if le, err := m.LastErrors(ctx, "pitr"); err != nil || len(le) > 0 {
		t.Fatalf("seed %d: last errors after transient failures: %v %v", seed, le, err)
	}
	if st, err := m.GetTask(ctx, "pitr"); err != nil || st.Pause.Paused {
		t.Fatalf("seed %d: the task was paused", seed)
	}
	if quota > 0 {
		var spills int64
		for _, p := range agents {
			spills += p.a.Status().Spills
		}
		if spills == 0 {
			t.Fatalf("seed %d: with a %d-byte quota nothing spilled; the test proved nothing", seed, quota)
		}
		t.Logf("%d spills", spills)
	}
	cpMu.Lock()
	for i := 1; i < len(cps); i++ {
		if cps[i] < cps[i-1] {
			t.Fatalf("seed %d: global checkpoint moved back from %d to %d", seed, cps[i-1], cps[i])
		}
	}
	cpMu.Unlock()

	// Decode the storage and compare with what the cluster committed.
	st, err := storage.OpenURL(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	type version struct {
		start uint64
		del   bool
		value []byte
	}
	got := map[string]version{}
	// No per-key order is asserted: TiKV's initial scan (delta scanner)
	// yields each key's versions newest first, so a rescan writes them in
	// that order, as TiKV's own log backup does. Every entry is an MVCC key
	// carrying its own commit ts, so restore does not depend on the order.
	sum, err := logfile.Walk(ctx, st, func(d logfile.Decoded) error {
		k := fmt.Sprintf("%s@%d", d.Key, d.CommitTS)
		v := version{d.StartTS, d.Op == logfile.OpDelete, d.Value}
		old, seen := got[k]
		if seen && (old.start != v.start || old.del != v.del || !bytes.Equal(old.value, v.value)) {
			t.Fatalf("seed %d: %s stored twice with different contents", seed, k)
		}
		got[k] = v
		return nil
	})
	if err != nil {
		t.Fatalf("seed %d: decode storage: %v", seed, err)
	}
	want := c.Committed(startTS, global)
	if len(want) < 150 {
		t.Fatalf("seed %d: only %d versions committed", seed, len(want))
	}
	var missing []string
	for _, w := range want {
		k := fmt.Sprintf("%s@%d", w.Key, w.CommitTS)
		g, ok := got[k]
		if !ok {
			missing = append(missing, k)
			continue
		}
		if g.start != w.StartTS || g.del != w.Delete || !bytes.Equal(g.value, w.Value) {
			t.Fatalf("seed %d: %s differs in storage", seed, k)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Fatalf("seed %d: %d of %d committed versions at or below the global checkpoint are missing, e.g. %v", seed, len(missing), len(want), missing[:min(5, len(missing))])
	}
	t.Logf("%d versions committed up to the global checkpoint, all in storage (%d changes decoded from %d meta files, %d objects); %d checkpoint readings",
		len(want), sum.Changes, sum.MetaFiles, sum.DataObjects, len(cps))
}
