package logfile

import (
	"strings"
	"testing"
	"time"
)

func TestMetaNames(t *testing.T) {
	m := MetaName{FlushTS: 0x1234, StoreID: 4, MinBeginTS: 7, MinTS: 8, MaxTS: 0xABC, Flags: FlagNoMetaFiles, HasFlags: true, Tags: "dlup"}
	const want = "v1/backupmeta/00000000000012340000000000000004-d0000000000000007l0000000000000008u0000000000000ABCp0000000000000001.meta"
	if got := FormatMetaName(m); got != want || m.Format() != want {
		t.Fatalf("meta name %s, want %s", got, want)
	}
	back, err := ParseMetaName(want)
	if err != nil || back != m {
		t.Fatalf("parse %s: %+v %v", want, back, err)
	}
	// The agent's names add the lineage tags and the checksum.
	linked := m
	linked.Linked, linked.Lineage = true, Lineage{PrevFlushTS: 0x1233, ClusterID: 0x7000000000000001, TaskStartTS: 0x1000}
	linked.HasChecksum, linked.Checksum, linked.Tags = true, 0xFEDCBA9876543210, "dlupbcsh"
	const wantLinked = "v1/backupmeta/00000000000012340000000000000004-d0000000000000007l0000000000000008u0000000000000ABCp0000000000000001" +
		"b0000000000001233c7000000000000001s0000000000001000hFEDCBA9876543210.meta"
	if got := linked.Format(); got != wantLinked {
		t.Fatalf("linked name %s, want %s", got, wantLinked)
	}
	if back, err := ParseMetaName(wantLinked); err != nil || back != linked {
		t.Fatalf("parse %s: %+v %v", wantLinked, back, err)
	}
	// Part of the lineage is no lineage: the checks judge such a name.
	partial, err := ParseMetaName(strings.Replace(wantLinked, "c7000", "x7000", 1))
	if err != nil || partial.Linked || partial.Lineage != (Lineage{}) || partial.Tags != "dlupbxsh" {
		t.Fatalf("partial lineage: %+v %v", partial, err)
	}
	// What BR's backupmetas.ParseName accepts, and what it rejects.
	accept := map[string]MetaName{
		// no directory, lower-case hex, tags in another order, no p,
		// unknown tags (letters and digits) ignored
		"00000000000012340000000000000004-u0000000000000abcl0000000000000008x0000000000000000d0000000000000007.meta":               {FlushTS: 0x1234, StoreID: 4, MinBeginTS: 7, MinTS: 8, MaxTS: 0xabc, Tags: "ulxd"},
		"v1/backupmeta/00000000000000010000000000000002-d0000000000000003l0000000000000004u00000000000000059FFFFFFFFFFFFFFFF.meta": {FlushTS: 1, StoreID: 2, MinBeginTS: 3, MinTS: 4, MaxTS: 5, Tags: "dlu9"},
		// the legacy flush-minbegin-min-max form
		"v1/backupmeta/0000000000000010-0000000000000001-0000000000000002-00000000000000ff.meta": {FlushTS: 16, MinBeginTS: 1, MinTS: 2, MaxTS: 255, Legacy: true},
	}
	for name, want := range accept {
		got, err := ParseMetaName(name)
		if err != nil || got != want {
			t.Errorf("ParseMetaName(%s) = %+v, %v; want %+v", name, got, err, want)
		}
	}
	for _, bad := range []string{
		"v1/backupmeta/00000000000012340000000000000004-d0000000000000007.meta",                                                    // lacks l, u
		"v1/backupmeta/00000000000012340000000000000004-d0000000000000007l0000000000000008u0000000000000009d0000000000000001.meta", // duplicate d
		"v1/backupmeta/00000000000012340000000000000004-d0000000000000007l0000000000000008u000000000000000.meta",                   // short value
		"v1/backupmeta/00000000000012340000000000000004-d0000000000000007l0000000000000008u000000000000000G.meta",                  // not hex
		"v1/backupmeta/00000000000012340000000000000004-d0000000000000007l0000000000000008-0000000000000009.meta",                  // tag '-'
		"v1/backupmeta/0000000000001234000000000000004-d0000000000000007l0000000000000008u0000000000000009.meta",                   // 31 digits
		"v1/backupmeta/00000000000012340000000000000004-d0000000000000007l0000000000000008u0000000000000009",                       // no .meta
		"v1/backupmeta/0000000000000010-0000000000000001-0000000000000002.meta",                                                    // legacy, 3 parts
		"v1/backupmeta/0000000000000010-0000000000000001-0000000000000002-0000000000000003-0000000000000004.meta",
		"v1/backupmeta/437225815185129473-0f6b5e79-a7c8-4b31-8f3b-0b4a5a1c2d3e.meta", // ≤ v8.5.2 {resolved}-{uuid}
		"v1/backupmeta/+000000000001234-0000000000000001-0000000000000002-0000000000000003.meta",
	} {
		if m, err := ParseMetaName(bad); err == nil {
			t.Errorf("ParseMetaName(%s) = %+v, want an error", bad, m)
		}
	}
	// Tagged names sort by flush ts, then store: upper-case fixed width.
	a := MetaName{FlushTS: 9, StoreID: 0xff}.Format()
	b := MetaName{FlushTS: 10, StoreID: 1}.Format()
	if !(a < b) {
		t.Errorf("%s should sort before %s", a, b)
	}
}

func TestDataNames(t *testing.T) {
	at := time.Date(2024, 6, 20, 23, 59, 59, 999e6, time.UTC)
	d := DataName{StoreID: 3, MinTS: 123, MaxTS: tso(at, 5), ID: "f0251bd5-1441-499a-8f53-adc0d1057a73"}
	if got := FormatDataName(d); got != "v1/20240620/23/3/123-f0251bd5-1441-499a-8f53-adc0d1057a73.log" {
		t.Fatalf("data name %s", got)
	}
	d.Schema = true
	name := d.Format()
	if name != "v1/20240620/23/3/schema-meta/123-f0251bd5-1441-499a-8f53-adc0d1057a73.log" {
		t.Fatalf("schema name %s", name)
	}
	p, err := ParseDataName(name)
	if err != nil || !p.Schema || p.StoreID != 3 || p.MinTS != 123 || p.ID != d.ID || p.MaxTS != tso(time.Date(2024, 6, 20, 23, 0, 0, 0, time.UTC), 0) {
		t.Fatalf("parse %s: %+v %v", name, p, err)
	}
	if p.Format() != name {
		t.Fatalf("%s does not round trip: %s", name, p.Format())
	}
	// UTC, not local time: a TSO at 00:30 UTC stays on its UTC date.
	if got := (DataName{StoreID: 1, MinTS: 1, MaxTS: tso(time.Date(2025, 1, 1, 0, 30, 0, 0, time.FixedZone("x", 8*3600)), 0), ID: "x"}).Format(); !strings.HasPrefix(got, "v1/20241231/16/") {
		t.Errorf("date and hour must be UTC: %s", got)
	}
	for _, bad := range []string{
		"v1/20240620/23/3/123-.log", "v1/20240620/24/3/123-x.log", "v1/2024062/23/3/123-x.log", "v1/20240620/23/03/123-x.log",
		"v1/20240620/23/3/0123-x.log", "v1/20240620/23/3/x-123.log", "v1/20240620/23/3/123-x.meta", "v1/20240620/23/3/other/123-x.log",
		"v2/20240620/23/3/123-x.log", "v1/20240620/23/3/123-x/y.log", "v1/20240620/23/3/18446744073709551616-x.log",
	} {
		if p, err := ParseDataName(bad); err == nil {
			t.Errorf("ParseDataName(%s) = %+v, want an error", bad, p)
		}
	}
}

func TestGlobalCheckpoint(t *testing.T) {
	o := GlobalCheckpointObject(12, 0x0102030405060708)
	if o.Name != "v1/global_checkpoint/12.ts" || string(o.Data) != "\x08\x07\x06\x05\x04\x03\x02\x01" {
		t.Fatalf("global checkpoint object %q %x: want the ts little-endian", o.Name, o.Data)
	}
	if v, err := DecodeGlobalCheckpoint(o.Data); err != nil || v != 0x0102030405060708 {
		t.Fatalf("decode: %x %v", v, err)
	}
	if _, err := DecodeGlobalCheckpoint(o.Data[:7]); err == nil {
		t.Fatal("7 bytes accepted")
	}
	if s, err := ParseGlobalCheckpointName(o.Name); err != nil || s != 12 {
		t.Fatalf("parse name: %d %v", s, err)
	}
	for _, bad := range []string{"v1/global_checkpoint/012.ts", "v1/global_checkpoint/.ts", "v1/global_checkpoint/1.tsx", "v1/x/1.ts"} {
		if _, err := ParseGlobalCheckpointName(bad); err == nil {
			t.Errorf("ParseGlobalCheckpointName(%s) accepted", bad)
		}
	}
}

func FuzzParseMetaName(f *testing.F) {
	f.Add(MetaName{FlushTS: 1, StoreID: 2, MinBeginTS: 3, MinTS: 4, MaxTS: 5, Flags: 3}.Format())
	f.Add(MetaName{FlushTS: 1, StoreID: 2, MinBeginTS: 3, MinTS: 4, MaxTS: 5, Linked: true, Lineage: Lineage{1, 2, 3}, HasChecksum: true, Checksum: 9}.Format())
	f.Add("00000000000012340000000000000004-u0000000000000abcl0000000000000008x0000000000000000d0000000000000007.meta")
	f.Add("v1/backupmeta/0000000000000010-0000000000000001-0000000000000002-00000000000000ff.meta")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseMetaName(s)
		if err != nil || m.Legacy {
			return
		}
		back, err := ParseMetaName(m.Format())
		// Format writes the known tags in one order, p always.
		canon := m
		canon.HasFlags, canon.Tags = true, "dlup"
		if m.Linked {
			canon.Tags += "bcs"
		}
		if m.HasChecksum {
			canon.Tags += "h"
		}
		if err != nil || back != canon {
			t.Fatalf("%q parses to %+v; its formatted name %s gives %+v, %v", s, m, m.Format(), back, err)
		}
	})
}

func FuzzParseDataName(f *testing.F) {
	f.Add(DataName{StoreID: 1, MinTS: 2, MaxTS: 3 << 40, ID: "f0251bd5-1441-499a-8f53-adc0d1057a73"}.Format())
	f.Add(DataName{StoreID: 9, MinTS: 0, MaxTS: 0, Schema: true, ID: "x"}.Format())
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDataName(s)
		if err != nil {
			return
		}
		if got := d.Format(); got != s {
			t.Fatalf("%q parses to %+v, which formats as %q", s, d, got)
		}
	})
}
