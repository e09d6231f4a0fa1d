package agentrun

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/streamagent"
	"logbackup/tests/eventually"
	"logbackup/tests/realpd"
)

// The agent's start and run against a real pd-server (tests/realpd) in the
// states real PD produces and the simulated one never does: tombstones,
// missing ids, a new store at a removed one's address, an unbootstrapped
// or unreachable PD, a TiKV that cannot be reached, a store removed while
// its agent runs.

// logSink collects the agent's JSON log lines for the test to wait on.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logSink) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// lines are the log records that have msg containing want.
func (l *logSink) lines(want string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(l.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		if m, _ := rec["msg"].(string); strings.Contains(m, want) {
			out = append(out, rec)
		}
	}
	return out
}

// agentRun is one run of the agent's command.
type agentRun struct {
	ended chan struct{} // closed when run returns
	err   error         // what it returned, once ended
}

// waitRunning waits (tests/eventually) for cond to hold, and fails at
// once, not at the timeout, if the agent ends meanwhile (r nil: no agent).
func waitRunning(t *testing.T, what string, d time.Duration, r *agentRun, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	if r != nil {
		go func() {
			select {
			case <-r.ended:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	err := eventually.Wait(ctx, d, func(context.Context) error {
		if cond() {
			return nil
		}
		return errors.New("not yet")
	}, "%s", what)
	if err == nil {
		return
	}
	if r != nil {
		select {
		case <-r.ended:
			t.Fatalf("the agent ended while waiting for %s: %v", what, r.err)
		default:
		}
	}
	t.Fatal(err)
}

// keepsRunning fails the test if the agent ends within d. Time itself is
// the subject here: the agents these tests guard against gave up once a
// --dial-timeout had passed, so the proof is an agent still running after
// it has, and no event marks "a dial timeout has passed" but the clock.
func keepsRunning(t *testing.T, r *agentRun, d time.Duration, why string) {
	t.Helper()
	select {
	case <-r.ended:
		t.Fatalf("the agent ended %s: %v", why, r.err)
	case <-time.After(d):
	}
}

// freeAddr is a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func agentOptions(t *testing.T, pdAddr string) options {
	return options{pd: pdAddr, statusAddr: freeAddr(t), flushInterval: time.Second,
		reconcileInterval: 200 * time.Millisecond, coordinatorInterval: 200 * time.Millisecond,
		fileSizeLimit: 1 << 20, memoryQuota: 64 << 20, tempDir: t.TempDir(), dialTimeout: 2 * time.Second}
}

// startAgent runs the agent's command in the background; stop ends it
// and returns what run returned.
func startAgent(t *testing.T, o options) (logs *logSink, r *agentRun, stop func() error) {
	logs = &logSink{}
	ctx, cancel := context.WithCancel(context.Background())
	r = &agentRun{ended: make(chan struct{})}
	go func() {
		defer close(r.ended)
		r.err = run(ctx, o, logs)
	}()
	stop = func() error {
		cancel()
		select {
		case <-r.ended:
			return r.err
		case <-time.After(60 * time.Second):
			return errors.New("the agent did not stop within 60s")
		}
	}
	t.Cleanup(func() { stop() })
	return logs, r, stop
}

func agentStatus(addr string) (streamagent.Status, error) {
	var st streamagent.Status
	hc := &http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get("http://" + addr + "/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st, err
}

// cluster is a real PD bootstrapped by one store (first) whose TiKV
// address answers nothing, leading one region over the whole key space.
type cluster struct {
	pd     *realpd.Server
	c      *realpd.Client
	first  *metapb.Store
	region *metapb.Region
}

func newIDs(ctx context.Context, t *testing.T, c *realpd.Client, n int) []uint64 {
	t.Helper()
	ids := make([]uint64, n)
	for i := range ids {
		var err error
		if ids[i], err = c.AllocID(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

func bootstrap(ctx context.Context, t *testing.T, c *realpd.Client, storeID uint64, addr string) (*metapb.Store, *metapb.Region) {
	t.Helper()
	ids := newIDs(ctx, t, c, 2)
	store := &metapb.Store{Id: storeID, Address: addr, Version: "8.5.6"}
	region := &metapb.Region{Id: ids[0], RegionEpoch: &metapb.RegionEpoch{ConfVer: 1, Version: 1},
		Peers: []*metapb.Peer{{Id: ids[1], StoreId: storeID}}}
	if err := c.Bootstrap(ctx, store, region); err != nil {
		t.Fatal(err)
	}
	if err := c.StoreHeartbeat(ctx, storeID, 1); err != nil {
		t.Fatal(err)
	}
	if err := c.RegionHeartbeat(ctx, region, region.Peers[0], 1); err != nil {
		t.Fatal(err)
	}
	return store, region
}

func startCluster(ctx context.Context, t *testing.T) *cluster {
	t.Helper()
	s := realpd.Start(t)
	c, err := realpd.Dial(ctx, s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	id := newIDs(ctx, t, c, 1)[0]
	first, region := bootstrap(ctx, t, c, id, freeAddr(t))
	return &cluster{pd: s, c: c, first: first, region: region}
}

// putStore registers a live store at addr.
func (cl *cluster) putStore(ctx context.Context, t *testing.T, addr string) *metapb.Store {
	t.Helper()
	st := &metapb.Store{Id: newIDs(ctx, t, cl.c, 1)[0], Address: addr, Version: "8.5.6"}
	if err := cl.c.PutStore(ctx, st); err != nil {
		t.Fatal(err)
	}
	if err := cl.c.StoreHeartbeat(ctx, st.Id, 0); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestRealPDStoreLookup: a tombstone or missing store id ends the agent at
// start with rc 1 and a message naming the store and its state; with
// --store-addr, a tombstone, or a physically destroyed store still being
// drained, at the address is passed over for the store that now serves it.
// (Failed before: a tombstone id panicked the process on GetStore's
// (nil, nil); a missing id started an agent that stayed IDLE saying
// nothing; --store-addr took whichever match PD listed last.)
func TestRealPDStoreLookup(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cl := startCluster(ctx, t)
	addr := freeAddr(t)
	// Three TiKVs in turn at one address, each removed (`store delete
	// --force` lets the next register at once): PD lists stores in no
	// fixed order, so a pick that does not skip tombstones gets one of
	// them most of the time.
	var olds []*metapb.Store
	for range 3 {
		st := cl.putStore(ctx, t, addr)
		deleteStore(ctx, t, cl.pd.Addr(), st.Id)
		olds = append(olds, st)
	}
	var wg sync.WaitGroup
	for _, st := range olds {
		wg.Go(func() {
			if err := cl.c.Tombstone(ctx, st.Id); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	old := olds[0]
	mainArgs := func(extra ...string) []string {
		return append([]string{"--pd", cl.pd.Addr(), "--status-addr", "127.0.0.1:0", "--memory-limit", "0",
			"--temp-dir", t.TempDir(), "--dial-timeout", "2s"}, extra...)
	}

	t.Run("tombstone id", func(t *testing.T) {
		var stderr bytes.Buffer
		if rc := Main(mainArgs("--store-id", fmt.Sprint(old.Id)), &stderr); rc != 1 {
			t.Fatalf("rc %d, want 1; stderr:\n%s", rc, stderr.String())
		}
		want := fmt.Sprintf("store %d (%s) is Tombstone in PD", old.Id, addr)
		if !strings.Contains(stderr.String(), want) || !strings.Contains(stderr.String(), fmt.Sprint(cl.first.Id)) {
			t.Fatalf("stderr %q: want %q and the live store %d named", stderr.String(), want, cl.first.Id)
		}
	})
	t.Run("missing id", func(t *testing.T) {
		var stderr bytes.Buffer
		if rc := Main(mainArgs("--store-id", "987654"), &stderr); rc != 1 {
			t.Fatalf("rc %d, want 1; stderr:\n%s", rc, stderr.String())
		}
		if want := "store 987654 does not exist in PD"; !strings.Contains(stderr.String(), want) {
			t.Fatalf("stderr %q, want %q", stderr.String(), want)
		}
	})
	t.Run("address of a tombstone only", func(t *testing.T) {
		var stderr bytes.Buffer
		if rc := Main(mainArgs("--store-addr", addr), &stderr); rc != 1 {
			t.Fatalf("rc %d, want 1; stderr:\n%s", rc, stderr.String())
		}
		if want := "no live store has the address " + addr; !strings.Contains(stderr.String(), want) {
			t.Fatalf("stderr %q, want %q", stderr.String(), want)
		}
	})

	// A TiKV re-deployed at the tombstone's address registers as a new
	// store; --store-addr must pick it.
	fresh := cl.putStore(ctx, t, addr)
	t.Run("address of a tombstone and a live store", func(t *testing.T) {
		o := agentOptions(t, cl.pd.Addr())
		o.storeAddr = addr
		logs, done, stop := startAgent(t, o)
		waitRunning(t, "the agent to start", time.Minute, done, func() bool { return len(logs.lines("stream agent started")) > 0 })
		if got := logs.lines("stream agent started")[0]["store"]; got != float64(fresh.Id) {
			t.Fatalf("--store-addr %s picked store %v; want the live store %d, not a tombstone", addr, got, fresh.Id)
		}
		if st, err := agentStatus(o.statusAddr); err != nil || st.StoreID != fresh.Id || st.State != streamagent.AgentRunning {
			t.Fatalf("/status = %+v, %v", st, err)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	})

	// `pd-ctl store delete --force` of a store still holding a region
	// leaves it Offline and physically destroyed until the region moves;
	// PD lets a new TiKV register at its address meanwhile.
	t.Run("address of a destroyed store and a live one", func(t *testing.T) {
		addr2 := freeAddr(t)
		draining := cl.putStore(ctx, t, addr2)
		peer := &metapb.Peer{Id: newIDs(ctx, t, cl.c, 1)[0], StoreId: draining.Id}
		r := &metapb.Region{Id: cl.region.Id, RegionEpoch: &metapb.RegionEpoch{ConfVer: 2, Version: 1},
			Peers: append([]*metapb.Peer{cl.region.Peers[0]}, peer)}
		if err := cl.c.RegionHeartbeat(ctx, r, r.Peers[0], 1); err != nil {
			t.Fatal(err)
		}
		deleteStore(ctx, t, cl.pd.Addr(), draining.Id)
		var replacement *metapb.Store
		var refused string // PD's last refusal, logged when it changes
		waitRunning(t, "PD to accept a new store at a destroyed store's address", 30*time.Second, nil, func() bool {
			st := &metapb.Store{Id: newIDs(ctx, t, cl.c, 1)[0], Address: addr2, Version: "8.5.6"}
			if err := cl.c.PutStore(ctx, st); err != nil {
				if err.Error() != refused {
					refused = err.Error()
					t.Logf("PD refuses a new store at %s: %v", addr2, err)
				}
				return false
			}
			replacement = st
			return true
		})
		if s, err := cl.c.GetStore(ctx, draining.Id); err != nil || s.GetState() != metapb.StoreState_Offline || !s.GetPhysicallyDestroyed() {
			t.Fatalf("the drained store is %v (err %v); the case needs it Offline and physically destroyed", s, err)
		}
		o := agentOptions(t, cl.pd.Addr())
		o.storeAddr = addr2
		logs, done, stop := startAgent(t, o)
		waitRunning(t, "the agent to start", time.Minute, done, func() bool { return len(logs.lines("stream agent started")) > 0 })
		if got := logs.lines("stream agent started")[0]["store"]; got != float64(replacement.Id) {
			t.Fatalf("--store-addr %s picked store %v; want the new store %d, not the destroyed %d", addr2, got, replacement.Id, draining.Id)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	})
}

// deleteStore is `pd-ctl store delete --force` without waiting for the
// store to be buried.
func deleteStore(ctx context.Context, t *testing.T, pdAddr string, id uint64) {
	t.Helper()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(rctx, http.MethodDelete, fmt.Sprintf("http://%s/pd/api/v1/store/%d?force=true", pdAddr, id), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("delete store %d: %s: %s", id, resp.Status, body)
	}
}

// TestRealPDWaitsForBootstrap: an agent started before any TiKV joined
// waits, says why in a WARN and in /status, and starts once PD is
// bootstrapped. (Failed before: it started at once, serving a store PD did
// not know, IDLE without a word.)
func TestRealPDWaitsForBootstrap(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s := realpd.Start(t)
	c, err := realpd.Dial(ctx, s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	id := newIDs(ctx, t, c, 1)[0]
	o := agentOptions(t, s.Addr())
	o.storeID = id
	logs, done, stop := startAgent(t, o)
	waitRunning(t, "a WARN that PD is not bootstrapped", time.Minute, done, func() bool { return len(logs.lines("not bootstrapped")) > 0 })
	if rec := logs.lines("not bootstrapped")[0]; rec["level"] != "WARN" {
		t.Fatalf("logged %v, want a WARN", rec)
	}
	st, err := agentStatus(o.statusAddr)
	if err != nil || st.State != streamagent.AgentWaiting || !strings.Contains(st.Reason, "not bootstrapped") {
		t.Fatalf("/status while waiting = %+v, %v; want WAITING saying PD is not bootstrapped", st, err)
	}
	if len(logs.lines("stream agent started")) > 0 {
		t.Fatal("the agent started before PD was bootstrapped")
	}

	bootstrap(ctx, t, c, id, freeAddr(t))
	waitRunning(t, "the agent to start after the bootstrap", time.Minute, done, func() bool { return len(logs.lines("stream agent started")) > 0 })
	waitRunning(t, "/status RUNNING", 10*time.Second, done, func() bool {
		st, err := agentStatus(o.statusAddr)
		return err == nil && st.State == streamagent.AgentRunning && st.StoreID == id
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestRealPDWaitsForPD: an agent started while PD is down waits (a WARN
// and /status say so), and starts once PD answers. (Failed before: it
// exited after --dial-timeout, "cannot reach PD".)
func TestRealPDWaitsForPD(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cl := startCluster(ctx, t)
	cl.pd.Stop()
	o := agentOptions(t, cl.pd.Addr())
	o.storeID = cl.first.Id
	logs, done, stop := startAgent(t, o)
	waitRunning(t, "a WARN that PD does not answer", time.Minute, done, func() bool { return len(logs.lines("does not answer")) > 0 })
	st, err := agentStatus(o.statusAddr)
	if err != nil || st.State != streamagent.AgentWaiting || !strings.Contains(st.Reason, cl.pd.Addr()) {
		t.Fatalf("/status while PD is down = %+v, %v; want WAITING naming PD's address", st, err)
	}
	keepsRunning(t, done, 2*o.dialTimeout, "while PD was down")
	if err := cl.pd.Start(); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, "the agent to start once PD answers", time.Minute, done, func() bool { return len(logs.lines("stream agent started")) > 0 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// startTask starts a task against the real PD, as `br stream start`.
func startTask(ctx context.Context, t *testing.T, pdAddr string) (*br.Env, *meta.Client, string) {
	t.Helper()
	pdc, err := meta.DialPD(ctx, meta.DialConfig{Endpoints: []string{pdAddr}, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pdc.Close)
	cli, err := meta.Dial(ctx, meta.DialConfig{Endpoints: []string{pdAddr}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	m := meta.NewClient(cli)
	dir := filepath.Join(t.TempDir(), "backup")
	env := br.NewEnv(m).WithPD(pdc)
	if err := br.Start(ctx, env, br.StartOptions{TaskName: "pitr", Storage: "local://" + dir}, io.Discard); err != nil {
		t.Fatal(err)
	}
	return env, m, dir
}

// TestRealPDUnreachableTiKV: a store whose TiKV cannot be reached is not
// silent: the failures to open its stream are retried and counted, the
// store's report says RETRYING with the address and the error, and the
// retry budget ends in a LastError; no meta file is written meanwhile.
// (Failed before: INITIALIZING, retries 0, no LastError, an empty meta file
// every flush.)
func TestRealPDUnreachableTiKV(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cl := startCluster(ctx, t)
	env, m, dir := startTask(ctx, t, cl.pd.Addr())
	task, err := m.GetTask(ctx, "pitr")
	if err != nil {
		t.Fatal(err)
	}
	o := agentOptions(t, cl.pd.Addr())
	o.storeID = cl.first.Id
	o.retryBudget = streamagent.RetryBudget{Attempts: 4, Duration: time.Minute}
	logs, done, stop := startAgent(t, o)

	var report *meta.Progress
	waitRunning(t, "a RETRYING report naming the address", time.Minute, done, func() bool {
		ps, err := m.Progresses(ctx, "pitr", task.Incarnation)
		report = ps[cl.first.Id]
		return err == nil && report != nil && report.State == meta.StateRetrying && strings.Contains(report.LastError, cl.first.Address)
	})
	if report.Attempts < 1 {
		t.Fatalf("report %+v: no attempts counted", report)
	}
	st, err := agentStatus(o.statusAddr)
	if err != nil || st.Retries < 1 || len(st.Tasks) != 1 || st.Tasks[0].State != meta.StateRetrying || !strings.Contains(st.Tasks[0].LastError, cl.first.Address) {
		t.Fatalf("/status = %+v, %v; want retries counted and the task RETRYING with the address", st, err)
	}
	if metrics := get(t, "http://"+o.statusAddr+"/metrics"); !strings.Contains(metrics, "logbackup_agent_errors_total{code=") {
		t.Fatal("no error counted in logbackup_agent_errors_total")
	}
	var out bytes.Buffer
	if err := br.Status(ctx, env, br.StatusOptions{TaskName: "pitr"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "RETRYING") || !strings.Contains(out.String(), cl.first.Address) {
		t.Fatalf("br stream status does not show the store RETRYING with its address:\n%s", out.String())
	}
	if w := logs.lines("cannot reach this agent's TiKV"); len(w) == 0 || w[0]["level"] != "WARN" || w[0]["address"] != cl.first.Address {
		t.Fatalf("WARN lines %v; want one naming %s", w, cl.first.Address)
	}

	var lastErr string
	waitRunning(t, "a LastError once the retry budget is spent", 2*time.Minute, done, func() bool {
		errs, err := m.LastErrors(ctx, "pitr")
		if e := errs[cl.first.Id]; err == nil && e != nil {
			lastErr = e.ErrorMessage
			return true
		}
		return false
	})
	if !strings.Contains(lastErr, "retry budget exhausted") || !strings.Contains(lastErr, cl.first.Address) {
		t.Fatalf("LastError %q: want the spent budget and the address", lastErr)
	}
	// The WARN is rate-limited: 4 failures in well under 30 s, one line.
	if w := logs.lines("cannot reach this agent's TiKV"); len(w) != 1 {
		t.Fatalf("%d WARN lines for one unreachable TiKV within 30 s, want 1", len(w))
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	var metas []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".meta") {
			metas = append(metas, p)
		}
		return nil
	})
	if len(metas) > 0 {
		t.Fatalf("meta files written while nothing was observed: %v", metas)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestRealPDStoreRemovedWhileRunning: a store tombstoned under its running
// agent stops the agent's work with a clear log line and an error naming
// the store and its state, never a panic. (Failed before: the agent went on
// serving a store that no longer exists.)
func TestRealPDStoreRemovedWhileRunning(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cl := startCluster(ctx, t)
	second := cl.putStore(ctx, t, freeAddr(t))
	_, _, _ = startTask(ctx, t, cl.pd.Addr())
	o := agentOptions(t, cl.pd.Addr())
	o.storeID = second.Id
	logs, done, _ := startAgent(t, o)
	waitRunning(t, "the agent to start", time.Minute, done, func() bool { return len(logs.lines("stream agent started")) > 0 })
	waitRunning(t, "the task to run", time.Minute, done, func() bool {
		st, err := agentStatus(o.statusAddr)
		return err == nil && len(st.Tasks) == 1
	})
	if err := cl.c.Tombstone(ctx, second.Id); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done.ended:
	case <-time.After(time.Minute):
		t.Fatal("the agent of a tombstoned store is still running a minute later")
	}
	err := done.err
	var gone *streamagent.StoreGoneError
	if !errors.As(err, &gone) || gone.ID != second.Id || gone.State != "Tombstone" {
		t.Fatalf("run returned %v; want a StoreGoneError for store %d, Tombstone", err, second.Id)
	}
	if rec := logs.lines("removed from the cluster"); len(rec) != 1 || rec[0]["level"] != "ERROR" {
		t.Fatalf("log lines %v; want one ERROR saying the store was removed", rec)
	}
}

// forward accepts on addr and pipes each connection to target, until the
// test ends: PD's etcd appearing at an address the agent was given.
func forward(t *testing.T, addr, target string) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err != nil {
				in.Close()
				continue
			}
			go func() { io.Copy(out, in); out.Close() }()
			go func() { io.Copy(in, out); in.Close() }()
		}
	}()
}

// TestRealPDWaitsForEtcd: with PD up but its etcd not reachable at the
// --etcd address, the agent waits and says so, and starts once etcd
// answers there. (Failed before: it exited after --dial-timeout.)
func TestRealPDWaitsForEtcd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cl := startCluster(ctx, t)
	o := agentOptions(t, cl.pd.Addr())
	o.storeID = cl.first.Id
	o.etcd = freeAddr(t)
	logs, done, stop := startAgent(t, o)
	waitRunning(t, "a WARN that etcd does not answer", time.Minute, done, func() bool { return len(logs.lines("etcd at")) > 0 })
	st, err := agentStatus(o.statusAddr)
	if err != nil || st.State != streamagent.AgentWaiting || !strings.Contains(st.Reason, "etcd at ["+o.etcd+"] does not answer") {
		t.Fatalf("/status while etcd is away = %+v, %v; want WAITING naming etcd's address", st, err)
	}
	keepsRunning(t, done, 2*o.dialTimeout, "while etcd was away")
	forward(t, o.etcd, cl.pd.Addr())
	waitRunning(t, "the agent to start once etcd answers", time.Minute, done, func() bool { return len(logs.lines("stream agent started")) > 0 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
