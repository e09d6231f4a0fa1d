package tablefilter_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"logbackup/br/tablefilter"
)

// tidbCases are TiDB's own table-filter test cases, kept as data.
type tidbCases struct {
	MatchTables []struct {
		Args                    []string    `json:"args"`
		Tables                  [][2]string `json:"tables"`
		AcceptedCaseSensitive   []bool      `json:"accepted_case_sensitive"`
		AcceptedCaseInsensitive []bool      `json:"accepted_case_insensitive"`
	} `json:"match_tables"`
	MatchSchemas []struct {
		Args                    []string `json:"args"`
		Schemas                 []string `json:"schemas"`
		AcceptedCaseSensitive   []bool   `json:"accepted_case_sensitive"`
		AcceptedCaseInsensitive []bool   `json:"accepted_case_insensitive"`
	} `json:"match_schemas"`
	ParseFailures []struct {
		Arg         string `json:"arg"`
		ErrorRegexp string `json:"error_regexp"`
	} `json:"parse_failures"`
}

func loadTiDBCases(t *testing.T) tidbCases {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "tidb_cases.json"))
	if err != nil {
		t.Fatal(err)
	}
	var c tidbCases
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	if len(c.MatchTables) == 0 || len(c.MatchSchemas) == 0 || len(c.ParseFailures) == 0 {
		t.Fatal("testdata/tidb_cases.json lost its cases")
	}
	return c
}

func parse(t *testing.T, rules []string, caseSensitive bool) *tablefilter.Filter {
	t.Helper()
	f, err := tablefilter.Parse(rules, caseSensitive)
	if err != nil {
		t.Fatalf("parse %q: %v", rules, err)
	}
	return f
}

func TestTiDBMatchTables(t *testing.T) {
	for _, c := range loadTiDBCases(t).MatchTables {
		cs, ci := parse(t, c.Args, true), parse(t, c.Args, false)
		for i, tb := range c.Tables {
			if got := cs.MatchTable(tb[0], tb[1]); got != c.AcceptedCaseSensitive[i] {
				t.Errorf("%q case-sensitive: %q.%q matched %v, want %v", c.Args, tb[0], tb[1], got, !got)
			}
			if got := ci.MatchTable(tb[0], tb[1]); got != c.AcceptedCaseInsensitive[i] {
				t.Errorf("%q case-insensitive: %q.%q matched %v, want %v", c.Args, tb[0], tb[1], got, !got)
			}
		}
	}
}

func TestTiDBMatchSchemas(t *testing.T) {
	for _, c := range loadTiDBCases(t).MatchSchemas {
		cs, ci := parse(t, c.Args, true), parse(t, c.Args, false)
		for i, s := range c.Schemas {
			if got := cs.MatchSchema(s); got != c.AcceptedCaseSensitive[i] {
				t.Errorf("%q case-sensitive: schema %q matched %v, want %v", c.Args, s, got, !got)
			}
			if got := ci.MatchSchema(s); got != c.AcceptedCaseInsensitive[i] {
				t.Errorf("%q case-insensitive: schema %q matched %v, want %v", c.Args, s, got, !got)
			}
		}
	}
}

// wordingDiffers lists the rules whose error the imported parser (the
// tidb-tools copy, 2021) words differently from TiDB master; they are
// refused all the same.
var wordingDiffers = map[string]string{
	"db": `.*: missing table pattern`, // TiDB master: "wrong table pattern"
}

func TestTiDBParseFailures(t *testing.T) {
	for _, c := range loadTiDBCases(t).ParseFailures {
		_, err := tablefilter.Parse([]string{c.Arg}, false)
		if !errors.Is(err, tablefilter.ErrInvalidFilter) {
			t.Errorf("%q: got %v, want ErrInvalidFilter", c.Arg, err)
			continue
		}
		want := c.ErrorRegexp
		if w, ok := wordingDiffers[c.Arg]; ok {
			want = w
		}
		if !regexp.MustCompile(want).MatchString(err.Error()) {
			t.Errorf("%q: error %q does not match %q", c.Arg, err, want)
		}
	}
}

// TestParseErrorNamesTheRule: with several -f rules the error says which
// one is wrong, not TiDB's "<cmdline>:1" for all of them.
func TestParseErrorNamesTheRule(t *testing.T) {
	_, err := tablefilter.Parse([]string{"*.*", "!db.t", "db.t.x"}, false)
	if !errors.Is(err, tablefilter.ErrInvalidFilter) {
		t.Fatalf("got %v", err)
	}
	want := `invalid table filter "db.t.x": syntax error: stray characters after table pattern`
	if err.Error() != want {
		t.Errorf("got %q, want %q", err, want)
	}
}

// TestImportRules is TiDB's TestImport2 and TestRecursiveImport2: @path
// reads one rule per line; a file cannot import another.
func TestImportRules(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p1 := write("1.txt", "\n\t\tdb?.tbl?\n\t\tdb02.tbl02\n\t")
	p2 := write("2.txt", "\n\t\tdb03.tbl03\n\t\t!db4.tbl4\n\t")
	f := parse(t, []string{"@" + p1, "@" + p2, "db04.tbl04"}, true)
	for _, c := range []struct {
		schema, table string
		want          bool
	}{
		{"db1", "tbl1", true}, {"db2", "tbl2", true}, {"db3", "tbl3", true}, {"db4", "tbl4", false},
		{"db01", "tbl01", false}, {"db02", "tbl02", true}, {"db03", "tbl03", true}, {"db04", "tbl04", true},
	} {
		if got := f.MatchTable(c.schema, c.table); got != c.want {
			t.Errorf("%s.%s: got %v", c.schema, c.table, got)
		}
	}

	p3 := write("3.txt", "db1.tbl1")
	p4 := write("4.txt", "# comment\n\n@"+p3)
	_, err := tablefilter.Parse([]string{"@" + p4}, false)
	if !errors.Is(err, tablefilter.ErrInvalidFilter) || !regexp.MustCompile(`4\.txt:3: importing filter files recursively is not allowed`).MatchString(err.Error()) {
		t.Errorf("recursive import: got %v", err)
	}
	_, err = tablefilter.Parse([]string{"@" + filepath.Join(dir, "5.txt")}, false)
	if !errors.Is(err, tablefilter.ErrInvalidFilter) || !strings.Contains(err.Error(), "cannot open filter file") {
		t.Errorf("missing file: got %v", err)
	}
}
