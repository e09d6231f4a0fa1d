package e2e

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tikv/client-go/v2/txnkv/transaction"

	"logbackup/br/tidbschema"
	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent/logfile"
	"logbackup/tests/certtest"
	"logbackup/tests/simcluster"
)

// demoCluster is a three-store cluster serving PD, etcd and TiKV's KV API
// on the network, with the demo schema and a region per physical table.
func demoCluster(t *testing.T, ctx context.Context) (*simcluster.Cluster, *simcluster.DemoSchema) {
	t.Helper()
	c := startPDCluster(t, ctx, simcluster.Config{Stores: 3})
	d, err := c.CreateDemoSchema(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range d.SplitKeys() {
		if _, err := c.Split(k); err != nil {
			t.Fatal(err)
		}
	}
	return c, d
}

// demoWorkload commits n transactions of random demo rows and returns the
// rows it wrote per table.
func demoWorkload(t *testing.T, ctx context.Context, c *simcluster.Cluster, d *simcluster.DemoSchema, rng *rand.Rand, n int) {
	t.Helper()
	for i := range n {
		if i%20 == 19 { // the topology moves under the agents now and then
			regions := c.Regions()
			r := regions[rng.Intn(len(regions))]
			if err := c.TransferLeader(r.Meta.Id, c.StoreIDs()[rng.Intn(len(c.StoreIDs()))]); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.Txn(ctx, func(txn *transaction.KVTxn) error { return d.SetRandomRows(txn, rng, 1+rng.Intn(4)) }); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTableFilterEndToEnd runs `br log start` with table filters through the
// command line against the cluster's network face (PD, etcd, and TiKV's KV
// API for the schema), runs an agent per store under a workload over every
// demo table, and reads the storage back: every version of the included
// tables' rows and indexes and of TiDB's meta keys is there, and nothing of
// the excluded tables — nor of a table the filter matches but that was
// created after the start, as in BR.
func TestTableFilterEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c, d := demoCluster(t, ctx)
	r := brRun{t: t, ep: c.PDAddr()}
	dir := filepath.Join(t.TempDir(), "backup")
	url := "local://" + dir

	// Rules as BR takes them: repeatable, the last match decides, names
	// case-insensitive by default.
	rules := []string{"shop.*", "!shop.audit_log", "analytics.EVENTS"}
	args := []string{"log", "start", "--task-name=pitr", "-s", url}
	for _, f := range rules {
		args = append(args, "-f", f)
	}
	out := r.ok(args...)
	if !strings.Contains(out, "3 tables at the start ts: shop.customers, shop.orders, analytics.events\n") {
		t.Fatalf("start output does not list the three matched tables:\n%s", out)
	}
	m := meta.NewClient(pdEtcd{c}.Client(t))
	task, err := m.GetTask(ctx, "pitr")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(task.Info.TableFilter, rules) {
		t.Fatalf("task info keeps table filter %q, want %q", task.Info.TableFilter, rules)
	}
	ranges, err := m.Ranges(ctx, "pitr")
	if err != nil {
		t.Fatal(err)
	}
	if len(ranges) < 2 || !bytes.Equal(ranges[0].StartKey, []byte("m")) || !bytes.Equal(ranges[0].EndKey, []byte("n")) {
		t.Fatalf("ranges %q: want TiDB's meta range first", ranges)
	}
	for _, rg := range ranges[1:] {
		if !bytes.HasPrefix(rg.StartKey, []byte("t")) {
			t.Fatalf("range %q is not a table range", rg)
		}
	}

	h := &harness{t: t, ctx: ctx, c: c, etcd: pdEtcd{c}, m: m, startTS: task.Info.StartTs}
	for _, s := range c.StoreIDs() {
		_, stop := h.agent(s, nil, nil)
		defer stop()
	}
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	demoWorkload(t, ctx, c, d, rng, 60)
	// A table the filter matches, created after the start: its DDL is in
	// the log (meta range), its rows are not (BR resolves the filter once).
	shop := d.Databases[0]
	late, err := c.CreateTable(ctx, shop, simcluster.TableSpec{Name: "late_orders"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteRows(ctx, late, late.ID, 1, 2, 3); err != nil {
		t.Fatal(err)
	}
	demoWorkload(t, ctx, c, d, rng, 60)
	end, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	global := h.waitGlobal(end)

	have := map[string]bool{}
	st, err := storage.OpenURL(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := logfile.Walk(ctx, st, func(dc logfile.Decoded) error {
		have[fmt.Sprintf("%x@%d", dc.Key, dc.CommitTS)] = true
		if tb, ok := d.TableOfKey(dc.Key); ok && !included(tb.Name()) {
			return fmt.Errorf("storage holds %q of excluded table %s", dc.Key, tb.Name())
		}
		if bytes.HasPrefix(dc.Key, tidbschema.TablePrefix(late.ID)) {
			return fmt.Errorf("storage holds %q of %s, created after the start", dc.Key, late.Name)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, v := range c.Committed(task.Info.StartTs, global) {
		what := "other"
		switch tb, ok := d.TableOfKey(v.Key); {
		case ok:
			what = tb.Name()
		case bytes.HasPrefix(v.Key, []byte("m")):
			what = "meta"
		case bytes.HasPrefix(v.Key, tidbschema.TablePrefix(late.ID)):
			what = "late"
		}
		counts[what]++
		if (what == "meta" || included(what)) && !have[fmt.Sprintf("%x@%d", v.Key, v.CommitTS)] {
			t.Fatalf("%s: %q@%d is not in storage", what, v.Key, v.CommitTS)
		}
	}
	for _, what := range []string{"meta", "shop.customers", "shop.orders", "analytics.events", "shop.audit_log", "analytics.daily_stats", "late"} {
		if counts[what] == 0 {
			t.Fatalf("the workload wrote nothing to %s (%v): the test proves nothing about it", what, counts)
		}
	}
	t.Logf("versions committed up to the checkpoint: %v", counts)
}

func included(table string) bool {
	switch table {
	case "shop.customers", "shop.orders", "analytics.events":
		return true
	}
	return false
}

// TestTableFilterRefusals: a filter that does not parse, and one that
// selects no table (names differ, or only differ in case with
// --case-sensitive), are refused with a clear error; nothing is written to
// etcd or to the storage. A filter for a database that exists only after
// the start ts resolves against the schema at the start ts, and selects
// nothing.
func TestTableFilterRefusals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, _ := demoCluster(t, ctx)
	r := brRun{t: t, ep: c.PDAddr()}
	cli := pdEtcd{c}.Client(t)
	before, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateDatabase(ctx, "later"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, want string
		args       []string
	}{
		{"syntax", "invalid --filter", []string{"-f", "shop.t\\x"}},
		{"no such table", "selects no table", []string{"-f", "nosuch.*", "-f", "shop.nosuch"}},
		{"all excluded", "selects no table", []string{"-f", "shop.*", "-f", "!shop.*"}},
		{"case-sensitive", "selects no table", []string{"-f", "SHOP.*", "--case-sensitive"}},
		{"created after the start ts", "selects no table", []string{"-f", "later.*", "--start-ts", fmt.Sprint(before)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "backup")
			etcdBefore := snapshot(t, cli)
			r := brRun{t: t, ep: r.ep}
			res := r.fails(tc.want, append([]string{"log", "start", "--task-name", "pitr", "-s", "local://" + dir}, tc.args...)...)
			if !strings.Contains(res.stderr, "Hint:") {
				t.Fatalf("no hint: %s", res.stderr)
			}
			sameSnapshot(t, tc.name, etcdBefore, snapshot(t, cli))
			// Opening local storage makes its directory; nothing is written.
			var files []string
			_ = filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
				if err == nil && !e.IsDir() {
					files = append(files, p)
				}
				return nil
			})
			if len(files) > 0 {
				t.Fatalf("the refused start wrote to the storage: %v", files)
			}
		})
	}
	// The same names without --case-sensitive match.
	r.ok("log", "start", "--task-name", "pitr", "-s", "local://"+filepath.Join(t.TempDir(), "ok"), "-f", "SHOP.*")
}

// TestTableFilterOverTLS: with PD, etcd and the stores serving mutual TLS,
// start reads the schema through the stores' KV API with --ca/--cert/--key
// (client-go's connections to the stores use the same files), and the
// task observes the matched tables only.
func TestTableFilterOverTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	certs := certtest.New(t)
	c := startPDCluster(t, ctx, simcluster.Config{Stores: 2, TLS: &simcluster.TLSFiles{CA: certs.CA, Cert: certs.ServerCert, Key: certs.ServerKey}})
	d, err := c.CreateDemoSchema(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := brRun{t: t, ep: c.PDAddr()}
	tlsFlags := []string{"--ca", certs.CA, "--cert", certs.ClientCert, "--key", certs.ClientKey}
	out := r.ok(append([]string{"log", "start", "--task-name", "pitr", "-s", "local://" + filepath.Join(t.TempDir(), "b"), "-f", "analytics.*"}, tlsFlags...)...)
	if !strings.Contains(out, "2 tables at the start ts: analytics.events, analytics.daily_stats") {
		t.Fatalf("start over TLS:\n%s", out)
	}
	cli, err := meta.Dial(ctx, meta.DialConfig{Endpoints: []string{c.PDAddr()}, CAFile: certs.CA, CertFile: certs.ClientCert, KeyFile: certs.ClientKey})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ranges, err := meta.NewClient(cli).Ranges(ctx, "pitr")
	if err != nil {
		t.Fatal(err)
	}
	events, _ := d.Table("analytics.events")
	stats, _ := d.Table("analytics.daily_stats")
	want := []meta.Range{{StartKey: []byte("m"), EndKey: []byte("n")}}
	for _, id := range []int64{events.ID, stats.ID} {
		want = append(want, meta.Range{StartKey: tidbschema.TablePrefix(id), EndKey: tidbschema.PrefixNext(tidbschema.TablePrefix(id))})
	}
	if len(ranges) != len(want) {
		t.Fatalf("ranges %q, want %q", ranges, want)
	}
	for i := range want {
		if !bytes.Equal(ranges[i].StartKey, want[i].StartKey) || !bytes.Equal(ranges[i].EndKey, want[i].EndKey) {
			t.Fatalf("ranges %q, want %q", ranges, want)
		}
	}
}
