package spans

import (
	"math/rand"
	"testing"
)

// naive is the brute-force model: a ts (or hole) for each key of a tiny
// alphabet. Keys are single bytes 'a'..'a'+n-1; end "" means past the last.
type naive struct {
	n   int
	ts  []uint64
	cov []bool
}

func newNaive(n int) *naive { return &naive{n: n, ts: make([]uint64, n), cov: make([]bool, n)} }

func (v *naive) idx(s Span) (int, int) {
	lo := 0
	if len(s.Start) > 0 {
		lo = int(s.Start[0] - 'a')
	}
	hi := v.n
	if len(s.End) > 0 {
		hi = int(s.End[0] - 'a')
	}
	return lo, hi
}

func (v *naive) cover(s Span, ts uint64) {
	lo, hi := v.idx(s)
	for i := lo; i < hi; i++ {
		v.ts[i], v.cov[i] = ts, true
	}
}

func (v *naive) advance(s Span, ts uint64) {
	lo, hi := v.idx(s)
	for i := lo; i < hi; i++ {
		if v.cov[i] && v.ts[i] < ts {
			v.ts[i] = ts
		}
	}
}

func (v *naive) min(s Span) (uint64, bool) {
	lo, hi := v.idx(s)
	if lo >= hi {
		return 0, false
	}
	var m uint64
	for i := lo; i < hi; i++ {
		if !v.cov[i] {
			return 0, false
		}
		if i == lo || v.ts[i] < m {
			m = v.ts[i]
		}
	}
	return m, true
}

func randSpan(r *rand.Rand, n int) Span {
	a, b := r.Intn(n), r.Intn(n+1)
	if a > b {
		a, b = b, a
	}
	if a == b {
		b = a + 1
	}
	s := Span{Start: []byte{byte('a' + a)}}
	if b < n {
		s.End = []byte{byte('a' + b)}
	}
	return s
}

// checkSegments asserts the representation invariants: segments sorted,
// disjoint, and merged where neighbours share a ts.
func checkSegments(t *testing.T, seed int64, m *Map) {
	t.Helper()
	for i := 1; i < len(m.segs); i++ {
		prev, cur := m.segs[i-1], m.segs[i]
		if len(prev.end) == 0 || string(prev.end) > string(cur.start) {
			t.Fatalf("seed %d: overlapping segments %s", seed, m)
		}
		if string(prev.end) == string(cur.start) && prev.ts == cur.ts {
			t.Fatalf("seed %d: unmerged segments %s", seed, m)
		}
	}
}

// TestAgainstNaive checks thousands of random operation sequences against
// the per-key model.
func TestAgainstNaive(t *testing.T) {
	seed := rand.Int63()
	r := rand.New(rand.NewSource(seed))
	const n = 12
	for round := 0; round < 3000; round++ {
		m, v := &Map{}, newNaive(n)
		for op := 0; op < 20; op++ {
			s := randSpan(r, n)
			ts := uint64(r.Intn(50))
			switch r.Intn(3) {
			case 0:
				m.Cover(s, ts)
				v.cover(s, ts)
			case 1:
				m.Advance(s, ts)
				v.advance(s, ts)
			}
			q := randSpan(r, n)
			gotTS, gotOK := m.Min(q)
			wantTS, wantOK := v.min(q)
			if gotOK != wantOK || (gotOK && gotTS != wantTS) {
				t.Fatalf("seed %d round %d: Min(%v) = %d,%v; want %d,%v\nmap: %s", seed, round, q, gotTS, gotOK, wantTS, wantOK, m)
			}
			checkSegments(t, seed, m)
		}
	}
}

// TestAdvanceAllAgainstNaive: AdvanceAll of random batches (disjoint ones,
// as a flush gives, and overlapping ones) leaves the same keys with the
// same ts as the per-key model advancing each item, on random maps with holes.
func TestAdvanceAllAgainstNaive(t *testing.T) {
	seed := rand.Int63()
	r := rand.New(rand.NewSource(seed))
	const n = 12
	for round := 0; round < 3000; round++ {
		m, v := &Map{}, newNaive(n)
		for op := 0; op < 6; op++ {
			s, ts := randSpan(r, n), uint64(r.Intn(50))
			if r.Intn(4) > 0 {
				m.Cover(s, ts)
				v.cover(s, ts)
			}
		}
		var items []Advanced
		if r.Intn(2) == 0 { // disjoint: consecutive pieces of the key space, some skipped
			at := 0
			for at < n {
				next := at + 1 + r.Intn(4)
				s := Span{Start: []byte{byte('a' + at)}}
				if next < n {
					s.End = []byte{byte('a' + next)}
				}
				if r.Intn(3) > 0 {
					items = append(items, Advanced{Span: s, TS: uint64(r.Intn(60))})
				}
				at = next
			}
			r.Shuffle(len(items), func(i, j int) { items[i], items[j] = items[j], items[i] })
		} else {
			for k := r.Intn(5); k >= 0; k-- {
				items = append(items, Advanced{Span: randSpan(r, n), TS: uint64(r.Intn(60))})
			}
		}
		before := m.String()
		m.AdvanceAll(items)
		for _, it := range items {
			v.advance(it.Span, it.TS)
		}
		for a := 0; a < n; a++ {
			for b := a + 1; b <= n; b++ {
				q := Span{Start: []byte{byte('a' + a)}}
				if b < n {
					q.End = []byte{byte('a' + b)}
				}
				gotTS, gotOK := m.Min(q)
				wantTS, wantOK := v.min(q)
				if gotOK != wantOK || (gotOK && gotTS != wantTS) {
					t.Fatalf("seed %d round %d: after AdvanceAll(%v) on %s: Min(%v) = %d,%v; want %d,%v\nmap: %s", seed, round, items, before, q, gotTS, gotOK, wantTS, wantOK, m)
				}
			}
		}
		checkSegments(t, seed, m)
	}
}

func TestHolesHoldBack(t *testing.T) {
	m := New([]Span{{Start: []byte("m"), End: []byte("n")}, {Start: []byte("t"), End: []byte("u")}}, 10)
	if ts, ok := m.Min(Span{Start: []byte("m"), End: []byte("n")}); !ok || ts != 10 {
		t.Fatalf("Min over a covered span = %d,%v", ts, ok)
	}
	if _, ok := m.Min(Span{Start: []byte("m"), End: []byte("u")}); ok {
		t.Fatal("Min across the hole [n,t) must report it")
	}
	m.Advance(Span{Start: []byte("t"), End: []byte("t5")}, 20)
	if ts, _ := m.Min(Span{Start: []byte("t"), End: []byte("u")}); ts != 10 {
		t.Fatalf("partial advance moved the minimum: %d", ts)
	}
	m.Advance(Span{Start: []byte("t5"), End: []byte("u")}, 30)
	if ts, _ := m.Min(Span{Start: []byte("t"), End: []byte("u")}); ts != 20 {
		t.Fatalf("Min = %d, want 20", ts)
	}
	m.Advance(Span{Start: []byte("t"), End: []byte("u")}, 5) // never backwards
	if ts, _ := m.Min(Span{Start: []byte("t"), End: []byte("u")}); ts != 20 {
		t.Fatalf("advance moved backwards: %d", ts)
	}
}

func TestUnboundedSpans(t *testing.T) {
	m := New([]Span{{}}, 7) // the whole key space
	if ts, ok := m.Min(Span{}); !ok || ts != 7 {
		t.Fatalf("Min(all) = %d,%v", ts, ok)
	}
	m.Advance(Span{Start: nil, End: []byte("k")}, 9)
	if ts, ok := m.Min(Span{End: []byte("k")}); !ok || ts != 9 {
		t.Fatalf("Min([,k)) = %d,%v", ts, ok)
	}
	if ts, ok := m.Min(Span{Start: []byte("k")}); !ok || ts != 7 {
		t.Fatalf("Min([k,)) = %d,%v", ts, ok)
	}
	m2 := New([]Span{{Start: []byte("a")}}, 3)
	if _, ok := m2.Min(Span{}); ok {
		t.Fatal("keys below \"a\" are a hole")
	}
}

func BenchmarkAdvance10KRegions(b *testing.B) {
	m := New([]Span{{}}, 1)
	keys := make([][]byte, 10001)
	for i := range keys {
		keys[i] = []byte{byte(i >> 8), byte(i)}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := i % 10000
		m.Advance(Span{Start: keys[r], End: keys[r+1]}, uint64(i+2))
	}
}

// BenchmarkAdvanceAll100KRegions: one flush's advance of 100,000 regions
// covering the key space, per flush.
func BenchmarkAdvanceAll100KRegions(b *testing.B) {
	const n = 100000
	m := New([]Span{{}}, 1)
	items := make([]Advanced, n)
	for i := range items {
		items[i].Span = Span{Start: []byte{byte(i >> 16), byte(i >> 8), byte(i)}, End: []byte{byte((i + 1) >> 16), byte((i + 1) >> 8), byte(i + 1)}}
	}
	items[0].Span.Start, items[n-1].Span.End = nil, nil
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for k := range items {
			items[k].TS = uint64(i+2) + uint64(k%3) // regions resolved at different ts
		}
		m.AdvanceAll(items)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/region")
}

func TestCoalesceAndClip(t *testing.T) {
	got := Coalesce([]Span{{Start: []byte("c"), End: []byte("d")}, {Start: []byte("a"), End: []byte("b")}, {Start: []byte("b"), End: []byte("c")}, {Start: []byte("x")}, {Start: []byte("y"), End: []byte("z")}})
	if len(got) != 2 || string(got[0].Start) != "a" || string(got[0].End) != "d" || string(got[1].Start) != "x" || len(got[1].End) != 0 {
		t.Fatalf("Coalesce = %v", got)
	}
	c := Clip(Span{Start: []byte("a")}, Span{Start: []byte("c"), End: []byte("f")})
	if string(c.Start) != "c" || string(c.End) != "f" {
		t.Fatalf("Clip = %v", c)
	}
	if Clip(Span{Start: []byte("a"), End: []byte("b")}, Span{Start: []byte("c"), End: []byte("f")}).Valid() {
		t.Fatal("disjoint spans clip to an empty span")
	}
}
