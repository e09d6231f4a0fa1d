// Package spans keeps a timestamp per key range: the checkpoint of each part
// of a task's key space. Checkpoints are kept by key range rather than by
// region id so they survive splits, merges and leader moves: a new region
// inherits the checkpoint of the keys it covers.
//
// Keys are raw byte strings compared lexicographically; an empty end key
// means "to the end of the key space".
package spans

import (
	"bytes"
	"fmt"
	"sort"
	"strings"
)

// Span is a key range [Start, End); an empty End is unbounded.
type Span struct {
	Start, End []byte
}

func (s Span) String() string { return fmt.Sprintf("[%q, %q)", s.Start, s.End) }

// Valid reports whether the span is non-empty.
func (s Span) Valid() bool { return len(s.End) == 0 || bytes.Compare(s.Start, s.End) < 0 }

// segment is a maximal run of keys with one ts.
type segment struct {
	start, end []byte // end empty = unbounded (only the last segment)
	ts         uint64
}

// Map is a set of disjoint covered spans, each with a ts. Keys outside every
// covered span are "holes": Min over a range that touches a hole reports it.
// The zero Map covers nothing. Not safe for concurrent use.
type Map struct {
	segs []segment // sorted by start, disjoint
}

// New returns a Map covering the given spans with ts.
func New(covered []Span, ts uint64) *Map {
	m := &Map{}
	for _, s := range covered {
		m.Cover(s, ts)
	}
	return m
}

// endLess compares end keys where empty means +inf.
func endLess(a, b []byte) bool {
	switch {
	case len(a) == 0:
		return false
	case len(b) == 0:
		return true
	default:
		return bytes.Compare(a, b) < 0
	}
}

// startBeforeEnd reports start < end with empty end = +inf.
func startBeforeEnd(start, end []byte) bool {
	return len(end) == 0 || bytes.Compare(start, end) < 0
}

// splitAt makes key a segment boundary if it falls strictly inside a segment.
func (m *Map) splitAt(key []byte) {
	i := sort.Search(len(m.segs), func(i int) bool { return startBeforeEnd(key, m.segs[i].end) })
	if i == len(m.segs) {
		return
	}
	s := m.segs[i]
	if bytes.Compare(s.start, key) >= 0 {
		return
	}
	left := segment{start: s.start, end: key, ts: s.ts}
	right := segment{start: key, end: s.end, ts: s.ts}
	m.segs = append(m.segs, segment{})
	copy(m.segs[i+2:], m.segs[i+1:])
	m.segs[i], m.segs[i+1] = left, right
}

// overlapping returns the index range [lo, hi) of segments that intersect s.
func (m *Map) overlapping(s Span) (int, int) {
	lo := sort.Search(len(m.segs), func(i int) bool { return startBeforeEnd(s.Start, m.segs[i].end) })
	hi := lo
	for hi < len(m.segs) && startBeforeEnd(m.segs[hi].start, s.End) {
		hi++
	}
	return lo, hi
}

// Cover adds s to the covered key space with ts, replacing whatever ts the
// already covered parts of s had.
func (m *Map) Cover(s Span, ts uint64) {
	if !s.Valid() {
		return
	}
	m.splitAt(s.Start)
	if len(s.End) > 0 {
		m.splitAt(s.End)
	}
	lo, hi := m.overlapping(s)
	repl := segment{start: clone(s.Start), end: clone(s.End), ts: ts}
	m.segs = append(m.segs[:lo], append([]segment{repl}, m.segs[hi:]...)...)
	m.merge(lo, lo+1)
}

// Advance raises the ts of every covered key in s to at least ts. Holes
// stay holes: advancing never extends coverage.
func (m *Map) Advance(s Span, ts uint64) {
	if !s.Valid() {
		return
	}
	m.splitAt(s.Start)
	if len(s.End) > 0 {
		m.splitAt(s.End)
	}
	lo, hi := m.overlapping(s)
	for i := lo; i < hi; i++ {
		m.segs[i].ts = max(m.segs[i].ts, ts)
	}
	m.merge(lo, hi)
}

// Advanced is one span and the ts AdvanceAll raises it to.
type Advanced struct {
	Span Span
	TS   uint64
}

// AdvanceAll is Advance of every item, in one pass over the map. A flush
// advances every observed region at once, and each Advance copies the
// segments after the one it splits: at 100,000 regions one flush spent
// about a minute in memmove.
func (m *Map) AdvanceAll(items []Advanced) {
	its := make([]Advanced, 0, len(items))
	for _, it := range items {
		if it.Span.Valid() {
			its = append(its, it)
		}
	}
	sort.Slice(its, func(i, j int) bool { return bytes.Compare(its[i].Span.Start, its[j].Span.Start) < 0 })
	for k := 1; k < len(its); k++ {
		if prev := its[k-1].Span.End; len(prev) == 0 || bytes.Compare(prev, its[k].Span.Start) > 0 {
			// Overlapping items (never from one flush): one at a time.
			for _, it := range its {
				m.Advance(it.Span, it.TS)
			}
			return
		}
	}
	out := make([]segment, 0, len(m.segs)+2*len(its))
	emit := func(start, end []byte, ts uint64) {
		if n := len(out); n > 0 && out[n-1].ts == ts && len(out[n-1].end) > 0 && bytes.Equal(out[n-1].end, start) {
			out[n-1].end = end
			return
		}
		out = append(out, segment{start: start, end: end, ts: ts})
	}
	j := 0
	for _, seg := range m.segs {
		cur, done := seg.start, false // done: cur has reached seg.end
		for j < len(its) && !done {
			it := its[j]
			if !startBeforeEnd(it.Span.Start, seg.end) {
				break // the item starts after this segment
			}
			if len(it.Span.End) > 0 && bytes.Compare(it.Span.End, cur) <= 0 {
				j++ // the item lies wholly before cur (in a hole)
				continue
			}
			if bytes.Compare(it.Span.Start, cur) > 0 {
				emit(cur, it.Span.Start, seg.ts)
				cur = it.Span.Start
			}
			if endLess(it.Span.End, seg.end) {
				emit(cur, it.Span.End, max(seg.ts, it.TS))
				cur = it.Span.End
				j++
				continue
			}
			emit(cur, seg.end, max(seg.ts, it.TS))
			done = true
			if !endLess(seg.end, it.Span.End) {
				j++ // the item ends with the segment
			}
		}
		if !done {
			emit(cur, seg.end, seg.ts)
		}
	}
	m.segs = out
}

// merge joins adjacent segments with equal ts in the window [lo-1, hi] that
// just changed, keeping the representation small without touching the rest.
func (m *Map) merge(lo, hi int) {
	a, b := max(lo-1, 0), min(hi+1, len(m.segs))
	out := make([]segment, 0, b-a)
	for _, s := range m.segs[a:b] {
		if n := len(out); n > 0 && out[n-1].ts == s.ts && len(out[n-1].end) > 0 && bytes.Equal(out[n-1].end, s.start) {
			out[n-1].end = s.end
			continue
		}
		out = append(out, s)
	}
	if len(out) == b-a {
		return
	}
	m.segs = append(m.segs[:a], append(out, m.segs[b:]...)...)
}

// Min returns the smallest ts over s. ok is false when some key of s is not
// covered (a hole holds any global checkpoint back) or the map is empty.
func (m *Map) Min(s Span) (ts uint64, ok bool) {
	if !s.Valid() {
		return 0, false
	}
	lo, hi := m.overlapping(s)
	if lo == hi {
		return 0, false
	}
	cursor := s.Start
	first := true
	for i := lo; i < hi; i++ {
		seg := m.segs[i]
		if bytes.Compare(seg.start, cursor) > 0 {
			return 0, false // a gap before this segment
		}
		if first || seg.ts < ts {
			ts, first = seg.ts, false
		}
		if len(seg.end) == 0 {
			return ts, true
		}
		cursor = seg.end
	}
	if endLess(cursor, s.End) {
		return 0, false // uncovered tail
	}
	return ts, true
}

// Each calls fn for each maximal covered run in key order.
func (m *Map) Each(fn func(s Span, ts uint64)) {
	for _, seg := range m.segs {
		fn(Span{Start: seg.start, End: seg.end}, seg.ts)
	}
}

// Len is the number of segments (for tests and metrics).
func (m *Map) Len() int { return len(m.segs) }

func (m *Map) String() string {
	var b strings.Builder
	for _, s := range m.segs {
		fmt.Fprintf(&b, "[%q,%q)=%d ", s.start, s.end, s.ts)
	}
	return strings.TrimSpace(b.String())
}

func clone(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}

// Coalesce sorts spans and joins overlapping or touching ones, so a range
// that failed in pieces is placed again as few regions.
func Coalesce(in []Span) []Span {
	if len(in) < 2 {
		return in
	}
	sort.Slice(in, func(i, j int) bool { return bytes.Compare(in[i].Start, in[j].Start) < 0 })
	out := []Span{in[0]}
	for _, sp := range in[1:] {
		last := &out[len(out)-1]
		if len(last.End) == 0 {
			break // the last span already runs to the end
		}
		if bytes.Compare(sp.Start, last.End) <= 0 {
			if len(sp.End) == 0 || bytes.Compare(sp.End, last.End) > 0 {
				last.End = sp.End
			}
			continue
		}
		out = append(out, sp)
	}
	return out
}

// Clip intersects s with within.
func Clip(s, within Span) Span {
	out := s
	if bytes.Compare(within.Start, out.Start) > 0 {
		out.Start = within.Start
	}
	if len(within.End) > 0 && (len(out.End) == 0 || bytes.Compare(within.End, out.End) < 0) {
		out.End = within.End
	}
	return out
}
