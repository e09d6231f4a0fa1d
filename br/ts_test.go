package br

import (
	"strings"
	"testing"
	"time"
)

func TestParseTS(t *testing.T) {
	utc8 := time.FixedZone("UTC+8", 8*3600)
	at := func(y int, mo time.Month, d, h, mi, sec, ns int, zone *time.Location) uint64 {
		return ComposeTS(time.Date(y, mo, d, h, mi, sec, ns, zone))
	}
	want := at(2018, 5, 11, 1, 42, 23, 0, utc8)
	minus530 := time.FixedZone("", -(5*3600 + 30*60))
	cases := []struct {
		in   string
		want uint64
		ok   bool
	}{
		// TSO: an unsigned decimal integer, as strconv.ParseUint reads it.
		{"400036290571534337", 400036290571534337, true},
		{"00042", 42, true},
		{"0", 0, false}, // BR: "not given"; refused here
		{"18446744073709551616", 0, false},
		{"-5", 0, false},
		{"+5", 0, false},
		{" 400036290571534337", 0, false}, // no trimming: not a TSO, not a datetime with a zone
		// BR's documented form and TiDB's other zone forms.
		{"2018-05-11 01:42:23+0800", want, true},
		{"2018-05-11 01:42:23 +0800", want, true},
		{"2018-05-11 01:42:23+08:00", want, true},
		{"2018-05-11 01:42:23+08", want, true},
		{"2018-05-10 17:42:23Z", want, true},
		{"2018-05-11T01:42:23+08:00", want, true},
		{"2018-05-10 12:12:23-05:30", at(2018, 5, 10, 12, 12, 23, 0, minus530), true},
		{"2018-05-11 01:42:23+14:00", at(2018, 5, 11, 1, 42, 23, 0, time.FixedZone("", 14*3600)), true},
		// Any punctuation between parts; no separators at all.
		{"2018/05/11 01.42.23+0800", want, true},
		{"2018-05-11 01:42:23.123+0800", at(2018, 5, 11, 1, 42, 23, 123e6, utc8), true},
		{"20180511014223+0800", want, true},
		{"20180511014223.5Z", at(2018, 5, 11, 1, 42, 23, 500e6, time.UTC), true},
		{"180511014223+0800", want, true},
		{"18-05-11 01:42:23+0800", want, true},
		// Fractions: six digits, the seventh rounds, a carry moves the second.
		{"2018-05-11 01:42:23.1234564+08:00", at(2018, 5, 11, 1, 42, 23, 123456e3, utc8), true},
		{"2018-05-11 01:42:23.9999996+08:00", at(2018, 5, 11, 1, 42, 24, 0, utc8), true},
		// No zone, or one TiDB reads as part of the date or time: BR's error.
		{"2018-05-11 01:42:23", 0, false},
		{"2018-05-11", 0, false},
		{"2018-05-11 01:42", 0, false},
		{"2018-05-11 01:42:23 UTC", 0, false},
		{"2018-05-11 01:42:23z", 0, false},
		// Zones TiDB refuses.
		{"2018-05-11 01:42:23+15:00", 0, false},
		{"2018-05-11 01:42:23+14:30", 0, false},
		{"2018-05-11 01:42:23-00:00", 0, false},
		// Not a date.
		{"2018-02-30 01:42:23+0800", 0, false},
		{"2018-13-01 01:42:23+0800", 0, false},
		{"2018-05-11 24:00:00+0800", 0, false},
		{"yesterday", 0, false},
		{"", 0, false},
		// TiDB's TIMESTAMP range.
		{"1970-01-01 00:00:01Z", at(1970, 1, 1, 0, 0, 1, 0, time.UTC), true},
		{"1970-01-01 00:00:00Z", 0, false},
		{"1969-12-31 23:59:59Z", 0, false},
		{"2038-01-19 03:14:07.999999Z", at(2038, 1, 19, 3, 14, 7, 999999e3, time.UTC), true},
		{"2038-01-19 03:14:08Z", 0, false},
		{"2099-01-01 00:00:00+0800", 0, false},
	}
	for _, c := range cases {
		got, err := ParseTS(c.in, utc8)
		if c.ok != (err == nil) {
			t.Errorf("ParseTS(%q) err = %v, want ok=%v", c.in, err, c.ok)
			continue
		}
		if c.ok && got != c.want {
			t.Errorf("ParseTS(%q) = %d (%s), want %d (%s)", c.in, got, FormatTS(got, time.UTC), c.want, FormatTS(c.want, time.UTC))
		}
	}
	if _, err := ParseTS("2018-05-11 01:42:23", utc8); err == nil || !strings.Contains(err.Error(), "must set timezone") {
		t.Errorf("datetime without a zone: %v, want BR's \"must set timezone\"", err)
	}
}

func TestTSRoundTrip(t *testing.T) {
	at := time.Date(2024, 6, 20, 8, 38, 49, 436e6, time.UTC)
	ts := ComposeTS(at)
	if got := FormatTS(ts, time.UTC); got != "2024-06-20 08:38:49.436 +0000" {
		t.Fatalf("FormatTS = %q", got)
	}
	if !PhysicalTime(ts | 12345).Equal(at) {
		t.Fatalf("logical bits leaked into the physical time")
	}
	if g := Gap(at.Add(90*time.Second+400*time.Millisecond), ts); g != 90*time.Second {
		t.Fatalf("Gap = %v", g)
	}
	// Past 2262 (where nanoseconds since 1970 overflow int64) the TSO
	// still holds the time.
	far := time.Date(2270, 1, 1, 0, 0, 0, 0, time.UTC)
	if got := PhysicalTime(ComposeTS(far)); !got.Equal(far) {
		t.Fatalf("ComposeTS(%v) reads back as %v", far, got)
	}
}
