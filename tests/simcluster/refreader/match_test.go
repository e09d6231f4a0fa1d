package refreader

import (
	"strings"
	"testing"

	"github.com/pingcap/kvproto/pkg/cdcpb"
)

func newTestSub(checkpoint uint64) (*sub, *[]*cdcpb.Event_Row, *[]error) {
	var out []*cdcpb.Event_Row
	var problems []error
	s := &sub{span: span{start: encodeKey([]byte("a")), end: encodeKey([]byte("m"))}, checkpoint: checkpoint, resolved: checkpoint,
		prewrites: map[txnKey]*cdcpb.Event_Row{}, scanned: map[txnKey]bool{}}
	s.emit = func(r *cdcpb.Event_Row) { out = append(out, r) }
	s.problem = func(err error) { problems = append(problems, err) }
	return s, &out, &problems
}

func pw(key string, start uint64, v string) *cdcpb.Event_Row {
	return &cdcpb.Event_Row{Type: cdcpb.Event_PREWRITE, Key: []byte(key), StartTs: start, Value: []byte(v)}
}
func cm(key string, start, commit uint64) *cdcpb.Event_Row {
	return &cdcpb.Event_Row{Type: cdcpb.Event_COMMIT, Key: []byte(key), StartTs: start, CommitTs: commit}
}
func cd(key string, start, commit uint64, v string) *cdcpb.Event_Row {
	return &cdcpb.Event_Row{Type: cdcpb.Event_COMMITTED, Key: []byte(key), StartTs: start, CommitTs: commit, Value: []byte(v)}
}

var initRow = &cdcpb.Event_Row{Type: cdcpb.Event_INITIALIZED}

// TestMatcherAcceptsTiKVStreams: interleaved live rows before INITIALIZED,
// a resent prewrite, a commit below the checkpoint are all fine.
func TestMatcherAcceptsTiKVStreams(t *testing.T) {
	s, out, problems := newTestSub(10)
	for _, r := range []*cdcpb.Event_Row{cm("b", 5, 12), pw("c", 13, "x"), cm("c", 13, 14), cd("d", 3, 11, "y"), pw("b", 5, "v"), initRow,
		pw("e", 15, "z"), pw("e", 15, "z"), cm("e", 15, 16), pw("f", 7, "old"), cm("f", 7, 9)} {
		s.row(r)
	}
	if len(*problems) > 0 {
		t.Fatalf("problems: %v", *problems)
	}
	var got []string
	for _, r := range *out {
		got = append(got, string(r.Key)+"="+string(r.Value))
	}
	if want := "c=x,d=y,b=v,e=z"; strings.Join(got, ",") != want {
		t.Fatalf("emitted %v, want %s", got, want)
	}
}

// TestMatcherFlagsBrokenStreams proves each check can fail.
func TestMatcherFlagsBrokenStreams(t *testing.T) {
	cases := map[string][]*cdcpb.Event_Row{
		"outside range":          {pw("z", 11, "v")},
		"commit matches nothing": {initRow, cm("b", 11, 12)},
		"held commit unmatched":  {cm("b", 11, 12), initRow},
		"scan at checkpoint":     {cd("b", 5, 10, "v")},
		"second initialized":     {initRow, initRow},
		"changed prewrite":       {pw("b", 11, "v"), pw("b", 11, "w")},
		"commit value differs":   {pw("b", 11, "v"), &cdcpb.Event_Row{Type: cdcpb.Event_COMMIT, Key: []byte("b"), StartTs: 11, CommitTs: 12, Value: []byte("w")}},
	}
	for name, rows := range cases {
		s, _, problems := newTestSub(10)
		for _, r := range rows {
			s.row(r)
		}
		if len(*problems) == 0 {
			t.Errorf("%s: accepted", name)
		}
	}
	// A commit at or below a resolved ts already promised.
	s, _, problems := newTestSub(10)
	s.row(initRow)
	s.resolve(20)
	s.row(pw("b", 15, "v"))
	s.row(cm("b", 15, 19))
	if len(*problems) == 0 {
		t.Error("commit below the resolved ts accepted")
	}
	s2, _, problems2 := newTestSub(10)
	s2.resolve(20)
	if len(*problems2) == 0 {
		t.Error("resolved ts before INITIALIZED accepted")
	}
}

func TestFrontier(t *testing.T) {
	f := newFrontier(span{}, 5)
	f.advance(span{[]byte("b"), []byte("d")}, 9)
	if m := f.min(span{[]byte("b"), []byte("c")}); m != 9 {
		t.Fatalf("min inside = %d", m)
	}
	if m := f.min(span{}); m != 5 {
		t.Fatalf("min overall = %d", m)
	}
	f.advance(span{}, 7)
	if m := f.min(span{}); m != 7 {
		t.Fatalf("min after raising all = %d", m)
	}
	f.advance(span{[]byte("c"), nil}, 3) // never backwards
	if m := f.min(span{[]byte("c"), nil}); m != 7 {
		t.Fatalf("went back to %d", m)
	}
}
