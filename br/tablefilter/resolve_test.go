package tablefilter_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/pingcap/log"
	"go.uber.org/zap/zapcore"

	"logbackup/br/tablefilter"
	"logbackup/br/tidbschema"
	"logbackup/meta"
	"logbackup/tests/etcdtest"
	"logbackup/tests/simcluster"
)

func TestMain(m *testing.M) {
	// client-go logs every store resolution at INFO.
	log.SetLevel(zapcore.ErrorLevel)
	os.Exit(m.Run())
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// fixture is a cluster holding a small TiDB schema with rows in every
// table.
type fixture struct {
	c       *simcluster.Cluster
	src     tidbschema.Source
	ts      uint64 // after the schema and rows were written
	tables  map[string]simcluster.Table
	schemas map[string]simcluster.Database
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := testCtx(t)
	c, err := simcluster.Start(ctx, simcluster.Config{SplitKeys: [][]byte{[]byte("m"), []byte("t")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("simulator seed %d", c.Seed())
	t.Cleanup(c.Close)
	f := &fixture{c: c, src: tidbschema.NewKVSource(c.KV()), tables: map[string]simcluster.Table{}, schemas: map[string]simcluster.Database{}}
	for _, db := range []struct {
		name   string
		tables []simcluster.TableSpec
	}{
		{"App", []simcluster.TableSpec{
			{Name: "users", Indexes: []string{"by_id"}},
			{Name: "Orders", Partitions: []string{"p0", "p1"}, Indexes: []string{"by_id"}},
			{Name: "logs"},
		}},
		{"mysql", []simcluster.TableSpec{{Name: "user"}}},
		{"Other", []simcluster.TableSpec{{Name: "t"}}},
		// TiDB never stores its in-memory schemas; one written anyway is
		// skipped as BR skips it.
		{"INFORMATION_SCHEMA", []simcluster.TableSpec{{Name: "TABLES"}}},
	} {
		d, err := c.CreateDatabase(ctx, db.name)
		if err != nil {
			t.Fatal(err)
		}
		f.schemas[db.name] = d
		for _, spec := range db.tables {
			tb, err := c.CreateTable(ctx, d, spec)
			if err != nil {
				t.Fatal(err)
			}
			f.tables[db.name+"."+spec.Name] = tb
			for _, pid := range tb.PhysicalIDs() {
				if _, err := c.WriteRows(ctx, tb, pid, 1, 2); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if f.ts, err = c.TSO(ctx); err != nil {
		t.Fatal(err)
	}
	return f
}

// tableKeys are every key the fixture wrote for a table: rows and index
// entries, in every partition.
func (f *fixture) tableKeys(name string) [][]byte {
	tb := f.tables[name]
	var keys [][]byte
	for _, pid := range tb.PhysicalIDs() {
		for _, h := range []int64{1, 2} {
			keys = append(keys, tb.RowKeys(pid, h)...)
		}
	}
	return keys
}

func covered(ranges []meta.Range, key []byte) bool {
	for _, r := range ranges {
		if bytes.Compare(key, r.StartKey) >= 0 && bytes.Compare(key, r.EndKey) < 0 {
			return true
		}
	}
	return false
}

// wantRanges is the naive model of the default ranges: the meta range and,
// per run of consecutive ids, one range from the first id's prefix to the
// prefix of the id after the run.
func wantRanges(ids []int64) []meta.Range {
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	out := []meta.Range{{StartKey: []byte("m"), EndKey: []byte("n")}}
	for i := 0; i < len(ids); {
		j := i
		for j+1 < len(ids) && ids[j+1] <= ids[j]+1 {
			j++
		}
		out = append(out, meta.Range{StartKey: tidbschema.TablePrefix(ids[i]), EndKey: tidbschema.TablePrefix(ids[j] + 1)})
		i = j + 1
	}
	return out
}

// idsOf are every id a table's keys can live under: its own and its
// partitions'.
func (f *fixture) idsOf(names ...string) []int64 {
	var ids []int64
	for _, n := range names {
		tb := f.tables[n]
		ids = append(ids, tb.ID)
		for _, p := range tb.Partitions {
			ids = append(ids, p.ID)
		}
	}
	return ids
}

// TestAllTablesIsTodaysRanges: "*.*" — given, or by default — is exactly
// the ranges `br stream start` writes today (br/start.go's allTableRanges:
// m..n and t..u), without reading any schema.
func TestAllTablesIsTodaysRanges(t *testing.T) {
	want := []meta.Range{{StartKey: []byte("m"), EndKey: []byte("n")}, {StartKey: []byte("t"), EndKey: []byte("u")}}
	for _, filters := range [][]string{{"*.*"}, nil} {
		got, err := tablefilter.ResolveRanges(testCtx(t), filters, nil, 1)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%q: got %q, %v; want %q", filters, got, err, want)
		}
	}
	res, err := tablefilter.Resolve(testCtx(t), []string{"*.*"}, nil, 1, tablefilter.Options{})
	if err != nil || !res.All || len(res.Tables) != 0 {
		t.Errorf("resolve *.*: %+v, %v", res, err)
	}
}

// TestResolveFilters resolves filters against a schema written into the
// simulated cluster and checks the ranges against a naive model and against
// the keys actually written: every key of a selected table is observed, no
// key of another table is.
func TestResolveFilters(t *testing.T) {
	f := newFixture(t)
	all := []string{"App.users", "App.Orders", "App.logs", "mysql.user", "Other.t", "INFORMATION_SCHEMA.TABLES"}
	cases := []struct {
		filters []string
		want    []string
	}{
		{[]string{"App.*"}, []string{"App.users", "App.Orders", "App.logs"}},
		{[]string{"App.*", "!App.logs"}, []string{"App.users", "App.Orders"}},
		// Not the literal "*.*": the schema is read, system schemas are
		// matched, the in-memory ones are not.
		{[]string{"*.*", "!App.logs"}, []string{"App.users", "App.Orders", "mysql.user", "Other.t"}},
		{[]string{"*.*", "!mysql.*"}, []string{"App.users", "App.Orders", "App.logs", "Other.t"}},
		// Case-insensitive by default, like BR.
		{[]string{"app.ORDERS"}, []string{"App.Orders"}},
		{[]string{"`Other`.`t`", "/^app$/./^u/"}, []string{"App.users", "Other.t"}},
		{[]string{"*.[lu]*"}, []string{"App.users", "App.logs", "mysql.user"}},
	}
	for _, c := range cases {
		res, err := tablefilter.Resolve(testCtx(t), c.filters, f.src, f.ts, tablefilter.Options{})
		if err != nil {
			t.Fatalf("%q: %v", c.filters, err)
		}
		var got []string
		for _, m := range res.Tables {
			got = append(got, m.Schema+"."+m.Table.Name)
		}
		sort.Strings(got)
		want := append([]string(nil), c.want...)
		sort.Strings(want)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%q: selected %q, want %q", c.filters, got, want)
		}
		if w := wantRanges(f.idsOf(c.want...)); !reflect.DeepEqual(res.Ranges, w) {
			t.Errorf("%q: ranges %q, want %q", c.filters, res.Ranges, w)
		}
		for _, name := range all {
			selected := false
			for _, w := range c.want {
				selected = selected || w == name
			}
			for _, k := range f.tableKeys(name) {
				if covered(res.Ranges, k) != selected {
					t.Errorf("%q: key %x of %s observed=%v", c.filters, k, name, !selected)
				}
			}
		}
		ranges, err := tablefilter.ResolveRanges(testCtx(t), c.filters, f.src, f.ts)
		if err != nil || !reflect.DeepEqual(ranges, res.Ranges) {
			t.Errorf("%q: ResolveRanges gave %q, %v", c.filters, ranges, err)
		}
	}

	cs, err := tablefilter.Resolve(testCtx(t), []string{"app.ORDERS"}, f.src, f.ts, tablefilter.Options{CaseSensitive: true})
	if err != nil || len(cs.Tables) != 0 {
		t.Errorf("case-sensitive app.ORDERS: %+v, %v", cs, err)
	}
}

// TestResolveRecordsOnly: BR's own ranges — the rows of each table, of a
// partitioned table only its partitions' rows, never index entries.
func TestResolveRecordsOnly(t *testing.T) {
	f := newFixture(t)
	res, err := tablefilter.Resolve(testCtx(t), []string{"App.users", "App.Orders"}, f.src, f.ts, tablefilter.Options{RecordsOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	users, orders := f.tables["App.users"], f.tables["App.Orders"]
	rowRange := func(id int64) meta.Range {
		p := tidbschema.RecordPrefix(id)
		return meta.Range{StartKey: p, EndKey: append(tidbschema.TablePrefix(id), '_', 's')}
	}
	want := []meta.Range{{StartKey: []byte("m"), EndKey: []byte("n")}, rowRange(users.ID)}
	for _, p := range orders.Partitions {
		want = append(want, rowRange(p.ID))
	}
	sort.Slice(want, func(i, j int) bool { return bytes.Compare(want[i].StartKey, want[j].StartKey) < 0 })
	if !reflect.DeepEqual(res.Ranges, want) {
		t.Fatalf("ranges %q, want %q", res.Ranges, want)
	}
	for _, name := range []string{"App.users", "App.Orders"} {
		tb := f.tables[name]
		for _, pid := range tb.PhysicalIDs() {
			keys := tb.RowKeys(pid, 1)
			if !covered(res.Ranges, keys[0]) {
				t.Errorf("%s: row key %x not observed", name, keys[0])
			}
			for _, k := range keys[1:] {
				if covered(res.Ranges, k) {
					t.Errorf("%s: index key %x observed, BR observes rows only", name, k)
				}
			}
		}
	}
}

// TestResolveNothingMatched: BR starts a task observing only the meta
// range; ResolveRanges refuses.
func TestResolveNothingMatched(t *testing.T) {
	f := newFixture(t)
	for _, filters := range [][]string{{"nope.*"}, {"App.*", "!App.*"}, {""}, {"# only a comment"}} {
		res, err := tablefilter.Resolve(testCtx(t), filters, f.src, f.ts, tablefilter.Options{})
		want := []meta.Range{{StartKey: []byte("m"), EndKey: []byte("n")}}
		if err != nil || len(res.Tables) != 0 || !reflect.DeepEqual(res.Ranges, want) {
			t.Errorf("resolve %q: %+v, %v", filters, res, err)
		}
		_, err = tablefilter.ResolveRanges(testCtx(t), filters, f.src, f.ts)
		if !errors.Is(err, tablefilter.ErrNoTableMatched) {
			t.Errorf("ResolveRanges %q: got %v, want ErrNoTableMatched", filters, err)
		}
	}
}

// TestResolveAtStartTS: the schema is read at the start ts. A table created
// after it is not observed, even though the filter matches it (BR's
// behaviour: the ranges are fixed at start); its DDL is in the meta range.
func TestResolveAtStartTS(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	late, err := f.c.CreateTable(ctx, f.schemas["App"], simcluster.TableSpec{Name: "late"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.c.WriteRows(ctx, late, late.ID, 1); err != nil {
		t.Fatal(err)
	}
	rowKey := late.RowKeys(late.ID, 1)[0]
	atStart, err := tablefilter.ResolveRanges(ctx, []string{"App.*"}, f.src, f.ts)
	if err != nil {
		t.Fatal(err)
	}
	if covered(atStart, rowKey) {
		t.Errorf("a table created after the start ts is observed: %q", atStart)
	}
	if !covered(atStart, tidbschema.HashDataKey(tidbschema.DatabaseKey(late.DBID), tidbschema.TableField(late.ID))) {
		t.Errorf("the meta key of the new table is not observed: %q", atStart)
	}
	now, err := f.c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	later, err := tablefilter.ResolveRanges(ctx, []string{"App.*"}, f.src, now)
	if err != nil {
		t.Fatal(err)
	}
	if !covered(later, rowKey) {
		t.Errorf("resolved after its creation, the table is not observed: %q", later)
	}
}

func TestResolveErrors(t *testing.T) {
	ctx := testCtx(t)
	_, err := tablefilter.ResolveRanges(ctx, []string{"db.t", "a.b.c"}, nil, 1)
	if !errors.Is(err, tablefilter.ErrInvalidFilter) || !strings.Contains(err.Error(), `"a.b.c"`) {
		t.Errorf("bad syntax: got %v", err)
	}
	_, err = tablefilter.ResolveRanges(ctx, []string{"db.t"}, nil, 1)
	if err == nil || errors.Is(err, tablefilter.ErrNoTableMatched) {
		t.Errorf("no schema source: got %v", err)
	}
}

// TestRangesFitATask: the ranges are accepted by meta.PutTask and read back
// unchanged from etcd, where agents and TiKV read them.
func TestRangesFitATask(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	ranges, err := tablefilter.ResolveRanges(ctx, []string{"*.*", "!App.logs"}, f.src, f.ts)
	if err != nil {
		t.Fatal(err)
	}
	m := meta.NewClient(etcdtest.Start(t).Client(t))
	info := &brpb.StreamBackupTaskInfo{Name: "pitr", StartTs: f.ts, EndTs: f.ts + 1<<30, TableFilter: []string{"*.*", "!App.logs"}}
	if err := m.PutTask(ctx, info, ranges); err != nil {
		t.Fatal(err)
	}
	back, err := m.Ranges(ctx, "pitr")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, ranges) {
		t.Errorf("etcd holds %q, want %q", back, ranges)
	}
}
