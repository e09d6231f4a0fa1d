package simcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	tikverr "github.com/tikv/client-go/v2/error"
	"github.com/tikv/client-go/v2/txnkv/transaction"

	"logbackup/br/tidbschema"
)

// This file writes a small TiDB schema into the cluster the way TiDB's DDL
// does (pkg/meta): each statement is one transaction that takes ids from the
// "NextGlobalID" counter, bumps "SchemaVersionKey", writes the "Diff:<ver>"
// schema diff, and puts DBInfo / TableInfo JSON into the "DBs" and
// "DB:<id>" hashes. Table rows and index entries are written with TiDB's key
// layout, so table filters can be tested end to end. TableInfo carries the
// fields TiDB's loaders and BR read (id, name, partition, view, sequence,
// state, indexes); column types are reduced to one BIGINT primary key.

// Database is a database created by CreateDatabase.
type Database struct {
	ID   int64
	Name string
}

// Table is a table created by CreateTable.
type Table struct {
	DBID       int64
	ID         int64
	Name       string
	Partitions []Partition // hash partitions; none for a plain table
	Indexes    []Index     // secondary indexes over the BIGINT column
}

// Partition is one partition of a Table: a physical table of its own.
type Partition struct {
	ID   int64
	Name string
}

// Index is a secondary (non-unique) index of a Table.
type Index struct {
	ID   int64 // per table, from 1, as TiDB numbers indexes
	Name string
}

// PhysicalIDs are the ids the table's rows live under: its partitions', or
// its own.
func (t Table) PhysicalIDs() []int64 {
	if len(t.Partitions) == 0 {
		return []int64{t.ID}
	}
	ids := make([]int64, 0, len(t.Partitions))
	for _, p := range t.Partitions {
		ids = append(ids, p.ID)
	}
	return ids
}

// TableSpec describes a table for CreateTable.
type TableSpec struct {
	Name       string
	Partitions []string // partition names: PARTITION BY HASH(id) with these partitions
	Indexes    []string // secondary index names
}

// TiDB's model.ActionType values written into schema diffs.
const (
	actionCreateSchema = 1
	actionDropSchema   = 2
	actionCreateTable  = 3
	actionDropTable    = 4
)

// schemaStatePublic is TiDB's model.StatePublic.
const schemaStatePublic = 5

var (
	nextGlobalIDKey  = []byte("NextGlobalID")
	schemaVersionKey = []byte("SchemaVersionKey")
)

// The JSON types below use TiDB's member names (model.DBInfo, TableInfo,
// PartitionInfo, IndexInfo, SchemaDiff), including members the reader
// ignores, so the reader is tested against what TiDB writes rather than
// against its own shape.

type ciStr struct {
	O string `json:"O"`
	L string `json:"L"`
}

func newCIStr(s string) ciStr { return ciStr{O: s, L: strings.ToLower(s)} }

type dbInfoJSON struct {
	ID                 int64           `json:"id"`
	Name               ciStr           `json:"db_name"`
	Charset            string          `json:"charset"`
	Collate            string          `json:"collate"`
	Deprecated         struct{}        `json:"Deprecated"`
	State              int             `json:"state"`
	PlacementPolicyRef json.RawMessage `json:"policy_ref_info"`
	ReadOnly           bool            `json:"read_only"`
}

type fieldTypeJSON struct {
	Tp      int    `json:"Tp"`
	Flag    uint   `json:"Flag"`
	Flen    int    `json:"Flen"`
	Decimal int    `json:"Decimal"`
	Charset string `json:"Charset"`
	Collate string `json:"Collate"`
}

type columnJSON struct {
	ID     int64         `json:"id"`
	Name   ciStr         `json:"name"`
	Offset int           `json:"offset"`
	Type   fieldTypeJSON `json:"type"`
	State  int           `json:"state"`
}

type indexColumnJSON struct {
	Name   ciStr `json:"name"`
	Offset int   `json:"offset"`
	Length int   `json:"length"`
}

type indexJSON struct {
	ID      int64             `json:"id"`
	Name    ciStr             `json:"idx_name"`
	Table   ciStr             `json:"tbl_name"`
	Columns []indexColumnJSON `json:"idx_cols"`
	State   int               `json:"state"`
	Unique  bool              `json:"is_unique"`
	Primary bool              `json:"is_primary"`
	Type    int               `json:"index_type"`
	Global  bool              `json:"is_global"`
}

type partitionDefJSON struct {
	ID       int64    `json:"id"`
	Name     ciStr    `json:"name"`
	LessThan []string `json:"less_than"`
	InValues []string `json:"in_values"`
}

type partitionInfoJSON struct {
	Type                int                `json:"type"`
	Expr                string             `json:"expr"`
	Columns             []ciStr            `json:"columns"`
	Enable              bool               `json:"enable"`
	IsEmptyColumns      bool               `json:"is_empty_columns"`
	Definitions         []partitionDefJSON `json:"definitions"`
	AddingDefinitions   []partitionDefJSON `json:"adding_definitions"`
	DroppingDefinitions []partitionDefJSON `json:"dropping_definitions"`
	NewPartitionIDs     []int64            `json:"NewPartitionIDs"`
	States              json.RawMessage    `json:"states"`
	Num                 uint64             `json:"num"`
}

type tableInfoJSON struct {
	ID          int64              `json:"id"`
	Name        ciStr              `json:"name"`
	Charset     string             `json:"charset"`
	Collate     string             `json:"collate"`
	Columns     []columnJSON       `json:"cols"`
	Indices     []indexJSON        `json:"index_info"`
	State       int                `json:"state"`
	PKIsHandle  bool               `json:"pk_is_handle"`
	Comment     string             `json:"comment"`
	AutoIncID   int64              `json:"auto_inc_id"`
	MaxColumnID int64              `json:"max_col_id"`
	MaxIndexID  int64              `json:"max_idx_id"`
	UpdateTS    uint64             `json:"update_timestamp"`
	Partition   *partitionInfoJSON `json:"partition"`
	View        json.RawMessage    `json:"view"`
	Sequence    json.RawMessage    `json:"sequence"`
	Version     uint16             `json:"version"`
	Revision    uint64             `json:"revision"`
}

type schemaDiffJSON struct {
	Version     int64 `json:"version"`
	Type        int   `json:"type"`
	SchemaID    int64 `json:"schema_id"`
	TableID     int64 `json:"table_id"`
	OldTableID  int64 `json:"old_table_id"`
	OldSchemaID int64 `json:"old_schema_id"`
}

// ddl runs one DDL transaction with TiDB's meta helpers bound to it.
func (c *Cluster) ddl(ctx context.Context, fn func(m *metaTxn) error) error {
	_, err := c.Txn(ctx, func(txn *transaction.KVTxn) error {
		return fn(&metaTxn{ctx: ctx, txn: txn})
	})
	return err
}

// metaTxn is TiDB's meta structure over one transaction.
type metaTxn struct {
	ctx context.Context
	txn *transaction.KVTxn
}

func (m *metaTxn) get(key []byte) ([]byte, error) {
	v, err := m.txn.Get(m.ctx, key)
	if tikverr.IsErrNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get %x: %w", key, err)
	}
	return v.Value, nil
}

// inc adds n to a decimal string counter and returns the new value (TiDB's
// TxStructure.Inc).
func (m *metaTxn) inc(key []byte, n int64) (int64, error) {
	raw, err := m.get(tidbschema.StringKey(key))
	if err != nil {
		return 0, err
	}
	var cur int64
	if raw != nil {
		if cur, err = strconv.ParseInt(string(raw), 10, 64); err != nil {
			return 0, fmt.Errorf("counter %s: %w", key, err)
		}
	}
	cur += n
	return cur, m.txn.Set(tidbschema.StringKey(key), []byte(strconv.FormatInt(cur, 10)))
}

// globalIDs takes n ids from NextGlobalID, which holds the last id used.
func (m *metaTxn) globalIDs(n int) ([]int64, error) {
	last, err := m.inc(nextGlobalIDKey, int64(n))
	if err != nil {
		return nil, err
	}
	ids := make([]int64, 0, n)
	for id := last - int64(n) + 1; id <= last; id++ {
		ids = append(ids, id)
	}
	return ids, nil
}

// finish allocates the DDL job's id (TiDB takes job ids from the same
// counter, after the objects' ids) and records the new schema version with
// its diff.
func (m *metaTxn) finish(action int, schemaID, tableID int64) error {
	if _, err := m.globalIDs(1); err != nil {
		return err
	}
	ver, err := m.inc(schemaVersionKey, 1)
	if err != nil {
		return err
	}
	diff, err := json.Marshal(schemaDiffJSON{Version: ver, Type: action, SchemaID: schemaID, TableID: tableID})
	if err != nil {
		return err
	}
	return m.txn.Set(tidbschema.StringKey([]byte("Diff:"+strconv.FormatInt(ver, 10))), diff)
}

// hashFields returns every field of a hash with its value.
func (m *metaTxn) hashFields(key []byte) (map[string][]byte, error) {
	prefix := tidbschema.HashDataPrefix(key)
	it, err := m.txn.Iter(prefix, tidbschema.PrefixNext(prefix))
	if err != nil {
		return nil, fmt.Errorf("scan hash %s: %w", key, err)
	}
	defer it.Close()
	out := map[string][]byte{}
	for it.Valid() {
		_, field, err := tidbschema.DecodeHashDataKey(it.Key())
		if err != nil {
			return nil, err
		}
		out[string(field)] = bytes.Clone(it.Value())
		if err := it.Next(); err != nil {
			return nil, fmt.Errorf("scan hash %s: %w", key, err)
		}
	}
	return out, nil
}

// CreateDatabase creates a database as CREATE DATABASE does.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) (Database, error) {
	if name == "" {
		return Database{}, fmt.Errorf("create database: empty name")
	}
	var db Database
	err := c.ddl(ctx, func(m *metaTxn) error {
		dbs, err := m.hashFields(tidbschema.DatabasesKey())
		if err != nil {
			return err
		}
		for field, v := range dbs {
			var info dbInfoJSON
			if err := json.Unmarshal(v, &info); err != nil {
				return fmt.Errorf("database %s: %w", field, err)
			}
			if info.Name.L == strings.ToLower(name) {
				return fmt.Errorf("database %q exists (id %d)", name, info.ID)
			}
		}
		ids, err := m.globalIDs(1)
		if err != nil {
			return err
		}
		db = Database{ID: ids[0], Name: name}
		info, err := json.Marshal(dbInfoJSON{
			ID: db.ID, Name: newCIStr(name), Charset: "utf8mb4", Collate: "utf8mb4_bin",
			State: schemaStatePublic, PlacementPolicyRef: json.RawMessage("null"),
		})
		if err != nil {
			return err
		}
		if err := m.txn.Set(tidbschema.HashDataKey(tidbschema.DatabasesKey(), tidbschema.DatabaseKey(db.ID)), info); err != nil {
			return err
		}
		return m.finish(actionCreateSchema, db.ID, 0)
	})
	if err != nil {
		return Database{}, fmt.Errorf("create database %q: %w", name, err)
	}
	return db, nil
}

// CreateTable creates a table in db as CREATE TABLE does: ids for the table
// and each partition from NextGlobalID, the TableInfo under "Table:<id>" and
// the row-id counter "TID:<id>" in the database's hash.
func (c *Cluster) CreateTable(ctx context.Context, db Database, spec TableSpec) (Table, error) {
	if spec.Name == "" {
		return Table{}, fmt.Errorf("create table in %q: empty name", db.Name)
	}
	var t Table
	err := c.ddl(ctx, func(m *metaTxn) error {
		if v, err := m.get(tidbschema.HashDataKey(tidbschema.DatabasesKey(), tidbschema.DatabaseKey(db.ID))); err != nil {
			return err
		} else if v == nil {
			return fmt.Errorf("database %d does not exist", db.ID)
		}
		fields, err := m.hashFields(tidbschema.DatabaseKey(db.ID))
		if err != nil {
			return err
		}
		for field, v := range fields {
			if !strings.HasPrefix(field, "Table:") {
				continue
			}
			var info tableInfoJSON
			if err := json.Unmarshal(v, &info); err != nil {
				return fmt.Errorf("table %s: %w", field, err)
			}
			if info.Name.L == strings.ToLower(spec.Name) {
				return fmt.Errorf("table %q exists (id %d)", spec.Name, info.ID)
			}
		}
		ids, err := m.globalIDs(1 + len(spec.Partitions))
		if err != nil {
			return err
		}
		t = Table{DBID: db.ID, ID: ids[0], Name: spec.Name}
		for i, name := range spec.Partitions {
			t.Partitions = append(t.Partitions, Partition{ID: ids[1+i], Name: name})
		}
		for i, name := range spec.Indexes {
			t.Indexes = append(t.Indexes, Index{ID: int64(i + 1), Name: name})
		}
		ts := m.txn.StartTS()
		info, err := json.Marshal(tableInfo(t, ts))
		if err != nil {
			return err
		}
		dbKey := tidbschema.DatabaseKey(db.ID)
		if err := m.txn.Set(tidbschema.HashDataKey(dbKey, tidbschema.TableField(t.ID)), info); err != nil {
			return err
		}
		if err := m.txn.Set(tidbschema.HashDataKey(dbKey, tidbschema.AutoTableIDField(t.ID)), []byte("0")); err != nil {
			return err
		}
		return m.finish(actionCreateTable, db.ID, t.ID)
	})
	if err != nil {
		return Table{}, fmt.Errorf("create table %q in %q: %w", spec.Name, db.Name, err)
	}
	return t, nil
}

func tableInfo(t Table, ts uint64) tableInfoJSON {
	intType := fieldTypeJSON{Tp: 8, Flag: 4099, Flen: 20, Charset: "binary", Collate: "binary"} // BIGINT NOT NULL PRIMARY KEY
	info := tableInfoJSON{
		ID: t.ID, Name: newCIStr(t.Name), Charset: "utf8mb4", Collate: "utf8mb4_bin",
		Columns:    []columnJSON{{ID: 1, Name: newCIStr("id"), Type: intType, State: schemaStatePublic}},
		State:      schemaStatePublic,
		PKIsHandle: true, MaxColumnID: 1, MaxIndexID: int64(len(t.Indexes)),
		UpdateTS: ts, View: json.RawMessage("null"), Sequence: json.RawMessage("null"),
		Version: 5,
	}
	for _, idx := range t.Indexes {
		info.Indices = append(info.Indices, indexJSON{
			ID: idx.ID, Name: newCIStr(idx.Name), Table: newCIStr(t.Name),
			Columns: []indexColumnJSON{{Name: newCIStr("id"), Length: -1}},
			State:   schemaStatePublic, Type: 1, // BTREE
		})
	}
	if len(t.Partitions) > 0 {
		p := &partitionInfoJSON{Type: 2, Expr: "`id`", Enable: true, Num: uint64(len(t.Partitions)), States: json.RawMessage("null")} // HASH
		for _, part := range t.Partitions {
			p.Definitions = append(p.Definitions, partitionDefJSON{ID: part.ID, Name: newCIStr(part.Name)})
		}
		info.Partition = p
	}
	return info
}

// DropTable drops a table as DROP TABLE does: its field and auto-id counter
// leave the database's hash. Its rows stay until GC (not simulated).
func (c *Cluster) DropTable(ctx context.Context, t Table) error {
	err := c.ddl(ctx, func(m *metaTxn) error {
		dbKey := tidbschema.DatabaseKey(t.DBID)
		if v, err := m.get(tidbschema.HashDataKey(dbKey, tidbschema.TableField(t.ID))); err != nil {
			return err
		} else if v == nil {
			return fmt.Errorf("table %d does not exist in database %d", t.ID, t.DBID)
		}
		if err := m.txn.Delete(tidbschema.HashDataKey(dbKey, tidbschema.TableField(t.ID))); err != nil {
			return err
		}
		if err := m.txn.Delete(tidbschema.HashDataKey(dbKey, tidbschema.AutoTableIDField(t.ID))); err != nil {
			return err
		}
		return m.finish(actionDropTable, t.DBID, t.ID)
	})
	if err != nil {
		return fmt.Errorf("drop table %q: %w", t.Name, err)
	}
	return nil
}

// DropDatabase drops a database as DROP DATABASE does: every field of its
// hash, then its field in "DBs".
func (c *Cluster) DropDatabase(ctx context.Context, db Database) error {
	err := c.ddl(ctx, func(m *metaTxn) error {
		dbsField := tidbschema.HashDataKey(tidbschema.DatabasesKey(), tidbschema.DatabaseKey(db.ID))
		if v, err := m.get(dbsField); err != nil {
			return err
		} else if v == nil {
			return fmt.Errorf("database %d does not exist", db.ID)
		}
		fields, err := m.hashFields(tidbschema.DatabaseKey(db.ID))
		if err != nil {
			return err
		}
		for field := range fields {
			if err := m.txn.Delete(tidbschema.HashDataKey(tidbschema.DatabaseKey(db.ID), []byte(field))); err != nil {
				return err
			}
		}
		if err := m.txn.Delete(dbsField); err != nil {
			return err
		}
		return m.finish(actionDropSchema, db.ID, 0)
	})
	if err != nil {
		return fmt.Errorf("drop database %q: %w", db.Name, err)
	}
	return nil
}

// RowValue is the value WriteRows gives the row with a handle. (Values are
// opaque here: nothing decodes TiDB's row format.)
func RowValue(handle int64) []byte { return []byte("row-" + strconv.FormatInt(handle, 10)) }

// RowKeys are the keys a row of t with this handle has in a physical table
// of t: its record key, then one entry per index (whose indexed BIGINT
// column holds the handle).
func (t Table) RowKeys(physicalID, handle int64) [][]byte {
	keys := [][]byte{tidbschema.RowKey(physicalID, handle)}
	for _, idx := range t.Indexes {
		keys = append(keys, tidbschema.IndexKeyInt(physicalID, idx.ID, handle, handle))
	}
	return keys
}

// WriteRows inserts rows with the given handles into the physical table
// physicalID of t (t.ID or one of its partitions), with their index
// entries, in one transaction, and returns its start ts.
func (c *Cluster) WriteRows(ctx context.Context, t Table, physicalID int64, handles ...int64) (uint64, error) {
	known := false
	for _, id := range t.PhysicalIDs() {
		known = known || id == physicalID
	}
	if !known {
		return 0, fmt.Errorf("write rows: %d is not a physical table of %q (%v)", physicalID, t.Name, t.PhysicalIDs())
	}
	return c.Txn(ctx, func(txn *transaction.KVTxn) error {
		for _, h := range handles {
			for i, k := range t.RowKeys(physicalID, h) {
				v := []byte("0") // TiDB's value of a non-unique index entry
				if i == 0 {
					v = RowValue(h)
				}
				if err := txn.Set(k, v); err != nil {
					return err
				}
			}
		}
		return nil
	})
}
