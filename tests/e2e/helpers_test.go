package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent"
	"logbackup/streamagent/logfile"
	"logbackup/tests/etcdtest"
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
	rep, err := br.Verify(ctx, st, false)
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

// harness is the common ground of the end-to-end tests: a real etcd, the
// simulated cluster and a task "pitr" to url, started at the cluster's
// current TSO (or at start when given).
type harness struct {
	t       *testing.T
	ctx     context.Context
	etcd    *etcdtest.Server
	m       *meta.Client
	c       *simcluster.Cluster
	url     string
	startTS uint64
}

func newHarness(t *testing.T, ctx context.Context, sim simcluster.Config, url string, start uint64, opts ...meta.Option) *harness {
	t.Helper()
	h := &harness{t: t, ctx: ctx, etcd: etcdtest.Start(t), url: url}
	h.m = meta.NewClient(h.etcd.Client(t), opts...)
	c, err := simcluster.Start(ctx, sim)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	h.c = c
	if start == 0 {
		if start, err = c.TSO(ctx); err != nil {
			t.Fatal(err)
		}
	}
	h.startTS = start
	if err := br.Start(ctx, br.NewEnv(h.m), br.StartOptions{TaskName: "pitr", StartTS: fmt.Sprint(start), Storage: url}, io.Discard); err != nil {
		t.Fatal(err)
	}
	return h
}

// agent runs an agent for store with quick test intervals, quiet logs and
// its own temp dir; mod adjusts the config. Stop it with the returned func.
func (h *harness) agent(store uint64, reg prometheus.Registerer, mod func(*streamagent.Config)) (*streamagent.Agent, func()) {
	h.t.Helper()
	cfg := streamagent.Config{StoreID: store, PD: h.c.PD(), Meta: h.m, ClusterID: h.c.ClusterID(),
		FlushInterval: 100 * time.Millisecond, CoordinatorInterval: 50 * time.Millisecond, ReconcileInterval: 100 * time.Millisecond,
		TempDir: h.t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
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

// waitGlobal waits for the task's global checkpoint to reach atLeast.
func (h *harness) waitGlobal(atLeast uint64) uint64 {
	h.t.Helper()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if g, ok, _ := h.m.GlobalCheckpoint(h.ctx, "pitr"); ok && g >= atLeast {
			return g
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("global checkpoint never reached %d", atLeast)
		}
	}
}
