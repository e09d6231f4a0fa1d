package matcher

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/pingcap/kvproto/pkg/cdcpb"
)

func pw(key string, start uint64, val string) *cdcpb.Event_Row {
	return &cdcpb.Event_Row{Type: cdcpb.Event_PREWRITE, Key: []byte(key), StartTs: start, Value: []byte(val), OpType: cdcpb.Event_Row_PUT}
}
func commit(key string, start, commit uint64) *cdcpb.Event_Row {
	return &cdcpb.Event_Row{Type: cdcpb.Event_COMMIT, Key: []byte(key), StartTs: start, CommitTs: commit}
}
func committed(key string, start, commit uint64, val string) *cdcpb.Event_Row {
	return &cdcpb.Event_Row{Type: cdcpb.Event_COMMITTED, Key: []byte(key), StartTs: start, CommitTs: commit, Value: []byte(val), OpType: cdcpb.Event_Row_PUT}
}
func rollback(key string, start uint64) *cdcpb.Event_Row {
	return &cdcpb.Event_Row{Type: cdcpb.Event_ROLLBACK, Key: []byte(key), StartTs: start}
}

var initialized = &cdcpb.Event_Row{Type: cdcpb.Event_INITIALIZED}

func run(t *testing.T, m *Matcher, rows ...*cdcpb.Event_Row) (string, error) {
	t.Helper()
	var out []string
	err := m.Rows(rows, func(r *cdcpb.Event_Row) {
		if r.Type != cdcpb.Event_COMMITTED {
			t.Fatalf("emitted a %v row", r.Type)
		}
		out = append(out, fmt.Sprintf("%s@%d/%d=%s", r.Key, r.StartTs, r.CommitTs, r.Value))
	})
	return strings.Join(out, " "), err
}

func TestMatcher(t *testing.T) {
	cases := []struct {
		name string
		rows []*cdcpb.Event_Row
		want string
		err  error
	}{
		{"scan then live", []*cdcpb.Event_Row{committed("a", 5, 6, "x"), initialized, pw("b", 10, "y"), commit("b", 10, 11)}, "a@5/6=x b@10/11=y", nil},
		{"at or below checkpoint dropped", []*cdcpb.Event_Row{committed("a", 1, 3, "old"), initialized}, "", nil},
		{"commit before its prewrite during scan is held", []*cdcpb.Event_Row{commit("k", 7, 9), pw("k", 7, "v"), initialized}, "k@7/9=v", nil},
		{"held commit already sent by the scan", []*cdcpb.Event_Row{commit("k", 7, 9), committed("k", 7, 9, "v"), initialized}, "k@7/9=v", nil},
		{"rollback drops the prewrite", []*cdcpb.Event_Row{initialized, pw("k", 7, "v"), rollback("k", 7)}, "", nil},
		{"held rollback applies at init", []*cdcpb.Event_Row{rollback("k", 7), pw("k", 7, "v"), initialized}, "", nil},
		{"heartbeat prewrite keeps the value", []*cdcpb.Event_Row{initialized, pw("k", 7, "v"), pw("k", 7, ""), commit("k", 7, 8)}, "k@7/8=v", nil},
		{"unmatched commit after init", []*cdcpb.Event_Row{initialized, commit("k", 7, 9)}, "", ErrPrewriteNotMatch},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := New(4)
			got, err := run(t, m, c.rows...)
			if !errors.Is(err, c.err) {
				t.Fatalf("err = %v, want %v", err, c.err)
			}
			if got != c.want {
				t.Fatalf("emitted %q, want %q", got, c.want)
			}
		})
	}
}

func TestResolvedTs(t *testing.T) {
	m := New(4)
	if m.Resolve(10) {
		t.Fatal("resolved ts accepted before INITIALIZED")
	}
	if _, err := run(t, m, initialized, pw("k", 12, "v")); err != nil {
		t.Fatal(err)
	}
	if !m.Resolve(10) || m.ResolvedTS() != 10 || m.Resolve(9) {
		t.Fatalf("resolved ts = %d", m.ResolvedTS())
	}
	if m.MinPendingStartTS() != 12 || m.PendingPrewrites() != 1 {
		t.Fatalf("pending = %d min %d", m.PendingPrewrites(), m.MinPendingStartTS())
	}
	if _, err := run(t, m, committed("z", 8, 10, "late")); !errors.Is(err, ErrResolvedTsViolated) {
		t.Fatalf("a commit at the resolved ts must be rejected, got %v", err)
	}
}

// TestOwnCopiesWhatOutlivesTheMessage: rows may refer to a received
// message's buffer, which is reused or collected once the message is
// handled. After Own, the prewrites still waiting (and, during the scan,
// the commits and rollbacks held) no longer refer to it: overwriting the
// buffer changes nothing the matcher later emits. A prewrite matched
// within the message is not copied.
func TestOwnCopiesWhatOutlivesTheMessage(t *testing.T) {
	buf := []byte("k1v1k2v2k3")
	slice := func(i, j int) []byte { return buf[i:j:j] }
	m := New(10)
	first := []*cdcpb.Event_Row{
		{Type: cdcpb.Event_PREWRITE, Key: slice(0, 2), Value: slice(2, 4), StartTs: 20},
		{Type: cdcpb.Event_PREWRITE, Key: slice(4, 6), Value: slice(6, 8), StartTs: 20},
		{Type: cdcpb.Event_COMMIT, Key: slice(8, 10), StartTs: 15, CommitTs: 16}, // held: the scan is on
		{Type: cdcpb.Event_COMMIT, Key: slice(4, 6), StartTs: 20, CommitTs: 21},
	}
	var sameMessage []*cdcpb.Event_Row
	if err := m.Rows(first, func(r *cdcpb.Event_Row) { sameMessage = append(sameMessage, r) }); err != nil {
		t.Fatal(err)
	}
	if len(sameMessage) != 1 || &sameMessage[0].Value[0] != &buf[6] {
		t.Fatalf("the prewrite matched within the message was copied or lost: %v", sameMessage)
	}
	m.Own()
	for i := range buf {
		buf[i] = 'X'
	}
	got, err := run(t, m, pw("k3", 15, "v3"), initialized, commit("k1", 20, 22))
	if err != nil {
		t.Fatal(err)
	}
	if want := "k3@15/16=v3 k1@20/22=v1"; got != want {
		t.Fatalf("after the buffer changed: %q, want %q", got, want)
	}
}
