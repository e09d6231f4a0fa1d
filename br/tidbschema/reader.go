package tidbschema

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Source reads raw keys of a TiKV cluster at a timestamp. KVSource reads a
// real cluster through client-go; anything that can scan a snapshot fits.
type Source interface {
	// Scan calls fn with every key in [start, end) visible at ts and its
	// value, in key order. fn must not keep the slices. An error from fn
	// ends the scan and is returned.
	Scan(ctx context.Context, ts uint64, start, end []byte, fn func(key, value []byte) error) error
}

// Reader reads TiDB's schema as of one timestamp, the way TiDB's
// meta.Reader does on a snapshot.
type Reader struct {
	src Source
	ts  uint64
}

// NewReader reads the schema visible at ts from src.
func NewReader(src Source, ts uint64) *Reader { return &Reader{src: src, ts: ts} }

// scanHash calls fn with every field of a meta hash and its value.
func (r *Reader) scanHash(ctx context.Context, key []byte, fn func(field, value []byte) error) error {
	prefix := HashDataPrefix(key)
	return r.src.Scan(ctx, r.ts, prefix, PrefixNext(prefix), func(k, v []byte) error {
		hk, field, err := DecodeHashDataKey(k)
		if err != nil {
			return err
		}
		if !bytes.Equal(hk, key) { // cannot happen for a correct Source: its range is exactly the hash
			return fmt.Errorf("meta key %x: belongs to hash %q, scanned %q", k, hk, key)
		}
		return fn(field, v)
	})
}

// Databases lists the databases (TiDB's ListDatabases: every field of the
// "DBs" hash), ordered by id.
func (r *Reader) Databases(ctx context.Context) ([]Database, error) {
	var dbs []Database
	err := r.scanHash(ctx, dbsKey, func(field, value []byte) error {
		db, err := decodeDatabase(value)
		if err != nil {
			return fmt.Errorf("database %q: %w", field, err)
		}
		dbs = append(dbs, db)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list databases at ts %d: %w", r.ts, err)
	}
	sort.Slice(dbs, func(i, j int) bool { return dbs[i].ID < dbs[j].ID })
	return dbs, nil
}

// ErrDatabaseNotExist is returned by Tables for a database id the "DBs"
// hash does not hold at the reader's ts.
var ErrDatabaseNotExist = errors.New("database does not exist")

// Tables lists the tables, views and sequences of a database (TiDB's
// IterTables: the "Table…" fields of the "DB:<id>" hash), ordered by id. A
// database that does not exist is an error, as in TiDB, so a hash left
// behind by an interrupted DROP DATABASE is never read as live tables.
func (r *Reader) Tables(ctx context.Context, dbID int64) ([]Table, error) {
	exists := false
	dbKey := DatabaseKey(dbID)
	err := r.src.Scan(ctx, r.ts, HashDataKey(dbsKey, dbKey), PrefixNext(HashDataKey(dbsKey, dbKey)), func(k, _ []byte) error {
		// The range is one key plus keys it prefixes, which EncodeBytes
		// rules out; compare anyway rather than trust the range.
		exists = exists || bytes.Equal(k, HashDataKey(dbsKey, dbKey))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list tables of database %d at ts %d: %w", dbID, r.ts, err)
	}
	if !exists {
		return nil, fmt.Errorf("list tables of database %d at ts %d: %w", dbID, r.ts, ErrDatabaseNotExist)
	}
	var tables []Table
	err = r.scanHash(ctx, dbKey, func(field, value []byte) error {
		if !strings.HasPrefix(string(field), tableFieldPrefix) {
			return nil // auto-id counters and sequence values
		}
		t, err := decodeTable(dbID, value)
		if err != nil {
			return fmt.Errorf("table %q: %w", field, err)
		}
		tables = append(tables, t)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list tables of database %d at ts %d: %w", dbID, r.ts, err)
	}
	sort.Slice(tables, func(i, j int) bool { return tables[i].ID < tables[j].ID })
	return tables, nil
}

// Schema is every database with its tables.
type Schema struct {
	Databases []Database
	Tables    map[int64][]Table // by database id
}

// Load reads every database and its tables.
func (r *Reader) Load(ctx context.Context) (*Schema, error) {
	dbs, err := r.Databases(ctx)
	if err != nil {
		return nil, err
	}
	s := &Schema{Databases: dbs, Tables: make(map[int64][]Table, len(dbs))}
	for _, db := range dbs {
		tables, err := r.Tables(ctx, db.ID)
		if err != nil {
			return nil, err
		}
		s.Tables[db.ID] = tables
	}
	return s, nil
}
