package simcluster

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"sort"

	"github.com/tikv/client-go/v2/txnkv/transaction"

	"logbackup/br/tidbschema"
)

// DemoSchema is a small TiDB schema for the playground and end-to-end tests
// of table filters: two databases, a partitioned table and tables with
// secondary indexes, created through the same DDL transactions as
// CreateDatabase and CreateTable, so `br stream start -f …` resolves it
// like a real cluster's.
//
//	shop.customers   (index idx_name)
//	shop.orders      PARTITION BY HASH(id) PARTITIONS 4 (p0..p3), index idx_customer
//	shop.audit_log
//	analytics.events (index idx_kind)
//	analytics.daily_stats
type DemoSchema struct {
	Databases []Database
	Tables    []DemoTable
}

// DemoTable is a table of the demo schema with its database's name.
type DemoTable struct {
	Schema string
	Table
}

// Name is "schema.table".
func (t DemoTable) Name() string { return t.Schema + "." + t.Table.Name }

// DemoMaxHandle bounds the row handles SetRandomRows writes, so a workload
// updates rows as well as inserting them.
const DemoMaxHandle = 5000

var demoSpec = []struct {
	db     string
	tables []TableSpec
}{
	{"shop", []TableSpec{
		{Name: "customers", Indexes: []string{"idx_name"}},
		{Name: "orders", Partitions: []string{"p0", "p1", "p2", "p3"}, Indexes: []string{"idx_customer"}},
		{Name: "audit_log"},
	}},
	{"analytics", []TableSpec{
		{Name: "events", Indexes: []string{"idx_kind"}},
		{Name: "daily_stats"},
	}},
}

// CreateDemoSchema creates the demo schema (see DemoSchema), one DDL
// transaction per statement. It fails if a database of that name exists.
func (c *Cluster) CreateDemoSchema(ctx context.Context) (*DemoSchema, error) {
	d := &DemoSchema{}
	for _, spec := range demoSpec {
		db, err := c.CreateDatabase(ctx, spec.db)
		if err != nil {
			return nil, fmt.Errorf("demo schema: %w", err)
		}
		d.Databases = append(d.Databases, db)
		for _, ts := range spec.tables {
			t, err := c.CreateTable(ctx, db, ts)
			if err != nil {
				return nil, fmt.Errorf("demo schema: %w", err)
			}
			d.Tables = append(d.Tables, DemoTable{Schema: db.Name, Table: t})
		}
	}
	return d, nil
}

// Table returns the demo table "schema.table", or false.
func (d *DemoSchema) Table(name string) (DemoTable, bool) {
	for _, t := range d.Tables {
		if t.Name() == name {
			return t, true
		}
	}
	return DemoTable{}, false
}

// SplitKeys are the start keys of every physical table of the schema, in
// key order: splitting there gives each its own regions.
func (d *DemoSchema) SplitKeys() [][]byte {
	var keys [][]byte
	for _, t := range d.Tables {
		for _, id := range t.PhysicalIDs() {
			keys = append(keys, tidbschema.TablePrefix(id))
		}
	}
	sort.Slice(keys, func(i, j int) bool { return bytes.Compare(keys[i], keys[j]) < 0 })
	return keys
}

// TableOfKey says which demo table a raw key belongs to (its rows or its
// indexes, under the table's or a partition's id).
func (d *DemoSchema) TableOfKey(key []byte) (DemoTable, bool) {
	for _, t := range d.Tables {
		for _, id := range append([]int64{t.ID}, t.PhysicalIDs()...) {
			if bytes.HasPrefix(key, tidbschema.TablePrefix(id)) {
				return t, true
			}
		}
	}
	return DemoTable{}, false
}

// SetRandomRows sets n rows of random demo tables in txn, each with its
// index entries: a handle in [1, DemoMaxHandle], in the partition HASH(id)
// picks for a partitioned table, and a value of 20 to 220 bytes.
func (d *DemoSchema) SetRandomRows(txn *transaction.KVTxn, rng *rand.Rand, n int) error {
	for range n {
		t := d.Tables[rng.Intn(len(d.Tables))]
		h := 1 + rng.Int63n(DemoMaxHandle)
		ids := t.PhysicalIDs()
		physical := ids[h%int64(len(ids))] // TiDB's HASH partitioning: id mod partitions
		value := append(RowValue(h), '-')
		for range 20 + rng.Intn(200) {
			value = append(value, byte('a'+rng.Intn(26)))
		}
		for i, k := range t.RowKeys(physical, h) {
			v := []byte("0") // TiDB's value of a non-unique index entry
			if i == 0 {
				v = value
			}
			if err := txn.Set(k, v); err != nil {
				return err
			}
		}
	}
	return nil
}
