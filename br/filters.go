package br

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"logbackup/br/tablefilter"
	"logbackup/meta"
)

// taskFilter is the table filter of `start` (-f/--filter, --case-sensitive),
// parsed before anything is read or written, so a bad rule changes
// nothing.
type taskFilter struct {
	rules         []string // as given; "*.*" when none, BR's default
	caseSensitive bool
}

func parseTaskFilter(rules []string, caseSensitive bool) (taskFilter, error) {
	if len(rules) == 0 {
		rules = []string{"*.*"}
	}
	if _, err := tablefilter.Parse(rules, caseSensitive); err != nil {
		return taskFilter{}, userError("fix the --filter rule; TiDB's table-filter syntax: 'db.table', 'db.*', '!db.t', '/regexp/.*'",
			err, "invalid --filter")
	}
	return taskFilter{rules: rules, caseSensitive: caseSensitive}, nil
}

// schemaTimeout bounds reading TiDB's schema to resolve a filter.
const schemaTimeout = 2 * time.Minute

// ranges resolves the filter to the key ranges the task observes, with
// TiDB's schema as of ts (the task's effective start). "*.*" needs no
// schema: TiDB's meta keys and every table key. Any other filter reads the
// schema; one that selects no table is refused.
func (f taskFilter) ranges(ctx context.Context, env *Env, ts uint64, w io.Writer) ([]meta.Range, error) {
	opts := tablefilter.Options{CaseSensitive: f.caseSensitive}
	if len(f.rules) == 1 && f.rules[0] == "*.*" {
		res, err := tablefilter.Resolve(ctx, f.rules, nil, ts, opts)
		if err != nil {
			return nil, err
		}
		return res.Ranges, nil
	}
	src, err := env.schema(ctx)
	if err != nil {
		return nil, err
	}
	// client-go's snapshot reads take no context: they end on their own
	// backoff budget. The resolution runs aside so that ctx and the
	// deadline bound the command whatever the cluster does.
	rctx, cancel := context.WithTimeout(ctx, schemaTimeout)
	defer cancel()
	type result struct {
		res *tablefilter.Resolution
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := tablefilter.Resolve(rctx, f.rules, src, ts, opts)
		done <- result{res, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-rctx.Done():
		return nil, userError("check that the TiKV stores are reachable (their KV API, with the TLS flags)", rctx.Err(),
			"reading TiDB's schema at ts %d did not finish within %s", ts, schemaTimeout)
	}
	if r.err != nil {
		if errors.Is(r.err, tablefilter.ErrInvalidFilter) {
			return nil, userError("fix the --filter rule", r.err, "invalid --filter")
		}
		return nil, userError("check that the TiKV stores are reachable and that the start ts is not garbage collected", r.err,
			"cannot read TiDB's schema at ts %d (%s)", ts, FormatTS(ts, env.loc()))
	}
	if len(r.res.Tables) == 0 {
		return nil, userError("check the database and table names (matching is case-insensitive unless --case-sensitive); the schema is read at the start ts",
			tablefilter.ErrNoTableMatched, "--filter %s selects no table at %s", quoteAll(f.rules), FormatTS(ts, env.loc()))
	}
	names := make([]string, 0, len(r.res.Tables))
	for _, t := range r.res.Tables {
		names = append(names, t.Schema+"."+t.Table.Name)
	}
	env.log().Info("table filter resolved", "filter", f.rules, "ts", ts, "tables", names, "ranges", len(r.res.Ranges))
	shown := names
	if len(shown) > 20 {
		shown = append(shown[:20:20], fmt.Sprintf("… (%d more)", len(names)-20))
	}
	fmt.Fprintf(w, "Table filter %s: %d tables at the start ts: %s\n", quoteAll(f.rules), len(names), strings.Join(shown, ", "))
	return r.res.Ranges, nil
}

func quoteAll(rules []string) string {
	q := make([]string, len(rules))
	for i, r := range rules {
		q[i] = fmt.Sprintf("%q", r)
	}
	return strings.Join(q, " ")
}
