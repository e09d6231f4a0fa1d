package simcluster_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"logbackup/br/tidbschema"
	"logbackup/tests/simcluster"
)

// latest is the value a raw key holds now, or nil when it is absent or
// deleted.
func latest(c *simcluster.Cluster, key []byte) []byte {
	vs := c.Versions(key)
	if len(vs) == 0 || vs[len(vs)-1].Delete {
		return nil
	}
	return vs[len(vs)-1].Value
}

func schemaCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestSchemaWriterLayout checks the meta keys one CREATE DATABASE and one
// CREATE TABLE leave, byte for byte where TiDB's layout fixes them.
func TestSchemaWriterLayout(t *testing.T) {
	ctx := schemaCtx(t)
	c := start(t)
	db, err := c.CreateDatabase(ctx, "Shop")
	if err != nil {
		t.Fatal(err)
	}
	tb, err := c.CreateTable(ctx, db, simcluster.TableSpec{Name: "Orders", Partitions: []string{"p0", "p1"}, Indexes: []string{"by_id"}})
	if err != nil {
		t.Fatal(err)
	}
	// Ids come from NextGlobalID as in TiDB: the database, its job; the
	// table and its partitions, their job.
	want := simcluster.Table{DBID: 1, ID: 3, Name: "Orders",
		Partitions: []simcluster.Partition{{ID: 4, Name: "p0"}, {ID: 5, Name: "p1"}},
		Indexes:    []simcluster.Index{{ID: 1, Name: "by_id"}}}
	if db.ID != 1 || !reflect.DeepEqual(tb, want) {
		t.Fatalf("ids: database %+v, table %+v", db, tb)
	}
	strKey := func(k string) []byte { return tidbschema.StringKey([]byte(k)) }
	if got := string(latest(c, strKey("NextGlobalID"))); got != "6" {
		t.Errorf("NextGlobalID = %q", got)
	}
	if got := string(latest(c, strKey("SchemaVersionKey"))); got != "2" {
		t.Errorf("SchemaVersionKey = %q", got)
	}
	var diff map[string]any
	if err := json.Unmarshal(latest(c, strKey("Diff:2")), &diff); err != nil || diff["type"] != 3.0 || diff["schema_id"] != 1.0 || diff["table_id"] != 3.0 {
		t.Errorf("Diff:2 = %v, %v", diff, err)
	}

	// The DBs field of database 1, as TiKV logs print such keys.
	dbsField, _ := hex.DecodeString("6d4442730000000000fa000000000000006844423a3100000000fb")
	var dbInfo map[string]any
	if err := json.Unmarshal(latest(c, dbsField), &dbInfo); err != nil {
		t.Fatalf("DBInfo at %x: %v", dbsField, err)
	}
	if dbInfo["id"] != 1.0 || !reflect.DeepEqual(dbInfo["db_name"], map[string]any{"O": "Shop", "L": "shop"}) || dbInfo["state"] != 5.0 {
		t.Errorf("DBInfo %v", dbInfo)
	}

	dbKey := tidbschema.DatabaseKey(db.ID)
	var ti struct {
		ID        int64 `json:"id"`
		Name      struct{ O, L string }
		State     int `json:"state"`
		Partition struct {
			Type        int  `json:"type"`
			Enable      bool `json:"enable"`
			Definitions []struct {
				ID   int64 `json:"id"`
				Name struct{ O, L string }
			} `json:"definitions"`
		} `json:"partition"`
		Indices []struct {
			ID   int64                 `json:"id"`
			Name struct{ O, L string } `json:"idx_name"`
		} `json:"index_info"`
	}
	if err := json.Unmarshal(latest(c, tidbschema.HashDataKey(dbKey, tidbschema.TableField(3))), &ti); err != nil {
		t.Fatal(err)
	}
	if ti.ID != 3 || ti.Name.O != "Orders" || ti.Name.L != "orders" || ti.State != 5 || !ti.Partition.Enable ||
		len(ti.Partition.Definitions) != 2 || ti.Partition.Definitions[1].ID != 5 || ti.Partition.Definitions[1].Name.O != "p1" ||
		len(ti.Indices) != 1 || ti.Indices[0].ID != 1 || ti.Indices[0].Name.O != "by_id" {
		t.Errorf("TableInfo %+v", ti)
	}
	if got := string(latest(c, tidbschema.HashDataKey(dbKey, tidbschema.AutoTableIDField(3)))); got != "0" {
		t.Errorf("TID:3 = %q", got)
	}
}

func TestSchemaWriterRefuses(t *testing.T) {
	ctx := schemaCtx(t)
	c := start(t)
	db, err := c.CreateDatabase(ctx, "Shop")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateDatabase(ctx, "SHOP"); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("duplicate database: %v", err)
	}
	tb, err := c.CreateTable(ctx, db, simcluster.TableSpec{Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateTable(ctx, db, simcluster.TableSpec{Name: "T"}); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("duplicate table: %v", err)
	}
	if _, err := c.CreateTable(ctx, simcluster.Database{ID: 999, Name: "nope"}, simcluster.TableSpec{Name: "t"}); err == nil {
		t.Error("table in a missing database was created")
	}
	if _, err := c.WriteRows(ctx, tb, tb.ID+1, 1); err == nil {
		t.Error("rows written under an id that is not the table's")
	}
	if err := c.DropTable(ctx, tb); err != nil {
		t.Fatal(err)
	}
	if err := c.DropTable(ctx, tb); err == nil {
		t.Error("a dropped table was dropped again")
	}
}

func TestSchemaWriterDrop(t *testing.T) {
	ctx := schemaCtx(t)
	c := start(t)
	db, err := c.CreateDatabase(ctx, "d")
	if err != nil {
		t.Fatal(err)
	}
	a, err := c.CreateTable(ctx, db, simcluster.TableSpec{Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.CreateTable(ctx, db, simcluster.TableSpec{Name: "b"})
	if err != nil {
		t.Fatal(err)
	}
	dbKey := tidbschema.DatabaseKey(db.ID)
	if err := c.DropTable(ctx, a); err != nil {
		t.Fatal(err)
	}
	if latest(c, tidbschema.HashDataKey(dbKey, tidbschema.TableField(a.ID))) != nil ||
		latest(c, tidbschema.HashDataKey(dbKey, tidbschema.AutoTableIDField(a.ID))) != nil {
		t.Error("DROP TABLE left the table's fields")
	}
	if latest(c, tidbschema.HashDataKey(dbKey, tidbschema.TableField(b.ID))) == nil {
		t.Error("DROP TABLE a removed b")
	}
	if err := c.DropDatabase(ctx, db); err != nil {
		t.Fatal(err)
	}
	if latest(c, tidbschema.HashDataKey(dbKey, tidbschema.TableField(b.ID))) != nil ||
		latest(c, tidbschema.HashDataKey(tidbschema.DatabasesKey(), dbKey)) != nil {
		t.Error("DROP DATABASE left fields behind")
	}
}

// TestWriteRows: rows and index entries land at TiDB's keys, in the
// partition asked for.
func TestWriteRows(t *testing.T) {
	ctx := schemaCtx(t)
	c := start(t)
	db, err := c.CreateDatabase(ctx, "d")
	if err != nil {
		t.Fatal(err)
	}
	tb, err := c.CreateTable(ctx, db, simcluster.TableSpec{Name: "t", Partitions: []string{"p0", "p1"}, Indexes: []string{"i1", "i2"}})
	if err != nil {
		t.Fatal(err)
	}
	p1 := tb.Partitions[1].ID
	if _, err := c.WriteRows(ctx, tb, p1, 7); err != nil {
		t.Fatal(err)
	}
	keys := tb.RowKeys(p1, 7)
	if len(keys) != 3 {
		t.Fatalf("keys %x", keys)
	}
	// t{p1}_r{7}, then t{p1}_i{1} and _i{2} over the value 7 with handle 7.
	pfx := append([]byte{'t'}, 0x80, 0, 0, 0, 0, 0, 0, byte(p1))
	want := [][]byte{
		append(append(bytes.Clone(pfx), "_r"...), 0x80, 0, 0, 0, 0, 0, 0, 7),
		append(append(bytes.Clone(pfx), "_i"...), 0x80, 0, 0, 0, 0, 0, 0, 1, 3, 0x80, 0, 0, 0, 0, 0, 0, 7, 3, 0x80, 0, 0, 0, 0, 0, 0, 7),
		append(append(bytes.Clone(pfx), "_i"...), 0x80, 0, 0, 0, 0, 0, 0, 2, 3, 0x80, 0, 0, 0, 0, 0, 0, 7, 3, 0x80, 0, 0, 0, 0, 0, 0, 7),
	}
	if !reflect.DeepEqual(keys, want) {
		t.Fatalf("keys %x, want %x", keys, want)
	}
	if got := latest(c, keys[0]); !bytes.Equal(got, simcluster.RowValue(7)) {
		t.Errorf("row value %q", got)
	}
	for _, k := range keys[1:] {
		if got := latest(c, k); string(got) != "0" {
			t.Errorf("index entry %x = %q", k, got)
		}
	}
	if latest(c, tb.RowKeys(tb.Partitions[0].ID, 7)[0]) != nil {
		t.Error("row written into the other partition")
	}
}
