package tidbschema_test

import (
	"context"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pingcap/log"
	"github.com/tikv/client-go/v2/util/codec"
	"go.uber.org/zap/zapcore"

	"logbackup/br/tidbschema"
	"logbackup/tests/simcluster"
)

func TestMain(m *testing.M) {
	// client-go logs every store resolution at INFO.
	log.SetLevel(zapcore.ErrorLevel)
	os.Exit(m.Run())
}

func startCluster(t *testing.T) *simcluster.Cluster {
	t.Helper()
	c, err := simcluster.Start(context.Background(), simcluster.Config{SplitKeys: [][]byte{[]byte("m"), []byte("t")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("simulator seed %d", c.Seed())
	t.Cleanup(c.Close)
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func ts(t *testing.T, c *simcluster.Cluster) uint64 {
	t.Helper()
	v, err := c.TSO(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func createDB(t *testing.T, c *simcluster.Cluster, name string) simcluster.Database {
	t.Helper()
	db, err := c.CreateDatabase(testCtx(t), name)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func createTable(t *testing.T, c *simcluster.Cluster, db simcluster.Database, spec simcluster.TableSpec) simcluster.Table {
	t.Helper()
	tb, err := c.CreateTable(testCtx(t), db, spec)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func put(t *testing.T, c *simcluster.Cluster, key, value []byte) {
	t.Helper()
	if _, err := c.Put(testCtx(t), key, value); err != nil {
		t.Fatal(err)
	}
}

func noErr[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// TestReadSchema writes a schema the way TiDB's DDL does and reads it back
// through client-go snapshots.
func TestReadSchema(t *testing.T) {
	ctx := testCtx(t)
	c := startCluster(t)
	shop := createDB(t, c, "Shop")
	empty := createDB(t, c, "empty")
	orders := createTable(t, c, shop, simcluster.TableSpec{Name: "Orders", Indexes: []string{"by_id"}})
	items := createTable(t, c, shop, simcluster.TableSpec{Name: "items", Partitions: []string{"p0", "p1", "p2"}})

	r := tidbschema.NewReader(tidbschema.NewKVSource(c.KV()), ts(t, c))
	dbs := noErr[[]tidbschema.Database](t)(r.Databases(ctx))
	wantDBs := []tidbschema.Database{{ID: shop.ID, Name: "Shop"}, {ID: empty.ID, Name: "empty"}}
	if !reflect.DeepEqual(dbs, wantDBs) {
		t.Fatalf("databases: got %+v, want %+v", dbs, wantDBs)
	}
	tables := noErr[[]tidbschema.Table](t)(r.Tables(ctx, shop.ID))
	var parts []tidbschema.Partition
	for _, p := range items.Partitions {
		parts = append(parts, tidbschema.Partition{ID: p.ID, Name: p.Name})
	}
	wantTables := []tidbschema.Table{
		{ID: orders.ID, DBID: shop.ID, Name: "Orders"},
		{ID: items.ID, DBID: shop.ID, Name: "items", Partitioned: true, Partitions: parts},
	}
	if !reflect.DeepEqual(tables, wantTables) {
		t.Fatalf("tables: got %+v, want %+v", tables, wantTables)
	}
	if got := tables[1].PhysicalIDs(); !reflect.DeepEqual(got, items.PhysicalIDs()) {
		t.Errorf("physical ids of a partitioned table: got %v, want %v", got, items.PhysicalIDs())
	}
	if got := noErr[[]tidbschema.Table](t)(r.Tables(ctx, empty.ID)); len(got) != 0 {
		t.Errorf("empty database has tables %+v", got)
	}

	s := noErr[*tidbschema.Schema](t)(r.Load(ctx))
	if !reflect.DeepEqual(s.Databases, wantDBs) || !reflect.DeepEqual(s.Tables[shop.ID], wantTables) || len(s.Tables[empty.ID]) != 0 {
		t.Errorf("load: got %+v", s)
	}
}

// TestReadSchemaAtTS reads the schema as of past timestamps: a dropped
// table or database is there before its DROP and gone after.
func TestReadSchemaAtTS(t *testing.T) {
	ctx := testCtx(t)
	c := startCluster(t)
	src := tidbschema.NewKVSource(c.KV())
	before := ts(t, c)
	db := createDB(t, c, "d")
	a := createTable(t, c, db, simcluster.TableSpec{Name: "a"})
	b := createTable(t, c, db, simcluster.TableSpec{Name: "b"})
	both := ts(t, c)
	if err := c.DropTable(ctx, a); err != nil {
		t.Fatal(err)
	}
	onlyB := ts(t, c)
	if err := c.DropDatabase(ctx, db); err != nil {
		t.Fatal(err)
	}
	gone := ts(t, c)

	if got := noErr[[]tidbschema.Database](t)(tidbschema.NewReader(src, before).Databases(ctx)); len(got) != 0 {
		t.Errorf("before CREATE DATABASE: %+v", got)
	}
	names := func(at uint64) []string {
		var out []string
		for _, tb := range noErr[[]tidbschema.Table](t)(tidbschema.NewReader(src, at).Tables(ctx, db.ID)) {
			out = append(out, tb.Name)
		}
		return out
	}
	if got := names(both); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Errorf("before DROP TABLE a: %v", got)
	}
	if got := names(onlyB); !reflect.DeepEqual(got, []string{"b"}) {
		t.Errorf("after DROP TABLE a: %v (b is %d)", got, b.ID)
	}
	r := tidbschema.NewReader(src, gone)
	if got := noErr[[]tidbschema.Database](t)(r.Databases(ctx)); len(got) != 0 {
		t.Errorf("after DROP DATABASE: %+v", got)
	}
	if _, err := r.Tables(ctx, db.ID); !errors.Is(err, tidbschema.ErrDatabaseNotExist) {
		t.Errorf("tables of a dropped database: got %v, want ErrDatabaseNotExist", err)
	}
}

// TestReadSchemaIgnoresOtherMetaKeys: keys around the schema hashes that are
// not schema — string entries, a TiDB ≤ 5.1 hash meta key, a hash left
// without its "DBs" field — are not read as databases or tables.
func TestReadSchemaIgnoresOtherMetaKeys(t *testing.T) {
	ctx := testCtx(t)
	c := startCluster(t)
	db := createDB(t, c, "d")
	createTable(t, c, db, simcluster.TableSpec{Name: "t"})
	hashMeta := codec.EncodeUint(append([]byte("m"), codec.EncodeBytes(nil, []byte("DBs"))...), 'H')
	put(t, c, hashMeta, []byte("\x00\x00\x00\x00\x00\x00\x00\x01"))
	orphan := tidbschema.HashDataKey(tidbschema.DatabaseKey(999), tidbschema.TableField(1000))
	put(t, c, orphan, []byte(`{"id":1000,"name":{"O":"ghost","L":"ghost"}}`))

	r := tidbschema.NewReader(tidbschema.NewKVSource(c.KV()), ts(t, c))
	s := noErr[*tidbschema.Schema](t)(r.Load(ctx))
	if len(s.Databases) != 1 || len(s.Tables[db.ID]) != 1 || s.Tables[db.ID][0].Name != "t" {
		t.Errorf("schema: %+v", s)
	}
	if _, err := r.Tables(ctx, 999); !errors.Is(err, tidbschema.ErrDatabaseNotExist) {
		t.Errorf("a hash without its DBs field: got %v, want ErrDatabaseNotExist", err)
	}
}

// TestReadSchemaCorrupt: a value that is not TiDB's JSON is an error naming
// the field, not a database or table silently skipped.
func TestReadSchemaCorrupt(t *testing.T) {
	ctx := testCtx(t)
	c := startCluster(t)
	db := createDB(t, c, "d")
	put(t, c, tidbschema.HashDataKey(tidbschema.DatabaseKey(db.ID), tidbschema.TableField(77)), []byte("{not json"))
	r := tidbschema.NewReader(tidbschema.NewKVSource(c.KV()), ts(t, c))
	if _, err := r.Tables(ctx, db.ID); err == nil || !strings.Contains(err.Error(), "Table:77") {
		t.Errorf("corrupt TableInfo: got %v", err)
	}
	put(t, c, tidbschema.HashDataKey(tidbschema.DatabasesKey(), tidbschema.DatabaseKey(88)), []byte("[]"))
	r = tidbschema.NewReader(tidbschema.NewKVSource(c.KV()), ts(t, c))
	if _, err := r.Databases(ctx); err == nil || !strings.Contains(err.Error(), "DB:88") {
		t.Errorf("corrupt DBInfo: got %v", err)
	}
}

func TestKVSourceHonoursContext(t *testing.T) {
	c := startCluster(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := tidbschema.NewKVSource(c.KV()).Scan(ctx, ts(t, c), []byte("m"), []byte("n"), func(_, _ []byte) error { return nil })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled scan: got %v", err)
	}
	// A scan stops at the first error of its callback.
	ctx = testCtx(t)
	db := createDB(t, c, "d")
	createTable(t, c, db, simcluster.TableSpec{Name: "t"})
	stop := errors.New("stop")
	calls := 0
	err = tidbschema.NewKVSource(c.KV()).Scan(ctx, ts(t, c), []byte("m"), []byte("n"), func(_, _ []byte) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("callback error: got %v after %d calls", err, calls)
	}
}

// TestReadPartitionStates decodes what TiDB writes in the middle of
// partition DDL and for partitioning it does not enable: only enabled
// partitioning moves rows under partition ids (TiDB's GetPartitionInfo).
func TestReadPartitionStates(t *testing.T) {
	ctx := testCtx(t)
	c := startCluster(t)
	db := createDB(t, c, "d")
	dbKey := tidbschema.DatabaseKey(db.ID)
	put(t, c, tidbschema.HashDataKey(dbKey, tidbschema.TableField(100)), []byte(`{"id":100,"name":{"O":"Off","L":"off"},`+
		`"partition":{"type":1,"enable":false,"definitions":[{"id":101,"name":{"O":"p0","L":"p0"}}]},"view":null,"sequence":null}`))
	put(t, c, tidbschema.HashDataKey(dbKey, tidbschema.TableField(200)), []byte(`{"id":200,"name":{"O":"reorg","L":"reorg"},`+
		`"partition":{"type":1,"enable":true,"definitions":[{"id":201,"name":{"O":"p0","L":"p0"}}],`+
		`"adding_definitions":[{"id":203,"name":{"O":"p1","L":"p1"}}],"dropping_definitions":[{"id":202,"name":{"O":"px","L":"px"}}]}}`))
	put(t, c, tidbschema.HashDataKey(dbKey, tidbschema.TableField(300)), []byte(`{"id":300,"name":{"O":"v","L":"v"},"view":{"view_select":"SELECT 1"},"sequence":null}`))
	tables := noErr[[]tidbschema.Table](t)(tidbschema.NewReader(tidbschema.NewKVSource(c.KV()), ts(t, c)).Tables(ctx, db.ID))
	want := []tidbschema.Table{
		{ID: 100, DBID: db.ID, Name: "Off"},
		{ID: 200, DBID: db.ID, Name: "reorg", Partitioned: true,
			Partitions:         []tidbschema.Partition{{ID: 201, Name: "p0"}},
			AddingPartitions:   []tidbschema.Partition{{ID: 203, Name: "p1"}},
			DroppingPartitions: []tidbschema.Partition{{ID: 202, Name: "px"}}},
		{ID: 300, DBID: db.ID, Name: "v", IsView: true},
	}
	if !reflect.DeepEqual(tables, want) {
		t.Fatalf("got %+v, want %+v", tables, want)
	}
	if got := tables[0].PhysicalIDs(); !reflect.DeepEqual(got, []int64{100}) {
		t.Errorf("disabled partitioning: physical ids %v", got)
	}
	if got := tables[1].AllIDs(); !reflect.DeepEqual(got, []int64{200, 201, 203, 202}) {
		t.Errorf("partition reorganisation: all ids %v", got)
	}
}
