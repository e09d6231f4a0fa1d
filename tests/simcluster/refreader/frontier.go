package refreader

import "bytes"

// span is a range of encoded keys [start, end); an empty end is unbounded.
type span struct {
	start, end []byte
}

func (s span) String() string { return string(s.start) + "…" + string(s.end) }

// endLess compares two range ends, where empty means +∞.
func endLess(a, b []byte) bool {
	if len(a) == 0 {
		return false
	}
	if len(b) == 0 {
		return true
	}
	return bytes.Compare(a, b) < 0
}

// clip returns a ∩ b and whether it is non-empty.
func clip(a, b span) (span, bool) {
	out := a
	if bytes.Compare(b.start, out.start) > 0 {
		out.start = b.start
	}
	if endLess(b.end, out.end) {
		out.end = b.end
	}
	if len(out.end) > 0 && bytes.Compare(out.start, out.end) >= 0 {
		return span{}, false
	}
	return out, true
}

// piece is a part of the frontier with the resolved ts it reached.
type piece struct {
	span
	ts uint64
}

// frontier is a deliberately naive resolved-ts map over a span: a sorted
// list of pieces, split on demand. It is the reader's own (not the agent's
// spans package), so that the oracle shares no code with what it judges.
type frontier struct {
	pieces []piece
}

func newFrontier(s span, ts uint64) *frontier {
	return &frontier{pieces: []piece{{s, ts}}}
}

// splitAt makes k a piece boundary.
func (f *frontier) splitAt(k []byte) {
	if len(k) == 0 {
		return
	}
	for i, p := range f.pieces {
		if bytes.Compare(p.start, k) < 0 && endLess(k, p.end) {
			left := piece{span{p.start, k}, p.ts}
			right := piece{span{k, p.end}, p.ts}
			f.pieces = append(f.pieces[:i], append([]piece{left, right}, f.pieces[i+1:]...)...)
			return
		}
	}
}

// advance raises the resolved ts of every piece inside s to at least ts.
func (f *frontier) advance(s span, ts uint64) {
	f.splitAt(s.start)
	f.splitAt(s.end)
	for i := range f.pieces {
		if _, ok := clip(f.pieces[i].span, s); ok && f.pieces[i].ts < ts {
			f.pieces[i].ts = ts
		}
	}
}

// min returns the smallest resolved ts over the pieces overlapping s.
func (f *frontier) min(s span) uint64 {
	var m uint64
	found := false
	for _, p := range f.pieces {
		if _, ok := clip(p.span, s); ok && (!found || p.ts < m) {
			m, found = p.ts, true
		}
	}
	return m
}
