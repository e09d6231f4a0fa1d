package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"

	"logbackup/meta"
	"logbackup/tests/eventually"
	"logbackup/tests/simcluster"
)

// TestCheckRequirements: `start --check-requirements` (on by default, as in
// BR) warns, naming them, about the TiKV stores that have no registered
// agent, and refuses a cluster whose PD has heard from no TiKV store for
// 20 s (PD keeps a silent store Up);
// --check-requirements=false skips both checks.
func TestCheckRequirements(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := startPDCluster(t, ctx, simcluster.Config{Stores: 2})
	r := brRun{t: t, ep: c.PDAddr()}
	m := meta.NewClient(pdEtcd{c}.Client(t))
	s1, s2 := c.StoreIDs()[0], c.StoreIDs()[1]
	start := func(extra ...string) string {
		t.Helper()
		out := r.ok(append([]string{"log", "start", "--task-name", "pitr", "-s", "local://" + filepath.Join(t.TempDir(), "b")}, extra...)...)
		r.ok("log", "stop", "--task-name", "pitr")
		return out
	}
	want := fmt.Sprintf("warning: no log backup agent is registered for store %d (%s), %d (%s)", s1, c.StoreAddr(s1), s2, c.StoreAddr(s2))
	if out := start(); !strings.Contains(out, want) {
		t.Fatalf("no agents: start says\n%s\nwant %q", out, want)
	}
	if out := start("--check-requirements=false"); strings.Contains(out, "warning") {
		t.Fatalf("--check-requirements=false still checks:\n%s", out)
	}

	h := &harness{t: t, ctx: ctx, c: c, etcd: pdEtcd{c}, m: m}
	_, stop := h.agent(s1, nil, nil)
	defer stop()
	eventually.True(t, 30*time.Second, func() bool {
		agents, err := m.Agents(ctx)
		return err == nil && agents[s1] != nil
	}, "the agent of store 1 to register")
	out := start()
	if want := fmt.Sprintf("warning: no log backup agent is registered for store %d (%s):", s2, c.StoreAddr(s2)); !strings.Contains(out, want) {
		t.Fatalf("one agent: start says\n%s\nwant %q", out, want)
	}

	// PD keeps a stopped store Up: only its heartbeat, silent for more than
	// 20 s on PD's clock, tells.
	c.StoreDown(s1)
	c.StoreDown(s2)
	if st, err := c.PD().GetStore(ctx, s1); err != nil || st.GetState() != metapb.StoreState_Up {
		t.Fatalf("PD reports a stopped store as %v (%v), want Up as a real PD does", st.GetState(), err)
	}
	r.ok("log", "start", "--task-name", "pitr", "-s", "local://"+filepath.Join(t.TempDir(), "recent"))
	r.ok("log", "stop", "--task-name", "pitr")
	c.AdvancePDClock(21 * time.Second)
	res := r.fails("PD has heard from no TiKV store within 20s", "log", "start", "--task-name", "pitr", "-s", "local://"+filepath.Join(t.TempDir(), "down"))
	if !strings.Contains(res.stderr, "--check-requirements=false") {
		t.Fatalf("no hint: %s", res.stderr)
	}
	if tasks, _, err := m.ListTasks(ctx); err != nil || len(tasks) != 0 {
		t.Fatalf("the refused start left tasks %v (%v)", tasks, err)
	}
	start("--check-requirements=false")
}
