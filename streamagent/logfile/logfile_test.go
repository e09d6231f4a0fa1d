package logfile

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"

	"logbackup/storage"
)

var update = flag.Bool("update", false, "rewrite testdata/ golden files")

func tso(t time.Time, logical uint64) uint64 { return uint64(t.UnixMilli())<<18 | logical }

func memStore(t testing.TB) storage.Storage {
	s, err := storage.OpenURL(context.Background(), "mem://")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func upload(t testing.TB, s storage.Storage, f *Flush) {
	ctx := context.Background()
	for _, o := range f.Data {
		if err := s.WriteFile(ctx, o.Name, o.Data); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.WriteFile(ctx, f.Meta.Name, f.Meta.Data); err != nil {
		t.Fatal(err)
	}
}

func tableKey(table int64, row string) []byte {
	k := []byte{'t'}
	k = append(k, byte(uint64(table)>>56^0x80), byte(table>>48), byte(table>>40), byte(table>>32), byte(table>>24), byte(table>>16), byte(table>>8), byte(table))
	return append(k, "_r"+row...)
}

func TestKeyAndWriteEncoding(t *testing.T) {
	k := EncodeMVCCKey([]byte("abc"), 5)
	// memcomparable "abc": 8-byte group padded with zeros, marker 0xFF-5.
	if want := "6162630000000000fa" + "fffffffffffffffa"; hex.EncodeToString(k) != want {
		t.Fatalf("mvcc key %x, want %s", k, want)
	}
	raw, ts, err := DecodeMVCCKey(k)
	if err != nil || string(raw) != "abc" || ts != 5 {
		t.Fatalf("decode: %q %d %v", raw, ts, err)
	}
	if bytes.Compare(EncodeMVCCKey([]byte("a"), 9), EncodeMVCCKey([]byte("a"), 8)) >= 0 {
		t.Fatal("newer versions must sort first")
	}
	w := EncodeWrite(WritePut, 300, []byte("v"), true)
	if hex.EncodeToString(w) != "50"+"ac02"+"76"+"01"+"76" {
		t.Fatalf("write record %x", w)
	}
	got, err := DecodeWrite(w)
	if err != nil || got.Type != WritePut || got.StartTS != 300 || string(got.ShortValue) != "v" || !got.HasShort {
		t.Fatalf("decode write: %+v %v", got, err)
	}
	// Trailing fields newer TiKV versions append are ignored.
	if got, err := DecodeWrite(append(EncodeWrite(WriteDelete, 7, nil, false), 'R')); err != nil || got.StartTS != 7 {
		t.Fatalf("write with trailing flag: %+v %v", got, err)
	}
	for _, bad := range [][]byte{nil, {'P'}, {'X', 1}, {'P', 1, 'v', 5, 'a'}, {'P', 0xff}} {
		if _, err := DecodeWrite(bad); !errors.Is(err, ErrCorrupt) {
			t.Errorf("DecodeWrite(%x) = %v", bad, err)
		}
	}
	if TableID(tableKey(71, "1")) != 71 || TableID(tableKey(-3, "1")) != -3 || TableID([]byte("mDB")) != 0 {
		t.Fatal("table id")
	}
}

func TestEncodeChangeColumnFamilies(t *testing.T) {
	short := EncodeChange(nil, Change{Key: []byte("k"), Value: bytes.Repeat([]byte("x"), 255), StartTS: 1, CommitTS: 2, Op: OpPut})
	long := EncodeChange(nil, Change{Key: []byte("k"), Value: bytes.Repeat([]byte("x"), 256), StartTS: 1, CommitTS: 2, Op: OpPut})
	del := EncodeChange(nil, Change{Key: []byte("k"), StartTS: 1, CommitTS: 2, Op: OpDelete})
	if len(short) != 1 || short[0].CF != CFWrite || len(long) != 2 || long[0].CF != CFDefault || len(del) != 1 {
		t.Fatalf("cf split: %d %d %d", len(short), len(long), len(del))
	}
	if _, ts, _ := DecodeMVCCKey(long[0].Key); ts != 1 {
		t.Fatalf("default cf key carries ts %d, want the start ts", ts)
	}
}

func TestNames(t *testing.T) {
	m := MetaName{FlushTS: 0x1234, StoreID: 4, MinBeginTS: 7, MinTS: 8, MaxTS: 9, Flags: FlagNoMetaFiles}
	name := m.Format()
	if name != "v1/backupmeta/00000000000012340000000000000004-d0000000000000007l0000000000000008u0000000000000009p0000000000000001.meta" {
		t.Fatalf("meta name %s", name)
	}
	back, err := ParseMetaName(name)
	if err != nil || back != m {
		t.Fatalf("parse %s: %+v %v", name, back, err)
	}
	if _, err := ParseMetaName("v1/backupmeta/00000000000012340000000000000004-d0000000000000007.meta"); err == nil {
		t.Fatal("name without l/u accepted")
	}
	at := time.Date(2024, 6, 20, 23, 59, 0, 0, time.UTC)
	d := DataName{StoreID: 3, MinTS: 123, MaxTS: tso(at, 5), ID: "f0251bd5-1441-499a-8f53-adc0d1057a73"}
	if got := d.Format(); got != "v1/20240620/23/3/123-f0251bd5-1441-499a-8f53-adc0d1057a73.log" {
		t.Fatalf("data name %s", got)
	}
	d.Schema = true
	p, err := ParseDataName(d.Format())
	if err != nil || !p.Schema || p.StoreID != 3 || p.MinTS != 123 || p.ID != d.ID {
		t.Fatalf("parse data name: %+v %v", p, err)
	}
	if v, err := DecodeGlobalCheckpoint(EncodeGlobalCheckpoint(0x0102)); err != nil || v != 0x0102 || EncodeGlobalCheckpoint(1)[0] != 1 {
		t.Fatal("global checkpoint is little-endian")
	}
}

// randomChanges makes changes of every shape: short, 255/256-byte and 1 MiB
// values, deletes, binary keys, table keys, meta keys.
func randomChanges(r *rand.Rand, n int, base uint64) []Change {
	var out []Change
	for i := 0; i < n; i++ {
		var key []byte
		switch r.Intn(4) {
		case 0:
			key = tableKey(int64(r.Intn(5)+1), fmt.Sprint(r.Intn(1000)))
		case 1:
			key = []byte(fmt.Sprintf("mDB:%d", r.Intn(10)))
		case 2:
			key = []byte{0, 0xff, byte(r.Intn(256)), 0}
		default:
			key = []byte(fmt.Sprintf("k%05d", r.Intn(100000)))
		}
		sizes := []int{0, 8, 255, 256, 4000}
		size := sizes[r.Intn(len(sizes))]
		if i == 3 {
			size = 1 << 20
		}
		c := Change{Key: key, Value: bytes.Repeat([]byte{byte(r.Intn(256))}, size), StartTS: base + uint64(2*i), CommitTS: base + uint64(2*i+1), Op: OpPut}
		if r.Intn(6) == 0 {
			c.Op, c.Value = OpDelete, nil
		}
		out = append(out, c)
	}
	return out
}

func sortChanges(cs []Change) {
	sort.Slice(cs, func(i, j int) bool {
		if c := bytes.Compare(cs[i].Key, cs[j].Key); c != 0 {
			return c < 0
		}
		return cs[i].CommitTS < cs[j].CommitTS
	})
}

func TestRoundTrip(t *testing.T) {
	seed := time.Now().UnixNano()
	r := rand.New(rand.NewSource(seed))
	s := memStore(t)
	base := tso(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), 0)
	var want []Change
	for flush := uint64(1); flush <= 3; flush++ {
		b := NewBuilder(BuilderConfig{StoreID: 7, FileSizeLimit: 64 << 10})
		cs := randomChanges(r, 300, base+flush*10000)
		for i, c := range cs {
			b.Add(RegionInfo{ID: uint64(1 + i%3), StartKey: []byte("a"), EndKey: []byte("z"), Epoch: &metapb.RegionEpoch{Version: 2, ConfVer: 1}}, c)
		}
		f, err := b.Finish(base+flush*10000+5000, base+flush*10000+4000)
		if err != nil {
			t.Fatal(err)
		}
		if len(f.Data) < 2 {
			t.Fatalf("seed %d: a 64 KiB file limit should split the flush, got %d objects", seed, len(f.Data))
		}
		upload(t, s, f)
		want = append(want, cs...)
	}
	// An empty flush still writes a meta file (so the flush ts advances).
	empty, err := NewBuilder(BuilderConfig{StoreID: 7}).Finish(base+99999, base+99998)
	if err != nil {
		t.Fatal(err)
	}
	if empty.Name.Flags != FlagEmpty|FlagNoMetaFiles || len(empty.Data) != 0 {
		t.Fatalf("empty flush: %+v", empty.Name)
	}
	upload(t, s, empty)

	var got []Change
	sum, err := Walk(context.Background(), s, func(d Decoded) error {
		got = append(got, d.Change)
		return nil
	})
	if err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	sortChanges(want)
	sortChanges(got)
	if len(got) != len(want) || sum.MetaFiles != 4 || sum.Changes != len(want) {
		t.Fatalf("seed %d: %d changes back of %d; summary %+v", seed, len(got), len(want), sum)
	}
	for i := range want {
		w, g := want[i], got[i]
		if !bytes.Equal(w.Key, g.Key) || w.CommitTS != g.CommitTS || w.StartTS != g.StartTS || w.Op != g.Op || !bytes.Equal(w.Value, g.Value) {
			t.Fatalf("seed %d: change %d differs: %q@%d %v len %d vs %q@%d %v len %d", seed, i, w.Key, w.CommitTS, w.Op, len(w.Value), g.Key, g.CommitTS, g.Op, len(g.Value))
		}
	}
}

// TestGolden pins the byte layout of one data object and one meta file.
func TestGolden(t *testing.T) {
	at := time.Date(2024, 6, 20, 8, 0, 0, 0, time.UTC)
	b := NewBuilder(BuilderConfig{StoreID: 1, NewID: func() string { return "00000000-0000-4000-8000-000000000000" }})
	region := RegionInfo{ID: 2, StartKey: []byte("t"), EndKey: []byte("u"), Epoch: &metapb.RegionEpoch{ConfVer: 1, Version: 3}}
	b.Add(region, Change{Key: tableKey(71, "1"), Value: []byte("short"), StartTS: tso(at, 1), CommitTS: tso(at, 2), Op: OpPut})
	b.Add(region, Change{Key: tableKey(71, "2"), Value: bytes.Repeat([]byte("L"), 300), StartTS: tso(at, 3), CommitTS: tso(at, 4), Op: OpPut})
	b.Add(region, Change{Key: tableKey(71, "1"), StartTS: tso(at, 5), CommitTS: tso(at, 6), Op: OpDelete})
	f, err := b.Finish(tso(at, 100), tso(at, 50))
	if err != nil {
		t.Fatal(err)
	}
	var g strings.Builder
	fmt.Fprintf(&g, "meta %s\nmeta-bytes %x\n", f.Meta.Name, f.Meta.Data)
	for _, o := range f.Data {
		fmt.Fprintf(&g, "object %s (%d bytes)\n", o.Name, len(o.Data))
	}
	for _, grp := range f.Metadata.FileGroups {
		for _, fi := range grp.DataFilesInfo {
			fmt.Fprintf(&g, "file cf=%s table=%d region=%d entries=%d length=%d sha256=%x crc64xor=%016x min=%d max=%d begin=%d keys=%x..%x\n",
				fi.Cf, fi.TableId, fi.RegionId, fi.NumberOfEntries, fi.Length, fi.Sha256, fi.Crc64Xor, fi.MinTs, fi.MaxTs, fi.MinBeginTsInDefaultCf, fi.StartKey, fi.EndKey)
		}
	}
	// The plain framed bytes of the write-CF file, decoded from the object.
	s := memStore(t)
	upload(t, s, f)
	var lines []string
	if _, err := Walk(context.Background(), s, func(d Decoded) error {
		lines = append(lines, fmt.Sprintf("change %x start=%d commit=%d %s value=%q", d.Key, d.StartTS, d.CommitTS, d.Op, truncate(d.Value)))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	g.WriteString(strings.Join(lines, "\n") + "\n")
	path := filepath.Join("testdata", "golden.txt")
	if *update {
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(path, []byte(g.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if g.String() != string(want) {
		t.Fatalf("layout changed:\n%s\nwant:\n%s", g.String(), want)
	}
}

func truncate(v []byte) string {
	if len(v) > 12 {
		return string(v[:12]) + "..."
	}
	return string(v)
}

func TestCorruption(t *testing.T) {
	base := tso(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), 0)
	build := func() *Flush {
		b := NewBuilder(BuilderConfig{StoreID: 1})
		for _, c := range randomChanges(rand.New(rand.NewSource(1)), 50, base) {
			b.Add(RegionInfo{ID: 1}, c)
		}
		f, err := b.Finish(base+1000, base+999)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	cases := map[string]func(f *Flush){
		"flipped byte in data": func(f *Flush) { f.Data[0].Data[len(f.Data[0].Data)/2] ^= 0x40 },
		"truncated object":     func(f *Flush) { f.Data[0].Data = f.Data[0].Data[:len(f.Data[0].Data)-3] },
		"bad meta proto":       func(f *Flush) { f.Meta.Data = []byte("\xff\xff\xff\xff") },
		"missing object":       func(f *Flush) { f.Data = f.Data[1:] },
	}
	for name, mangle := range cases {
		t.Run(name, func(t *testing.T) {
			f := build()
			mangle(f)
			s := memStore(t)
			upload(t, s, f)
			_, err := Walk(context.Background(), s, func(Decoded) error { return nil })
			if err == nil {
				t.Fatal("corruption not detected")
			}
		})
	}
}

func FuzzParseMetaName(f *testing.F) {
	f.Add(MetaName{FlushTS: 1, StoreID: 2, MinBeginTS: 3, MinTS: 4, MaxTS: 5, Flags: 3}.Format())
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseMetaName(s)
		if err == nil {
			if _, err := ParseMetaName(m.Format()); err != nil {
				t.Fatalf("formatted name does not parse: %v", err)
			}
		}
	})
}

func FuzzParseDataName(f *testing.F) {
	f.Add(DataName{StoreID: 1, MinTS: 2, MaxTS: 3 << 18, ID: "x"}.Format())
	f.Fuzz(func(t *testing.T, s string) { ParseDataName(s) })
}

func FuzzDecoders(f *testing.F) {
	f.Add(EncodeMVCCKey([]byte("k"), 3), EncodeWrite(WritePut, 3, []byte("v"), true))
	f.Fuzz(func(t *testing.T, k, v []byte) {
		if raw, ts, err := DecodeMVCCKey(k); err == nil && !bytes.Equal(EncodeMVCCKey(raw, ts), k) {
			t.Fatalf("mvcc key does not round trip: %x", k)
		}
		DecodeWrite(v)
		for rest := append(k, v...); len(rest) > 0; {
			var err error
			if _, _, rest, err = NextFrame(rest); err != nil {
				break
			}
		}
	})
}

// TestSpill: a builder that spills to temp files under memory pressure
// produces byte-identical files to one that never spills, and its temp
// files go away on Close.
func TestSpill(t *testing.T) {
	base := tso(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), 0)
	changes := randomChanges(rand.New(rand.NewSource(7)), 400, base)
	dir := t.TempDir()
	id := func() string { return "00000000-0000-4000-8000-000000000000" }
	plain := NewBuilder(BuilderConfig{StoreID: 1, NewID: id})
	spilly := NewBuilder(BuilderConfig{StoreID: 1, NewID: id, SpillDir: dir})
	for i, c := range changes {
		r := RegionInfo{ID: uint64(1 + i%4)}
		plain.Add(r, c)
		spilly.Add(r, c)
		if i%37 == 0 {
			if err := spilly.Spill(); err != nil {
				t.Fatal(err)
			}
			if spilly.Memory() != 0 || spilly.Size() != plain.Size() {
				t.Fatalf("after spill: memory %d, size %d vs %d", spilly.Memory(), spilly.Size(), plain.Size())
			}
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) == 0 {
		t.Fatal("nothing was spilled")
	}
	a, err := plain.Finish(base+9999, base+9998)
	if err != nil {
		t.Fatal(err)
	}
	b, err := spilly.Finish(base+9999, base+9998)
	if err != nil {
		t.Fatal(err)
	}
	spilly.Close()
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("temp files left: %d", len(entries))
	}
	if len(a.Data) != len(b.Data) {
		t.Fatalf("objects: %d vs %d", len(a.Data), len(b.Data))
	}
	// Same files, same checksums; compressed bytes may differ (stream vs
	// one-shot zstd), so compare what a reader gets back.
	for gi, g := range a.Metadata.FileGroups {
		for fi, f := range g.DataFilesInfo {
			o := b.Metadata.FileGroups[gi].DataFilesInfo[fi]
			if !bytes.Equal(f.Sha256, o.Sha256) || f.Length != o.Length || f.Crc64Xor != o.Crc64Xor {
				t.Fatalf("file %d/%d differs after spilling", gi, fi)
			}
		}
	}
	s := memStore(t)
	upload(t, s, b)
	n := 0
	if _, err := Walk(context.Background(), s, func(Decoded) error { n++; return nil }); err != nil || n != len(changes) {
		t.Fatalf("spilled flush decodes to %d changes (%v), want %d", n, err, len(changes))
	}
}
