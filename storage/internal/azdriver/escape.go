package azdriver

import (
	"fmt"
	"strconv"
	"strings"
)

// EscapeKey is the blob name for key, escaped as gocloud's azureblob
// escapes it (v0.47.0), so blobs it wrote keep their names and the
// storage's own uploads (azureBackend) land where the reads look: the
// characters Azure mishandles (control characters, '"', '#', '%', '?',
// '\\'), a trailing "/", the "/" of "../", and the start of anything that
// reads as an escape itself become "__0x<hex>__".
func EscapeKey(key string) string { return escape(key, false) }

// escapePrefix escapes a list prefix or delimiter: as a key, except that
// a trailing "/" is meant.
func escapePrefix(p string) string { return escape(p, true) }

func escape(s string, isPrefix bool) string {
	runes := []rune(s)
	var at []int // the runes to escape, judged on the original
	for i := range runes {
		if mustEscape(runes, i, isPrefix) {
			at = append(at, i)
		}
	}
	if len(at) == 0 {
		return s
	}
	var sb strings.Builder
	sb.Grow(len(s) + 10*len(at))
	for i, c := range runes {
		if len(at) > 0 && at[0] == i {
			fmt.Fprintf(&sb, "__%#x__", c)
			at = at[1:]
			continue
		}
		sb.WriteRune(c)
	}
	return sb.String()
}

func mustEscape(r []rune, i int, isPrefix bool) bool {
	c := r[i]
	switch {
	case c < 32, c == '"', c == '#', c == '%', c == '?', c == '\\', c == 127:
		return true
	case !isPrefix && i == len(r)-1 && c == '/':
		return true
	case i > 1 && c == '/' && r[i-1] == '.' && r[i-2] == '.':
		return true
	}
	_, _, ok := unescapeAt(r, i)
	return ok
}

// unescapeKey reverses EscapeKey.
func unescapeKey(s string) string {
	if !strings.Contains(s, "__0x") {
		return s
	}
	r := []rune(s)
	var sb strings.Builder
	sb.Grow(len(s))
	for i := 0; i < len(r); i++ {
		if c, end, ok := unescapeAt(r, i); ok {
			sb.WriteRune(c)
			i = end
			continue
		}
		sb.WriteRune(r[i])
	}
	return sb.String()
}

// unescapeAt reads "__0x<hex>__" at r[i:]: the rune it stands for and the
// index of its last '_'.
func unescapeAt(r []rune, i int) (rune, int, bool) {
	const head = "__0x"
	for k := 0; k < len(head); k++ {
		if i+k >= len(r) || r[i+k] != rune(head[k]) {
			return 0, 0, false
		}
	}
	j := i + len(head)
	start := j
	for j < len(r) && r[j] != '_' {
		j++
	}
	if j+1 >= len(r) || r[j+1] != '_' {
		return 0, 0, false
	}
	v, err := strconv.ParseInt(string(r[start:j]), 16, 32)
	if err != nil {
		return 0, 0, false
	}
	return rune(v), j + 1, true
}
