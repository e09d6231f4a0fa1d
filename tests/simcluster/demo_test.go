package simcluster_test

import (
	"math/rand"
	"testing"

	"github.com/tikv/client-go/v2/txnkv/transaction"

	"logbackup/br/tidbschema"
)

// TestDemoSchema: the demo schema reads back through the schema reader as
// created (databases, tables, the partitioned table's partitions), and
// every key SetRandomRows writes belongs to a demo table: a row or index
// entry under one of its physical ids.
func TestDemoSchema(t *testing.T) {
	ctx := schemaCtx(t)
	c := start(t)
	d, err := c.CreateDemoSchema(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateDemoSchema(ctx); err == nil {
		t.Fatal("a second demo schema was created over the first")
	}
	ts, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s, err := tidbschema.NewReader(tidbschema.NewKVSource(c.KV()), ts).Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]tidbschema.Table{}
	for _, db := range s.Databases {
		for _, tb := range s.Tables[db.ID] {
			got[db.Name+"."+tb.Name] = tb
		}
	}
	if len(got) != len(d.Tables) || len(s.Databases) != 2 {
		t.Fatalf("read back %d databases, tables %v; created %d tables", len(s.Databases), got, len(d.Tables))
	}
	for _, dt := range d.Tables {
		tb, ok := got[dt.Name()]
		if !ok || tb.ID != dt.ID || len(tb.PhysicalIDs()) != len(dt.PhysicalIDs()) {
			t.Fatalf("%s: read back %+v, created %+v", dt.Name(), tb, dt)
		}
	}
	if orders, _ := d.Table("shop.orders"); len(orders.Partitions) != 4 || !got["shop.orders"].Partitioned {
		t.Fatalf("shop.orders is not partitioned in four: %+v", got["shop.orders"])
	}
	if len(d.SplitKeys()) != 8 {
		t.Fatalf("split keys %q: want one per physical table (8)", d.SplitKeys())
	}

	rng := rand.New(rand.NewSource(1))
	before, _ := c.TSO(ctx)
	if _, err := c.Txn(ctx, func(txn *transaction.KVTxn) error { return d.SetRandomRows(txn, rng, 200) }); err != nil {
		t.Fatal(err)
	}
	after, _ := c.TSO(ctx)
	seen := map[string]bool{}
	for _, v := range c.Committed(before, after) {
		tb, ok := d.TableOfKey(v.Key)
		if !ok {
			t.Fatalf("key %q belongs to no demo table", v.Key)
		}
		seen[tb.Name()] = true
	}
	if len(seen) != len(d.Tables) {
		t.Fatalf("200 random rows touched only %v", seen)
	}
}
