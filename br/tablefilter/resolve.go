package tablefilter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"

	"logbackup/br/tidbschema"
	"logbackup/meta"
)

// ErrNoTableMatched is returned by ResolveRanges when a filter selects no
// table at the start ts.
var ErrNoTableMatched = errors.New("the table filter matches no table")

// Options change how filters resolve.
type Options struct {
	// CaseSensitive matches names case-sensitively (BR's --case-sensitive).
	CaseSensitive bool
	// RecordsOnly reproduces BR's ranges byte for byte: per matched table
	// only the rows (t{id}_r..t{id}_s), and for a partitioned table only
	// its partition definitions' rows. The log then has no index entries
	// for these tables; see the package documentation.
	RecordsOnly bool
}

// MatchedTable is a table a filter selected.
type MatchedTable struct {
	Schema string
	Table  tidbschema.Table
}

// Resolution is what a filter selects.
type Resolution struct {
	// All is set for the filter "*.*", which observes every table, present
	// and future, without reading the schema.
	All bool
	// Tables are the selected tables, by database id then table id (empty
	// when All).
	Tables []MatchedTable
	// Ranges are the raw key ranges to observe, sorted by start key and
	// disjoint: always the meta range, then the tables' ranges.
	Ranges []meta.Range
}

// AllRanges are the ranges of the filter "*.*": TiDB's meta keys and every
// table key.
func AllRanges() []meta.Range {
	return []meta.Range{
		{StartKey: bytes.Clone(tidbschema.MetaPrefix), EndKey: bytes.Clone(tidbschema.MetaEnd)},
		{StartKey: bytes.Clone(tidbschema.TablePrefixAll), EndKey: bytes.Clone(tidbschema.TableEnd)},
	}
}

// ResolveRanges is the entry point of `br stream start`: the ranges to
// observe for filters (none means "*.*", BR's default), with the schema
// read from src at startTS — the task's effective start ts. Bad syntax
// wraps ErrInvalidFilter; a filter that selects no table is refused with
// ErrNoTableMatched (BR would start a task observing only the meta range).
// For "*.*" src is not read and may be nil.
func ResolveRanges(ctx context.Context, filters []string, src tidbschema.Source, startTS uint64) ([]meta.Range, error) {
	res, err := Resolve(ctx, filters, src, startTS, Options{})
	if err != nil {
		return nil, err
	}
	if !res.All && len(res.Tables) == 0 {
		return nil, fmt.Errorf("%w %q at ts %d", ErrNoTableMatched, filters, startTS)
	}
	return res.Ranges, nil
}

// Resolve resolves filters (none means "*.*") against the schema at
// startTS, as BR's stream start does, with the differences opts select.
func Resolve(ctx context.Context, filters []string, src tidbschema.Source, startTS uint64, opts Options) (*Resolution, error) {
	if len(filters) == 0 {
		filters = []string{"*.*"}
	}
	f, err := Parse(filters, opts.CaseSensitive)
	if err != nil {
		return nil, err
	}
	if isAll(filters) {
		return &Resolution{All: true, Ranges: AllRanges()}, nil
	}
	if src == nil {
		return nil, fmt.Errorf("resolve table filter %q: no schema source to read the tables from", filters)
	}
	tables, err := matchTables(ctx, f, tidbschema.NewReader(src, startTS))
	if err != nil {
		return nil, fmt.Errorf("resolve table filter %q: %w", filters, err)
	}
	ranges := []meta.Range{{StartKey: bytes.Clone(tidbschema.MetaPrefix), EndKey: bytes.Clone(tidbschema.MetaEnd)}}
	for _, m := range tables {
		ranges = append(ranges, tableRanges(m.Table, opts.RecordsOnly)...)
	}
	return &Resolution{Tables: tables, Ranges: mergeRanges(ranges)}, nil
}

// matchTables lists the tables f selects, skipping the in-memory schemas
// and the schemas f rules out as a whole (BR's buildObserveTableRanges).
func matchTables(ctx context.Context, f *Filter, r *tidbschema.Reader) ([]MatchedTable, error) {
	dbs, err := r.Databases(ctx)
	if err != nil {
		return nil, err
	}
	var out []MatchedTable
	for _, db := range dbs {
		if isMemSchema(db.Name) || !f.MatchSchema(db.Name) {
			continue
		}
		tables, err := r.Tables(ctx, db.ID)
		if err != nil {
			return nil, err
		}
		for _, t := range tables {
			if f.MatchTable(db.Name, t.Name) {
				out = append(out, MatchedTable{Schema: db.Name, Table: t})
			}
		}
	}
	return out, nil
}

// tableRanges are the key ranges of one table: its whole prefix under each
// id it can write to, or, with recordsOnly, BR's row ranges.
func tableRanges(t tidbschema.Table, recordsOnly bool) []meta.Range {
	var out []meta.Range
	if recordsOnly {
		for _, id := range t.PhysicalIDs() {
			p := tidbschema.RecordPrefix(id)
			out = append(out, meta.Range{StartKey: p, EndKey: tidbschema.PrefixNext(p)})
		}
		return out
	}
	for _, id := range t.AllIDs() {
		p := tidbschema.TablePrefix(id)
		out = append(out, meta.Range{StartKey: p, EndKey: tidbschema.PrefixNext(p)})
	}
	return out
}

// mergeRanges sorts ranges by start key and merges those that overlap or
// touch. Every range here has a non-empty end key.
func mergeRanges(in []meta.Range) []meta.Range {
	sort.Slice(in, func(i, j int) bool { return bytes.Compare(in[i].StartKey, in[j].StartKey) < 0 })
	var out []meta.Range
	for _, r := range in {
		if n := len(out); n > 0 && bytes.Compare(r.StartKey, out[n-1].EndKey) <= 0 {
			if bytes.Compare(r.EndKey, out[n-1].EndKey) > 0 {
				out[n-1].EndKey = r.EndKey
			}
			continue
		}
		out = append(out, r)
	}
	return out
}
