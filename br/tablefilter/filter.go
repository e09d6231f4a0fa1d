// Package tablefilter resolves the table filters of `br stream start -f`
// to the key ranges a log backup task observes, as TiDB BR does.
//
// # Syntax
//
// TiDB's table-filter syntax (BR, Dumpling and Lightning share it), parsed
// by TiDB's own implementation: github.com/pingcap/tidb-tools/pkg/table-filter,
// the 2021 copy of what TiDB keeps as pkg/util/table-filter, which passes
// TiDB's current test cases (one error message aside) and links nothing of
// TiDB. Each rule is "schema.table":
//
//   - wildcards: * (any run), ? (one character), [a-z] and [!a-z] classes;
//   - `quoted` and "quoted" names are literal; a doubled quote character
//     stands for itself;
//   - /regexp/ is a Go regular expression, matched unanchored;
//   - \ escapes one punctuation character (escaping a letter or digit is an
//     error, reserved by TiDB);
//   - a leading ! excludes; a leading # is a comment; @path reads rules from
//     a file, one per line;
//   - the last rule that matches a table decides; a table no rule matches is
//     excluded;
//   - names match case-insensitively unless Options.CaseSensitive (BR's
//     --case-sensitive, off by default).
//
// # Ranges (BR's br/pkg/stream BuildObserveDataRanges and stream start)
//
// Exactly one rule, "*.*" (BR's default), observes TiDB's meta keys [m, n)
// and every table key [t, u) without reading the schema: tables created
// later are observed too. Any other filter reads the schema at the task's
// start ts and observes [m, n) plus, for each matched table, its keys; the
// ranges are sorted by start key. BR never excludes the meta range, and
// skips only the in-memory schemas (INFORMATION_SCHEMA,
// PERFORMANCE_SCHEMA, METRICS_SCHEMA); mysql and other system schemas are
// matched like any other.
//
// The ranges of a matched table differ from BR's on purpose (see
// Options.RecordsOnly): BR observes only the table's rows, t{id}_r, and for
// a partitioned table only its partitions' rows. Its log then lacks index
// entries, and a table restored from it has rows its indexes do not find. By
// default this package observes each table's whole prefix t{id} — rows and
// indexes — and, for a partitioned table, the table's own id (global
// indexes) and every partition, including partitions being added or dropped.
// Adjacent ranges are merged, which observes the same keys with fewer etcd
// operations (a task is one etcd transaction, limited to 128 operations by
// default).
//
// # Tables created after the start
//
// As in BR, a filter other than "*.*" is resolved once, at start: the task's
// ranges are fixed. DDL after the start ts is still logged, because the meta
// range is always observed, so a restore recreates the tables — but the rows
// of a table the ranges do not cover are not in the log. That includes every
// table created after the start ts (even one the filter matches), every
// table that exists now but did not at the start ts (a --start-ts in the
// past), and every new physical id of a matched table: TRUNCATE TABLE, ADD /
// REORGANIZE / TRUNCATE / EXCHANGE PARTITION and the partitioning changes of
// ALTER TABLE give a table new ids whose rows are not observed. To back such
// tables up, stop the task and start it again (which resolves the filter
// anew), or use "*.*".
//
// # Nothing matched
//
// BR starts a task even when no table matches: it then observes only the
// meta range. Resolve reports that faithfully (Resolution.Tables is empty);
// ResolveRanges refuses it with ErrNoTableMatched, since a filter that
// selects nothing is most likely a typo.
package tablefilter

import (
	"errors"
	"fmt"
	"strings"

	tf "github.com/pingcap/tidb-tools/pkg/table-filter"
)

// ErrInvalidFilter is wrapped by every syntax error of a filter rule.
var ErrInvalidFilter = errors.New("invalid table filter")

// Filter is a parsed list of table-filter rules.
type Filter struct {
	f tf.Filter
}

// Parse parses rules in TiDB's table-filter syntax. Names match
// case-insensitively unless caseSensitive, as BR's --case-sensitive. An
// error names the rule at fault and wraps ErrInvalidFilter.
func Parse(rules []string, caseSensitive bool) (*Filter, error) {
	// TiDB's parser reports every command-line rule as "<cmdline>:1", so
	// each rule is parsed alone first to say which one is wrong.
	for _, r := range rules {
		if _, err := tf.Parse([]string{r}); err != nil {
			msg := strings.TrimPrefix(err.Error(), "at <cmdline>:1: ")
			return nil, fmt.Errorf("%w %q: %s", ErrInvalidFilter, r, msg)
		}
	}
	f, err := tf.Parse(rules)
	if err != nil { // not reached: every rule parsed alone
		return nil, fmt.Errorf("%w %q: %s", ErrInvalidFilter, rules, err.Error())
	}
	if !caseSensitive {
		f = tf.CaseInsensitive(f)
	}
	return &Filter{f: f}, nil
}

// MatchTable reports whether the filter selects table in schema.
func (f *Filter) MatchTable(schema, table string) bool { return f.f.MatchTable(schema, table) }

// MatchSchema reports whether the filter may select tables in schema: true
// when a positive rule's schema pattern matches it, false when the last
// matching rule excludes the whole schema (TiDB's MatchSchema).
func (f *Filter) MatchSchema(schema string) bool { return f.f.MatchSchema(schema) }

// isAll is BR's test for the filter that needs no schema: exactly one rule,
// spelled "*.*".
func isAll(rules []string) bool { return len(rules) == 1 && rules[0] == "*.*" }

// memSchemas are TiDB's in-memory schemas (util.IsMemDB), which BR skips:
// they have no keys in TiKV.
var memSchemas = map[string]bool{
	"information_schema": true,
	"performance_schema": true,
	"metrics_schema":     true,
}

func isMemSchema(name string) bool { return memSchemas[strings.ToLower(name)] }
