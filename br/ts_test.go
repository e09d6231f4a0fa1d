package br

import (
	"testing"
	"time"
)

func TestParseTS(t *testing.T) {
	utc8 := time.FixedZone("UTC+8", 8*3600)
	want := ComposeTS(time.Date(2018, 5, 11, 1, 42, 23, 0, utc8))
	cases := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"400036290571534337", 400036290571534337, true},
		{"2018-05-11 01:42:23+0800", want, true},
		{"2018-05-11 01:42:23 +0800", want, true},
		{"2018-05-11 01:42:23+08:00", want, true},
		{"2018-05-11T01:42:23+08:00", want, true},
		{"2018-05-11 01:42:23", 0, false}, // no zone: BR refuses it
		{"2018-05-11", 0, false},
		{"0", 0, false},
		{"", 0, false},
		{"yesterday", 0, false},
		{"99999999999999999999999", 0, false},
		{"-5", 0, false},
		{"1969-01-01 00:00:00", 0, false},
	}
	for _, c := range cases {
		got, err := ParseTS(c.in, utc8)
		if c.ok != (err == nil) {
			t.Errorf("ParseTS(%q) err = %v, want ok=%v", c.in, err, c.ok)
			continue
		}
		if c.ok && got != c.want {
			t.Errorf("ParseTS(%q) = %d, want %d", c.in, got, c.want)
		}
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
}
