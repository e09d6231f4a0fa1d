package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tikv/client-go/v2/txnkv/transaction"
	pd "github.com/tikv/pd/client"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/playground"
	"logbackup/streamagent"
	"logbackup/tests/eventually"
	"logbackup/tests/realpd"
	"logbackup/tests/simcluster"
)

// realPDHarness is the harness with a real pd-server (tests/realpd) in
// place of the simulated PD: the simulated stores join it as TiKV stores
// do (simcluster Config.ExternalPD), task metadata lives in its etcd, and
// the agents and br talk to it over the network. task is not started.
type realPDHarness struct {
	*harness
	pd  *realpd.Server
	pdc pd.Client // the agents' and br's PD client
	br  brRun     // the br command line, -u the real PD
}

func startRealPDHarness(t *testing.T, ctx context.Context, sim simcluster.Config, url string) *realPDHarness {
	t.Helper()
	s := realpd.Start(t)
	sim.ExternalPD = s.Addr()
	c, err := simcluster.Start(ctx, sim)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	pdc, err := meta.DialPD(ctx, meta.DialConfig{Endpoints: []string{s.Addr()}, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pdc.Close)
	e := pdEtcd{c} // PDAddr is the real PD's, where its etcd serves too
	h := &harness{t: t, ctx: ctx, etcd: e, c: c, url: url}
	h.m = meta.NewClient(e.Client(t))
	return &realPDHarness{harness: h, pd: s, pdc: pdc, br: brRun{t: t, ep: s.Addr()}}
}

// env is the br commands' environment: the real PD's etcd and PD.
func (h *realPDHarness) env() *br.Env { return br.NewEnv(h.m).WithPD(h.pdc) }

// agent runs an agent for store against the real PD.
func (h *realPDHarness) agent(store uint64) func() {
	_, stop := h.harness.agent(store, nil, func(cfg *streamagent.Config) { cfg.PD = h.pdc })
	return stop
}

// pdSafePoint is one service safepoint as PD's HTTP API lists it.
type pdSafePoint struct {
	ServiceID string `json:"service_id"`
	ExpiredAt int64  `json:"expired_at"` // unix seconds
	SafePoint uint64 `json:"safe_point"`
}

// safePointsInPD reads the service safepoints from PD's own HTTP API
// (GET /pd/api/v1/gc/safepoint), as an operator's pd-ctl does.
func safePointsInPD(t *testing.T, ctx context.Context, s *realpd.Server) map[string]pdSafePoint {
	t.Helper()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(rctx, http.MethodGet, s.URL()+"/pd/api/v1/gc/safepoint", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /pd/api/v1/gc/safepoint: %s: %s", resp.Status, body)
	}
	var list struct {
		SafePoints []pdSafePoint `json:"service_gc_safe_points"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("PD's safepoint list: %v: %s", err, body)
	}
	out := map[string]pdSafePoint{}
	for _, sp := range list.SafePoints {
		out[sp.ServiceID] = sp
	}
	return out
}

// TestRealPDAgentsBackUpThroughTopologyChanges runs an agent per store
// against a real PD while a workload writes and regions split and merge
// and leaders move (by transfer or a store going down), PD stopping
// half-way while regions change and starting again, then decodes the
// storage: every version committed between the start and the end is
// there, and br's verify finds the storage whole.
func TestRealPDAgentsBackUpThroughTopologyChanges(t *testing.T) {
	seed := time.Now().UnixNano()
	if s := os.Getenv("SIM_SEED"); s != "" {
		seed, _ = strconv.ParseInt(s, 10, 64)
	}
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	url := "local://" + filepath.Join(t.TempDir(), "backup")
	h := startRealPDHarness(t, ctx, simcluster.Config{SplitKeys: [][]byte{[]byte("t2"), []byte("t5")},
		ResolvedTsInterval: 20 * time.Millisecond, Seed: seed}, url)
	c := h.c
	start, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := br.Start(ctx, h.env(), br.StartOptions{TaskName: "pitr", StartTS: fmt.Sprint(start), Storage: url}, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, s := range c.StoreIDs() {
		defer h.agent(s)()
	}

	// churn moves a leader, splits, merges or takes a store down and up,
	// at random.
	churn := func() {
		regions := c.Regions()
		reg := regions[rng.Intn(len(regions))]
		switch rng.Intn(5) {
		case 4:
			s := c.StoreIDs()[rng.Intn(len(c.StoreIDs()))]
			// A store down for a moment: its leaders move to live
			// peers, and PD hears of it from the new leaders.
			// Time is the subject: how long the store stays down is
			// the fault's size, and there is no event to wait for.
			c.StoreDown(s)
			time.Sleep(300 * time.Millisecond)
			c.StoreUp(s)
		case 0, 1:
			_ = c.TransferLeader(reg.Meta.Id, c.StoreIDs()[rng.Intn(len(c.StoreIDs()))])
		case 2:
			_, _ = c.Split([]byte(fmt.Sprintf("t%d%02d", rng.Intn(8), rng.Intn(100))))
		case 3:
			if raw, err := simcluster.DecodeKey(reg.Meta.StartKey); err == nil && len(reg.Meta.EndKey) > 0 && len(regions) > 3 {
				_ = c.Merge(raw)
			}
		}
	}
	restarted := false
	for i := 0; i < 160; i++ {
		if i == 80 {
			// PD goes away; regions change meanwhile, as TiKV goes on
			// without PD; PD comes back on the same address and data.
			h.pd.Stop()
			for j := 0; j < 3; j++ {
				churn()
			}
			if err := h.pd.Start(); err != nil {
				t.Fatal(err)
			}
			restarted = true
		}
		if i%8 == 0 {
			churn()
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
				if err := txn.Set(k, bytes.Repeat([]byte{byte('a' + rng.Intn(26))}, 16+rng.Intn(300))); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil && st != 0 {
			// A transaction that failed half-way (PD restarting: no commit
			// ts) leaves locks; resolve them as TiDB would.
			eventually.NoError(t, time.Minute, func(ctx context.Context) error { return c.ResolveTxn(ctx, st) },
				"the locks of a half-done transaction to resolve")
		}
	}
	if !restarted {
		t.Fatal("PD was never restarted")
	}
	if err := c.WaitPDSynced(ctx); err != nil {
		t.Fatal(err)
	}
	end, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h.waitGlobal(end)
	if n := assertBackedUp(t, ctx, url, c, start, end); n == 0 {
		t.Fatal("the workload committed nothing; the test proved nothing")
	}
	if le, err := h.m.LastErrors(ctx, "pitr"); err != nil || len(le) > 0 {
		t.Fatalf("last errors after a PD restart and topology changes: %v %v", le, err)
	}
}

// TestRealPDBrStreamCommands runs every `br stream` command through the
// command line against a real PD and its etcd, with an agent backing up,
// and reads the task's GC safepoints from PD's own HTTP API: BR's start
// barrier at start-ts − 1 for --gc-ttl, each store's flush safepoint, the
// pause safepoint for --gc-ttl, cut to at most 30 minutes by resume, and
// none of the task's left by stop.
func TestRealPDBrStreamCommands(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	url := "local://" + filepath.Join(t.TempDir(), "backup")
	h := startRealPDHarness(t, ctx, simcluster.Config{Stores: 2, SplitKeys: [][]byte{[]byte("t5")}}, url)
	c, r := h.c, h.br

	if out := r.ok("stream", "status"); !strings.Contains(out, "No Task Yet") {
		t.Fatalf("status before any task: %q", out)
	}
	start, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h.startTS = start
	r.ok("stream", "start", "--task-name", "pitr", "--storage", url, "--start-ts", fmt.Sprint(start), "--gc-ttl", "10m")
	var barrier string
	for id, sp := range safePointsInPD(t, ctx, h.pd) {
		if strings.HasPrefix(id, "br-") {
			barrier = id
			if sp.SafePoint != start-1 {
				t.Fatalf("BR's start safepoint %s at %d, want start-ts − 1 = %d", id, sp.SafePoint, start-1)
			}
			if ttl := time.Until(time.Unix(sp.ExpiredAt, 0)); ttl > 11*time.Minute || ttl < 8*time.Minute {
				t.Fatalf("BR's start safepoint lives %s more, want --gc-ttl 10m", ttl)
			}
		}
	}
	if barrier == "" {
		t.Fatalf("no br-<uuid> start safepoint in PD: %v", safePointsInPD(t, ctx, h.pd))
	}

	for _, s := range c.StoreIDs() {
		defer h.agent(s)()
	}
	for i := 0; i < 20; i++ {
		if _, err := c.Put(ctx, []byte(fmt.Sprintf("t%d", i%9)), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	end, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h.waitGlobal(end)
	// Each store leading regions keeps backup-stream-pitr-<store> at its
	// checkpoint − 1 (a store checkpoint, once flushed past end).
	eventually.NoError(t, 30*time.Second, func(ctx context.Context) error {
		cps, err := h.m.Checkpoints(ctx, "pitr")
		if err != nil {
			t.Fatal(err)
		}
		sps := safePointsInPD(t, ctx, h.pd)
		ok, stores := true, 0
		for _, cp := range cps {
			if cp.Kind != meta.CheckpointStore {
				continue
			}
			stores++
			sp, found := sps[meta.FlushSafePointID("pitr", cp.StoreID)]
			if !found || sp.SafePoint > cp.TS-1 || cp.TS < end {
				ok = false
			}
		}
		if !ok || stores == 0 {
			return fmt.Errorf("safepoints %v, checkpoints %v", sps, cps)
		}
		return nil
	}, "the flush safepoints in PD to follow the store checkpoints")
	// status shows the storage checkpoint, which trails the global one.
	if st := statusOf(t, r, "pitr"); st.Status != "NORMAL" || st.Checkpoint < start || st.StartTS != start || len(st.LastErrors) > 0 {
		t.Fatalf("status: %+v (start %d)", st, start)
	}
	if out := r.ok("stream", "history", "--task-name", "pitr"); !strings.Contains(out, "pitr") {
		t.Fatalf("history does not name the task: %q", out)
	}

	before, _, _ := h.m.GlobalCheckpoint(ctx, "pitr")
	r.ok("stream", "pause", "--task-name", "pitr", "--gc-ttl", "2h")
	after, _, _ := h.m.GlobalCheckpoint(ctx, "pitr")
	pause, ok := safePointsInPD(t, ctx, h.pd)["pitr_pause_safepoint"]
	if !ok || pause.SafePoint < before-1 || pause.SafePoint > after-1 {
		t.Fatalf("pause safepoint in PD %+v, want between %d and %d", pause, before-1, after-1)
	}
	if ttl := time.Until(time.Unix(pause.ExpiredAt, 0)); ttl > 2*time.Hour+time.Minute || ttl < 110*time.Minute {
		t.Fatalf("pause safepoint lives %s more, want --gc-ttl 2h", ttl)
	}
	if out := r.ok("stream", "status", "--task-name", "pitr"); !strings.Contains(out, "status: ● PAUSE") {
		t.Fatalf("status of a paused task:\n%s", out)
	}
	r.ok("stream", "resume", "--task-name", "pitr")
	if p, ok := safePointsInPD(t, ctx, h.pd)["pitr_pause_safepoint"]; ok && time.Until(time.Unix(p.ExpiredAt, 0)) > 31*time.Minute {
		t.Fatalf("resume left the pause safepoint in PD for %s", time.Until(time.Unix(p.ExpiredAt, 0)))
	}
	more, err := c.Put(ctx, []byte("t7"), []byte("after resume"))
	if err != nil {
		t.Fatal(err)
	}
	h.waitGlobal(more)

	if out := r.ok("stream", "metadata", "--storage", url); !strings.Contains(out, fmt.Sprintf("[log-min-ts=%d]", start)) || !strings.Contains(out, "[log-max-ts=") {
		t.Fatalf("metadata:\n%s", out)
	}
	r.ok("stream", "verify", "--storage", url, "--task-name", "pitr")
	r.ok("stream", "truncate", "--until", fmt.Sprint(start), "--storage", url, "--dry-run")
	r.ok("stream", "stop", "--task-name", "pitr")
	if out := r.ok("stream", "status"); !strings.Contains(out, "No Task Yet") {
		t.Fatalf("status after stop: %q", out)
	}
	// The agents drop their flush safepoints when they see the stop; BR's
	// start barrier stays until its TTL, as in BR.
	eventually.NoError(t, 30*time.Second, func(context.Context) error {
		var left []string
		for id := range safePointsInPD(t, ctx, h.pd) {
			if strings.Contains(id, "pitr") {
				left = append(left, id)
			}
		}
		if len(left) > 0 {
			return fmt.Errorf("left: %v", left)
		}
		return nil
	}, "the stop to clear the task's safepoints in PD")
	assertBackedUp(t, ctx, url, c, start, more)
}

// TestRealPDPlayground: the playground's main job against a PD the user
// runs (--pd): its stores bootstrap and join that PD, its agents are
// processes of their own against it, and the backup verifies.
func TestRealPDPlayground(t *testing.T) {
	s := realpd.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := playground.Run(ctx, playground.Options{Dir: t.TempDir(), PD: s.Addr(), Duration: 3 * time.Second, Rate: 50,
		FlushInterval: time.Second}, &out)
	if err != nil {
		t.Fatalf("playground --pd %s: %v\n%s", s.Addr(), err, out.String())
	}
	if !strings.Contains(out.String(), "verify: OK") || !strings.Contains(out.String(), s.Addr()) {
		t.Fatalf("the playground against the real PD did not verify, or named another PD:\n%s", out.String())
	}
	c, err := realpd.Dial(ctx, s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ok, err := c.IsBootstrapped(ctx); err != nil || !ok {
		t.Fatalf("the playground's stores did not bootstrap the real PD: %v %v", ok, err)
	}
	// --nemesis fails PD itself, which it cannot do to a PD the user runs.
	err = playground.Run(ctx, playground.Options{Dir: t.TempDir(), PD: s.Addr(), Nemesis: true}, &out)
	if err == nil || !strings.Contains(err.Error(), "--pd") {
		t.Fatalf("--nemesis with --pd: %v", err)
	}
}
