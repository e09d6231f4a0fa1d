package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent"
	"logbackup/streamagent/logfile"
	"logbackup/tests/etcdtest"
	"logbackup/tests/eventually"
	"logbackup/tests/simcluster"
)

// assertBackedUp decodes the storage and requires every version the
// cluster committed in (from, to] to be there with its value.
func assertBackedUp(t *testing.T, ctx context.Context, url string, c *simcluster.Cluster, from, to uint64) int {
	t.Helper()
	st, err := storage.OpenURL(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	have := map[string][]byte{}
	if _, err := logfile.Walk(ctx, st, func(d logfile.Decoded) error {
		have[fmt.Sprintf("%s@%d", d.Key, d.CommitTS)] = d.Value
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := c.Committed(from, to)
	for _, v := range want {
		if got, ok := have[fmt.Sprintf("%s@%d", v.Key, v.CommitTS)]; !ok || !bytes.Equal(got, v.Value) {
			t.Fatalf("%s@%d (%s) is not in storage", v.Key, v.CommitTS, v.Value)
		}
	}
	// And what br stream verify proves of the agents' storage: every meta
	// file as written, each store's flush chain unbroken.
	// Its clock is PD's, as an operator's is: some tests move PD's clock
	// ahead of the wall clock, and storage that PD's time wrote is not
	// from the future.
	pdNow, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := br.VerifyWith(ctx, st, br.VerifyConfig{Now: func() time.Time { return br.PhysicalTime(pdNow) }})
	if err != nil || len(rep.Problems) > 0 {
		t.Fatalf("verify: %v %v", err, rep.Problems)
	}
	for _, s := range rep.Stores {
		if s.Linked != s.MetaFiles {
			t.Fatalf("store %d: %d of %d meta files carry the agent's lineage tags", s.StoreID, s.Linked, s.MetaFiles)
		}
	}
	return len(want)
}

// etcdEndpoint is an etcd the tests talk to: the simulated PD's own (one
// address for PD and etcd, as deployed) or a standalone one that a test
// can stop and restart.
type etcdEndpoint interface {
	Endpoint() string
	Client(t testing.TB) *clientv3.Client
}

// pdEtcd is the etcd the simulated PD serves on its own port.
type pdEtcd struct{ c *simcluster.Cluster }

func (p pdEtcd) Endpoint() string { return p.c.PDAddr() }

func (p pdEtcd) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := meta.Dial(context.Background(), meta.DialConfig{Endpoints: []string{p.c.PDAddr()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// startPDCluster starts the simulated cluster serving PD and etcd on one
// address, as deployed.
func startPDCluster(t testing.TB, ctx context.Context, sim simcluster.Config) *simcluster.Cluster {
	t.Helper()
	sim.ServePD = true
	if sim.DataDir == "" {
		sim.DataDir = t.TempDir()
	}
	c, err := simcluster.Start(ctx, sim)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// cliCluster is a one-store simulated cluster for CLI tests: `br` talks to
// it with -u, as to PD.
func cliCluster(t *testing.T) (brRun, *clientv3.Client, *simcluster.Cluster) {
	t.Helper()
	c := startPDCluster(t, context.Background(), simcluster.Config{Stores: 1})
	e := pdEtcd{c}
	return brRun{t: t, ep: e.Endpoint()}, e.Client(t), c
}

// harness is the common ground of the end-to-end tests: the simulated
// cluster serving PD and its etcd on one address (or, with standaloneEtcd,
// a separate etcd a test can stop), and a task "pitr" to url, started at
// the cluster's current TSO (or at start when given).
type harness struct {
	t       *testing.T
	ctx     context.Context
	etcd    etcdEndpoint
	own     *etcdtest.Server // set with standaloneEtcd
	m       *meta.Client
	c       *simcluster.Cluster
	url     string
	startTS uint64
}

func newHarness(t *testing.T, ctx context.Context, sim simcluster.Config, url string, start uint64, opts ...meta.Option) *harness {
	t.Helper()
	return startHarness(t, ctx, sim, url, start, false, opts...)
}

// newHarnessOwnEtcd keeps task metadata in an etcd of its own, which the
// test can stop and restart while PD stays up.
func newHarnessOwnEtcd(t *testing.T, ctx context.Context, sim simcluster.Config, url string, start uint64, opts ...meta.Option) *harness {
	t.Helper()
	return startHarness(t, ctx, sim, url, start, true, opts...)
}

func startHarness(t *testing.T, ctx context.Context, sim simcluster.Config, url string, start uint64, ownEtcd bool, opts ...meta.Option) *harness {
	t.Helper()
	h := &harness{t: t, ctx: ctx, url: url}
	h.c = startPDCluster(t, ctx, sim)
	h.etcd = pdEtcd{h.c}
	if ownEtcd {
		h.own = etcdtest.Start(t)
		h.etcd = h.own
	}
	h.m = meta.NewClient(h.etcd.Client(t), opts...)
	if start == 0 {
		var err error
		if start, err = h.c.TSO(ctx); err != nil {
			t.Fatal(err)
		}
	}
	h.startTS = start
	if err := br.Start(ctx, h.env(), br.StartOptions{TaskName: "pitr", StartTS: fmt.Sprint(start), Storage: url}, io.Discard); err != nil {
		t.Fatal(err)
	}
	return h
}

// env is the br commands' environment: the harness's etcd and PD.
func (h *harness) env() *br.Env { return br.NewEnv(h.m).WithPD(h.c.PD()) }

// brRun runs the br command line against the harness's PD and etcd.
func (h *harness) brRun() brRun { return brRun{t: h.t, ep: h.etcd.Endpoint()} }

// agent runs an agent for store with quick test intervals, quiet logs and
// its own temp dir; mod adjusts the config. Stop it with the returned func.
func (h *harness) agent(store uint64, reg prometheus.Registerer, mod func(*streamagent.Config)) (*streamagent.Agent, func()) {
	h.t.Helper()
	cfg := streamagent.Config{StoreID: store, PD: h.c.PD(), Meta: h.m, ClusterID: h.c.ClusterID(),
		FlushInterval: 100 * time.Millisecond, CoordinatorInterval: 50 * time.Millisecond, ReconcileInterval: 100 * time.Millisecond,
		TempDir: h.t.TempDir(), Logger: agentLogger(h.t, store)}
	if mod != nil {
		mod(&cfg)
	}
	a, err := streamagent.New(cfg, reg)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(h.ctx)
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	return a, func() { cancel(); <-done }
}

// agentLogger is quiet, unless LOGBACKUP_TEST_AGENT_LOGS is set: then the
// agents' logs go to the test's output (shown for a failing test, or with
// -v), which is how a failure's cause is found after the fact.
func agentLogger(t *testing.T, store uint64) *slog.Logger {
	if os.Getenv("LOGBACKUP_TEST_AGENT_LOGS") == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(t.Output(), nil)).With("store", store)
}

// waitGlobal waits for the task's global checkpoint to reach atLeast.
func (h *harness) waitGlobal(atLeast uint64) uint64 {
	h.t.Helper()
	var g uint64
	eventually.True(h.t, time.Minute, func() bool {
		var ok bool
		g, ok, _ = h.m.GlobalCheckpoint(h.ctx, "pitr")
		return ok && g >= atLeast
	}, "the global checkpoint to reach %d", atLeast)
	return g
}
