package rangeread

import (
	"errors"
	"io"
	"strings"
	"testing"

	"gocloud.dev/blob/driver"
)

type body struct {
	io.Reader
	closed bool
}

func (b *body) Close() error { b.closed = true; return nil }

func TestNew(t *testing.T) {
	for _, c := range []struct {
		name           string
		sent           string
		offset, length int64
		whole          bool
		want           string
	}{
		{"the range as asked", "cde", 2, 3, false, "cde"},
		{"to the end", "cdefg", 2, -1, false, "cdefg"},
		{"a server that ignored Range", "abcdefg", 2, 3, true, "cde"},
		{"ignored Range, to the end", "abcdefg", 2, -1, true, "cdefg"},
		{"more than asked", "cdefg", 2, 3, false, "cde"},
	} {
		b := &body{Reader: strings.NewReader(c.sent)}
		r, err := New(b, driver.ReaderAttributes{Size: 7}, c.offset, c.length, c.whole)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got, err := io.ReadAll(r)
		if err != nil || string(got) != c.want || r.Attributes().Size != 7 {
			t.Errorf("%s: read %q (%v), size %d; want %q, 7", c.name, got, err, r.Attributes().Size, c.want)
		}
		if r.Close(); !b.closed {
			t.Errorf("%s: Close did not close the body", c.name)
		}
	}
	// A whole object shorter than the offset: an error, and the body closed.
	b := &body{Reader: strings.NewReader("ab")}
	if _, err := New(b, driver.ReaderAttributes{}, 5, 1, true); !errors.Is(err, io.EOF) || !b.closed {
		t.Errorf("skip past the end: %v, closed %v; want EOF and the body closed", err, b.closed)
	}
}

func TestTotalSize(t *testing.T) {
	for in, want := range map[string]int64{"bytes 10-14/27": 27, "bytes 0-0/1": 1, "bytes */0": 0} {
		if n, ok := TotalSize(in); !ok || n != want {
			t.Errorf("TotalSize(%q) = %d, %v; want %d", in, n, ok, want)
		}
	}
	for _, in := range []string{"", "bytes 0-1/*", "garbage"} {
		if n, ok := TotalSize(in); ok {
			t.Errorf("TotalSize(%q) = %d, true; want false", in, n)
		}
	}
	if r := Empty(driver.ReaderAttributes{Size: 3}); r.Attributes().Size != 3 {
		t.Error("Empty lost the attributes")
	}
}
