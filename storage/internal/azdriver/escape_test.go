package azdriver

import "testing"

// TestEscape: the names gocloud's azureblob (v0.47.0) gave blobs, so
// blobs it wrote are still found, and every escaped name reads back.
func TestEscape(t *testing.T) {
	for _, c := range []struct{ key, blob string }{
		{"plain/name.log", "plain/name.log"},
		{`odd #1 100% "q"? back\slash`, `odd __0x23__1 100__0x25__ __0x22__q__0x22____0x3f__ back__0x5c__slash`},
		{"dir/", "dir__0x2f__"},
		{"a/../b", "a/..__0x2f__b"},
		{"tab\there\x7f", "tab__0x9__here__0x7f__"},
		{"x__0x2f__y", "x__0x5f___0x2f__y"}, // what reads as an escape is escaped itself
		{"ü-ñ/ok", "ü-ñ/ok"},
	} {
		if got := EscapeKey(c.key); got != c.blob {
			t.Errorf("EscapeKey(%q) = %q, want %q", c.key, got, c.blob)
		}
		if got := unescapeKey(c.blob); got != c.key {
			t.Errorf("unescapeKey(%q) = %q, want %q", c.blob, got, c.key)
		}
	}
	if got := escapePrefix("dir/"); got != "dir/" {
		t.Errorf("a prefix's trailing slash escaped: %q", got)
	}
}
