package logfile

import (
	"bytes"
	"context"
	"errors"
	"github.com/klauspost/compress/zstd"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gogo/protobuf/proto"
	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/pingcap/kvproto/pkg/metapb"
)

// TestRoundTrip: random changes of every shape go through the builder and
// come back from storage unchanged, across several flushes, and the
// metadata describes the files truthfully.
func TestRoundTrip(t *testing.T) {
	seed := time.Now().UnixNano()
	r := rand.New(rand.NewSource(seed))
	t.Logf("seed %d", seed)
	st := newMapReader()
	base := tso(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), 0)
	var want []Change
	// Builders share a chunk pool; the flushes are uploaded only after
	// later builders reused the chunks, so a flush aliasing a recycled
	// buffer would fail its checksums.
	pool := NewChunkPool()
	var flushes []*Flush
	for flush := uint64(1); flush <= 3; flush++ {
		b := NewBuilder(BuilderConfig{StoreID: 7, FileSizeLimit: 64 << 10, Concurrency: int(flush), Chunks: pool})
		cs := randomChanges(r, 400, base+flush*10000)
		for i, c := range cs {
			region := RegionInfo{ID: uint64(1 + i%3), StartKey: []byte("a"), EndKey: []byte("z"), Epoch: &metapb.RegionEpoch{Version: 2, ConfVer: 1}}
			if err := b.Add(region, c); err != nil {
				t.Fatal(err)
			}
		}
		if b.Changes() != len(cs) {
			t.Fatalf("Changes() = %d, want %d", b.Changes(), len(cs))
		}
		f, err := b.Finish(base+flush*10000+5000, base+flush*10000+4000)
		if err != nil {
			t.Fatal(err)
		}
		if len(f.Data) < 2 {
			t.Fatalf("seed %d: a 64 KiB limit should split the flush, got %d objects", seed, len(f.Data))
		}
		checkFlush(t, f, b.Size())
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if err := b.Add(RegionInfo{}, cs[0]); err == nil {
			t.Fatal("Add after Close accepted")
		}
		flushes = append(flushes, f)
		want = append(want, cs...)
	}
	for i, f := range flushes {
		if back, err := DecodeMetadata(f.Meta.Data); err != nil || !proto.Equal(back, f.Metadata) {
			t.Fatalf("flush %d: its Metadata changed after later builders reused the chunks", i)
		}
		st.upload(f)
	}
	got, sum := walkAll(t, st)
	sortChanges(want)
	sortChanges(got)
	if len(got) != len(want) || sum.MetaFiles != 3 || sum.Changes != len(want) {
		t.Fatalf("seed %d: %d changes back of %d; summary %+v", seed, len(got), len(want), sum)
	}
	for i := range want {
		if !sameChange(want[i], got[i]) {
			t.Fatalf("seed %d: change %d differs: %q@%d %v len %d vs %q@%d %v len %d", seed, i,
				want[i].Key, want[i].CommitTS, want[i].Op, len(want[i].Value), got[i].Key, got[i].CommitTS, got[i].Op, len(got[i].Value))
		}
	}
	minTS, maxTS := want[0].CommitTS, want[0].CommitTS
	for _, c := range want {
		minTS, maxTS = min(minTS, c.CommitTS), max(maxTS, c.CommitTS)
	}
	if sum.MinTS != minTS || sum.MaxTS != maxTS || sum.MaxResolvedTS != base+34000 || sum.MinResolvedTS != base+14000 {
		t.Fatalf("summary %+v", sum)
	}
}

// checkFlush checks a flush's metadata against its objects and against
// TiKV's rules: data groups before schema groups, never mixed; ranges
// tile each object; group and metadata bounds; the meta name's fields.
func checkFlush(t *testing.T, f *Flush, size int) {
	t.Helper()
	md := f.Metadata
	back, err := DecodeMetadata(f.Meta.Data)
	if err != nil || !proto.Equal(back, md) {
		t.Fatalf("meta file does not decode to Metadata: %v", err)
	}
	name, err := ParseMetaName(f.Meta.Name)
	if err != nil || name != f.Name {
		t.Fatalf("meta name %s: %+v %v", f.Meta.Name, name, err)
	}
	if len(f.Data) != len(md.FileGroups) {
		t.Fatalf("%d objects, %d groups", len(f.Data), len(md.FileGroups))
	}
	plain, schemaSeen, hasSchema := 0, false, false
	minBegin := uint64(0)
	for i, g := range md.FileGroups {
		if f.Data[i].Name != g.Path || uint64(len(mustBytes(f.Data[i]))) != g.Length || uint64(f.Data[i].Size) != g.Length {
			t.Fatalf("group %d: object %s (%d bytes, size %d) vs %s (%d)", i, f.Data[i].Name, len(mustBytes(f.Data[i])), f.Data[i].Size, g.Path, g.Length)
		}
		dn, err := ParseDataName(g.Path)
		if err != nil || dn.StoreID != uint64(md.StoreId) || dn.MinTS != g.MinTs || tsoTime(dn.MaxTS).Truncate(time.Hour) != tsoTime(g.MaxTs).Truncate(time.Hour) {
			t.Fatalf("group %s: %+v %v", g.Path, dn, err)
		}
		var off uint64
		for _, fi := range g.DataFilesInfo {
			if fi.IsMeta != dn.Schema || fi.Path != "" || fi.RangeOffset != off || fi.CompressionType != brpb.CompressionType_ZSTD || fi.Type != brpb.FileType_Put {
				t.Fatalf("file in %s: %+v", g.Path, fi)
			}
			if fi.IsMeta && fi.TableId != 0 {
				t.Fatalf("meta file with table id %d", fi.TableId)
			}
			if fi.MinTs < g.MinTs || fi.MaxTs > g.MaxTs || fi.ResolvedTs < g.MinResolvedTs || len(fi.Sha256) != 32 {
				t.Fatalf("file %+v outside its group %s", fi, g.Path)
			}
			if minBegin == 0 || fi.MinBeginTsInDefaultCf < minBegin {
				minBegin = fi.MinBeginTsInDefaultCf
			}
			off += fi.RangeLength
			plain += int(fi.Length)
		}
		if off != g.Length {
			t.Fatalf("ranges of %s cover %d of %d bytes", g.Path, off, g.Length)
		}
		if dn.Schema {
			schemaSeen, hasSchema = true, true
		} else if schemaSeen {
			t.Fatal("a data group after a schema group")
		}
		if g.MinTs < md.MinTs || g.MaxTs > md.MaxTs {
			t.Fatalf("group %s outside the metadata's ts range", g.Path)
		}
	}
	if plain != size {
		t.Fatalf("files hold %d plain bytes, the builder %d", plain, size)
	}
	if name.MinBeginTS != minBegin || name.MinTS != md.MinTs || name.MaxTS != md.MaxTs || name.StoreID != uint64(md.StoreId) {
		t.Fatalf("meta name %+v vs metadata min %d max %d min begin %d", name, md.MinTs, md.MaxTs, minBegin)
	}
	if (name.Flags&FlagNoMetaFiles != 0) == hasSchema || (name.Flags&FlagEmpty != 0) != (len(md.FileGroups) == 0) {
		t.Fatalf("flags %b with %d groups, schema %v", name.Flags, len(md.FileGroups), hasSchema)
	}
}

// TestBatching: a new object starts once the plain bytes batched reach
// the limit (TiKV checks before adding a file), and schema files get their
// own objects.
func TestBatching(t *testing.T) {
	b := NewBuilder(BuilderConfig{StoreID: 1, FileSizeLimit: 1000, NewID: seqIDs()})
	v := bytes.Repeat([]byte("x"), 200) // a write-CF entry of about 230 bytes
	for region := uint64(1); region <= 5; region++ {
		for i := 0; i < 3; i++ { // ~700 plain bytes per region file
			b.Add(RegionInfo{ID: region}, Change{Key: tableKey(1, int64(i)), Value: v, StartTS: 10, CommitTS: 11})
		}
	}
	b.Add(RegionInfo{ID: 1}, Change{Key: []byte("mDDL"), Value: v, StartTS: 10, CommitTS: 11})
	f, err := b.Finish(100, 50)
	if err != nil {
		t.Fatal(err)
	}
	checkFlush(t, f, b.Size())
	var shape []int
	for _, g := range f.Metadata.FileGroups {
		shape = append(shape, len(g.DataFilesInfo))
	}
	// 700 < 1000: a second file joins; 1400 >= 1000: the third starts a
	// new object. Then the schema file alone.
	if want := []int{2, 2, 1, 1}; !equalInts(shape, want) {
		t.Fatalf("files per object %v, want %v", shape, want)
	}
	if !strings.Contains(f.Data[3].Name, "/schema-meta/") || strings.Contains(f.Data[2].Name, "schema-meta") {
		t.Fatalf("objects %s, %s", f.Data[2].Name, f.Data[3].Name)
	}
	if f.Name.Flags != 0 {
		t.Fatalf("flags %b, want none: there are data and schema files", f.Name.Flags)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestEmptyFlush: a flush with nothing still writes its meta file, so the
// store's flush ts advances.
func TestEmptyFlush(t *testing.T) {
	f, err := NewBuilder(BuilderConfig{StoreID: 9}).Finish(1000, 900)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Data) != 0 || f.Name.Flags != FlagEmpty|FlagNoMetaFiles || f.Metadata.ResolvedTs != 900 || f.Metadata.MetaVersion != brpb.MetaVersion_V2 {
		t.Fatalf("empty flush: %+v %+v", f.Name, f.Metadata)
	}
	if f.Meta.Name != "v1/backupmeta/00000000000003E80000000000000009-d0000000000000000l0000000000000000u0000000000000000p0000000000000003.meta" {
		t.Fatalf("empty flush meta name %s", f.Meta.Name)
	}
	st := newMapReader()
	st.upload(f)
	if got, sum := walkAll(t, st); len(got) != 0 || sum.MetaFiles != 1 || sum.MaxResolvedTS != 900 {
		t.Fatalf("empty flush reads back as %d changes, %+v", len(got), sum)
	}
	if _, err := NewBuilder(BuilderConfig{}).Finish(0, 1); err == nil {
		t.Fatal("flush ts 0 accepted")
	}
}

// TestFileInfo pins what one region's files say: grouping by table and
// cf, key bounds, ts bounds, min begin ts, region range and epochs.
func TestFileInfo(t *testing.T) {
	e1, e2 := &metapb.RegionEpoch{Version: 1, ConfVer: 1}, &metapb.RegionEpoch{Version: 2, ConfVer: 1}
	b := NewBuilder(BuilderConfig{StoreID: 1})
	long := bytes.Repeat([]byte("L"), 300)
	b.Add(RegionInfo{ID: 5, StartKey: []byte("b"), EndKey: []byte("m"), Epoch: e1}, Change{Key: tableKey(3, 2), Value: long, StartTS: 20, CommitTS: 25})
	b.Add(RegionInfo{ID: 5, StartKey: []byte("a"), EndKey: []byte("k"), Epoch: e2}, Change{Key: tableKey(3, 1), Value: []byte("s"), StartTS: 10, CommitTS: 30})
	b.Add(RegionInfo{ID: 5, StartKey: []byte("a"), EndKey: []byte("k"), Epoch: &metapb.RegionEpoch{Version: 2, ConfVer: 1}}, Change{Key: tableKey(3, 3), StartTS: 12, CommitTS: 13, Op: OpDelete})
	b.Add(RegionInfo{ID: 5}, Change{Key: tableKey(4, 1), Value: []byte("other table"), StartTS: 40, CommitTS: 41})
	f, err := b.Finish(100, 50)
	if err != nil {
		t.Fatal(err)
	}
	files := f.Metadata.FileGroups[0].DataFilesInfo
	if len(files) != 3 {
		t.Fatalf("%d files, want table 3 default, table 3 write, table 4 write", len(files))
	}
	def, wr, other := files[0], files[1], files[2]
	if def.Cf != CFDefault || def.TableId != 3 || def.NumberOfEntries != 1 || def.MinTs != 20 || def.MaxTs != 20 || def.MinBeginTsInDefaultCf != 20 {
		t.Fatalf("default file %+v", def)
	}
	if wr.Cf != CFWrite || wr.TableId != 3 || wr.NumberOfEntries != 3 || wr.MinTs != 13 || wr.MaxTs != 30 || wr.MinBeginTsInDefaultCf != 10 {
		t.Fatalf("write file %+v", wr)
	}
	if !bytes.Equal(wr.StartKey, EncodeMVCCKey(tableKey(3, 1), 30)) || !bytes.Equal(wr.EndKey, EncodeMVCCKey(tableKey(3, 3), 13)) {
		t.Fatalf("write file keys %x..%x", wr.StartKey, wr.EndKey)
	}
	if string(wr.RegionStartKey) != "a" || string(wr.RegionEndKey) != "m" || len(wr.RegionEpoch) != 2 || wr.RegionEpoch[0].Version != 1 || wr.RegionEpoch[1].Version != 2 {
		t.Fatalf("write file region %q..%q %v", wr.RegionStartKey, wr.RegionEndKey, wr.RegionEpoch)
	}
	// A region without an end key reaches the end of the key space.
	if other.TableId != 4 || len(other.RegionEndKey) != 0 {
		t.Fatalf("table 4 file %+v", other)
	}
	if f.Metadata.MinTs != 13 || f.Metadata.MaxTs != 41 || f.Name.MinBeginTS != 10 || f.Name.Flags != FlagNoMetaFiles {
		t.Fatalf("metadata %d..%d, name %+v", f.Metadata.MinTs, f.Metadata.MaxTs, f.Name)
	}
}

// TestAddKV: raw entries, including lock and rollback records, land as
// they are; Walk skips what changes no value; bad entries are refused.
func TestAddKV(t *testing.T) {
	b := NewBuilder(BuilderConfig{StoreID: 1})
	key := []byte("k")
	entries := []KV{
		{CF: CFWrite, Key: EncodeMVCCKey(key, 5), Value: EncodeWrite(WriteLock, 4, nil, false)},
		{CF: CFWrite, Key: EncodeMVCCKey(key, 7), Value: Write{Type: WriteRollback, StartTS: 7, OverlappedRollback: true}.Append(nil)},
	}
	entries = append(entries, EncodeChange(nil, Change{Key: key, Value: bytes.Repeat([]byte("v"), 400), StartTS: 8, CommitTS: 9})...)
	for _, kv := range entries {
		if err := b.AddKV(RegionInfo{ID: 1}, kv); err != nil {
			t.Fatal(err)
		}
	}
	for _, bad := range []KV{
		{CF: "lock", Key: EncodeMVCCKey(key, 1)},
		{CF: CFWrite, Key: []byte("short")},
		{CF: CFWrite, Key: EncodeMVCCKey(key, 1), Value: []byte("X")},
	} {
		if err := b.AddKV(RegionInfo{ID: 1}, bad); err == nil {
			t.Errorf("AddKV(%+v) accepted", bad)
		}
	}
	f, err := b.Finish(10, 10)
	if err != nil {
		t.Fatal(err)
	}
	if w := f.Metadata.FileGroups[0].DataFilesInfo[1]; w.Cf != CFWrite || w.MinBeginTsInDefaultCf != 4 || w.NumberOfEntries != 3 {
		t.Fatalf("write file %+v", w)
	}
	st := newMapReader()
	st.upload(f)
	got, sum := walkAll(t, st)
	if len(got) != 1 || got[0].CommitTS != 9 || len(got[0].Value) != 400 || sum.Skipped != 2 || sum.Entries != 4 {
		t.Fatalf("%d changes, summary %+v", len(got), sum)
	}
}

// TestIDsMustBeUnique: an id source that repeats would make objects
// overwrite each other; Finish refuses.
func TestIDsMustBeUnique(t *testing.T) {
	b := NewBuilder(BuilderConfig{StoreID: 1, FileSizeLimit: 1, NewID: func() string { return "same" }})
	b.Add(RegionInfo{ID: 1}, Change{Key: []byte("a"), StartTS: 1, CommitTS: 2})
	b.Add(RegionInfo{ID: 2}, Change{Key: []byte("b"), StartTS: 1, CommitTS: 2})
	if _, err := b.Finish(5, 5); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("repeated ids: %v", err)
	}
}

// TestFinishTwice: Finish leaves the builder as it was, so a failed upload
// can build the same files again under new names.
func TestFinishTwice(t *testing.T) {
	b := NewBuilder(BuilderConfig{StoreID: 1})
	for _, c := range randomChanges(rand.New(rand.NewSource(3)), 50, 1000) {
		b.Add(RegionInfo{ID: 1}, c)
	}
	a, err := b.Finish(5000, 4000)
	if err != nil {
		t.Fatal(err)
	}
	c, err := b.Finish(5001, 4000)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Data) != len(c.Data) || a.Data[0].Name == c.Data[0].Name || !bytes.Equal(mustBytes(a.Data[0]), mustBytes(c.Data[0])) {
		t.Fatal("a second Finish must give the same bytes under new names")
	}
}

// TestSpill: a builder that spills produces byte-identical objects to one
// that never does, and removes its temp files on Close.
func TestSpill(t *testing.T) {
	base := tso(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), 0)
	changes := randomChanges(rand.New(rand.NewSource(7)), 400, base)
	dir := t.TempDir()
	plain := NewBuilder(BuilderConfig{StoreID: 1, NewID: seqIDs()})
	spilly := NewBuilder(BuilderConfig{StoreID: 1, NewID: seqIDs(), SpillDir: dir, Chunks: NewChunkPool()})
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
	if err := spilly.Close(); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("temp files left: %d", len(entries))
	}
	if a.Meta.Name != b.Meta.Name || !bytes.Equal(a.Meta.Data, b.Meta.Data) || len(a.Data) != len(b.Data) {
		t.Fatal("spilling changed the meta file")
	}
	for i := range a.Data {
		if a.Data[i].Name != b.Data[i].Name || !bytes.Equal(mustBytes(a.Data[i]), mustBytes(b.Data[i])) {
			t.Fatalf("object %d differs after spilling", i)
		}
	}
	// The spilled bytes are gone after Close: Finish says so.
	if _, err := spilly.Finish(base+10000, base+9998); err == nil {
		t.Fatal("Finish after Close with spilled bytes succeeded")
	}
}

// TestStorageReader reads a flush back through the real storage seam.
func TestStorageReader(t *testing.T) {
	ctx := context.Background()
	st, err := openMem(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	b := NewBuilder(BuilderConfig{StoreID: 2})
	cs := randomChanges(rand.New(rand.NewSource(11)), 100, 5000)
	for _, c := range cs {
		b.Add(RegionInfo{ID: 1}, c)
	}
	f, err := b.Finish(10000, 9000)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range f.Data {
		if err := st.WriteFrom(ctx, o.Name, o.Size, o.Open); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.WriteFile(ctx, f.Meta.Name, f.Meta.Data); err != nil {
		t.Fatal(err)
	}
	got, _ := walkAll(t, st)
	if len(got) != len(cs) {
		t.Fatalf("%d changes back of %d", len(got), len(cs))
	}
	// BR's way: one range read per file.
	dec, err := NewDecoder()
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	for _, g := range f.Metadata.FileGroups {
		for _, fi := range g.DataFilesInfo {
			plain, err := ReadDataFile(ctx, st, dec, g.Path, fi)
			if err != nil || uint64(len(plain)) != fi.Length {
				t.Fatalf("range read of %s at %d: %d bytes, %v", g.Path, fi.RangeOffset, len(plain), err)
			}
		}
	}
}

func TestChunkClasses(t *testing.T) {
	for _, c := range []struct{ n, class int }{{1, 0}, {2048, 0}, {2049, 1}, {4096, 1}, {4097, 2}, {1 << 20, 9}, {1<<20 + 1, -1}} {
		if got := chunkClass(c.n); got != c.class {
			t.Errorf("chunkClass(%d) = %d, want %d", c.n, got, c.class)
		}
	}
	p := NewChunkPool()
	for _, n := range []int{1, 3000, 70000, 1 << 20, 3 << 20} {
		c := p.get(n)
		if len(c) != 0 || cap(c) < n {
			t.Fatalf("get(%d): len %d cap %d", n, len(c), cap(c))
		}
		p.put(append(c, 1))
	}
	var nilPool *ChunkPool
	if c := nilPool.get(10); cap(c) < 10 {
		t.Fatal("a nil pool must still allocate")
	}
	nilPool.put(make([]byte, 4096))
}

// TestMemoryAccounting: Memory counts buffer capacity, falls to zero on
// Spill, and a spilled file starts again with a small chunk.
func TestMemoryAccounting(t *testing.T) {
	b := NewBuilder(BuilderConfig{StoreID: 1, SpillDir: t.TempDir()})
	defer b.Close()
	v := bytes.Repeat([]byte("x"), 200)
	for i := 0; i < 5000; i++ {
		b.Add(RegionInfo{ID: 1}, Change{Key: tableKey(1, int64(i)), Value: v, StartTS: 1, CommitTS: 2})
	}
	if b.Memory() < b.Size() || b.Memory() > 2*b.Size() {
		t.Fatalf("memory %d for %d plain bytes", b.Memory(), b.Size())
	}
	if err := b.Spill(); err != nil || b.Memory() != 0 {
		t.Fatalf("after spill: memory %d, %v", b.Memory(), err)
	}
	for r := uint64(1); r <= 100; r++ {
		b.Add(RegionInfo{ID: r}, Change{Key: tableKey(1, 1), Value: []byte("v"), StartTS: 3, CommitTS: 4})
	}
	if b.Memory() != 100*firstChunk {
		t.Fatalf("100 one-row files hold %d bytes, want %d", b.Memory(), 100*firstChunk)
	}
}

// TestSpillCorruptionCaught: a spilled temp file damaged on disk fails
// Finish with ErrSpillCorrupt instead of becoming a well-formed backup
// file of wrong bytes (its sha256 would be computed over the damage).
func TestSpillCorruptionCaught(t *testing.T) {
	base := tso(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), 0)
	dir := t.TempDir()
	b := NewBuilder(BuilderConfig{StoreID: 1, NewID: seqIDs(), SpillDir: dir})
	defer b.Close()
	for _, c := range randomChanges(rand.New(rand.NewSource(3)), 50, base) {
		b.Add(RegionInfo{ID: 1}, c)
	}
	if err := b.Spill(); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) == 0 {
		t.Fatalf("nothing spilled: %v", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, entries[0].Name()), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	one := make([]byte, 1)
	if _, err := f.ReadAt(one, 10); err != nil {
		t.Fatal(err)
	}
	one[0] ^= 0x40
	if _, err := f.WriteAt(one, 10); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := b.Finish(base+9999, base+9998); !errors.Is(err, ErrSpillCorrupt) {
		t.Fatalf("Finish over a damaged spill file: %v, want ErrSpillCorrupt", err)
	}
}

// TestSpillOpenFilesBounded: a builder holding the files of many regions
// spills them into one temp file, not one open file each. With a temp
// file per file, 10,000 regions × 2 column families ran the agent out of
// file descriptors ("too many open files") and the task into ERROR.
func TestSpillOpenFilesBounded(t *testing.T) {
	if _, err := os.ReadDir("/proc/self/fd"); err != nil {
		t.Skip("needs /proc/self/fd to count open files")
	}
	openFiles := func() int {
		entries, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(entries)
	}
	base := tso(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), 0)
	dir := t.TempDir()
	spilly := NewBuilder(BuilderConfig{StoreID: 1, NewID: seqIDs(), SpillDir: dir})
	defer spilly.Close()
	plain := NewBuilder(BuilderConfig{StoreID: 1, NewID: seqIDs()})
	defer plain.Close()
	before := openFiles()
	const regions = 2000
	changes := randomChanges(rand.New(rand.NewSource(11)), 3*regions, base)
	for round := 0; round < 3; round++ {
		for i, c := range changes[round*regions : (round+1)*regions] {
			r := RegionInfo{ID: uint64(1 + i)}
			if err := spilly.Add(r, c); err != nil {
				t.Fatal(err)
			}
			if err := plain.Add(r, c); err != nil {
				t.Fatal(err)
			}
		}
		if err := spilly.Spill(); err != nil {
			t.Fatal(err)
		}
		if n := openFiles() - before; n > 2 {
			t.Fatalf("after spilling %d regions' files the builder holds %d more open files", regions, n)
		}
	}
	a, err := spilly.Finish(base+99999, base+99998)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := plain.Finish(base+99999, base+99998)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if len(a.Data) != len(b.Data) || !bytes.Equal(a.Meta.Data, b.Meta.Data) {
		t.Fatal("spilling changed the meta file")
	}
	for i := range a.Data {
		if !bytes.Equal(mustBytes(a.Data[i]), mustBytes(b.Data[i])) {
			t.Fatalf("object %d differs after spilling", i)
		}
	}
}

// TestSpillFailureKeepsBytes: a spill whose write fails leaves every file
// of it with its bytes in memory (none half-spilled), and the builder
// still finishes to the same objects once spilling works again. Spills
// gather many files' chunks into one write, so a failure must not count
// the files before it as spilled.
func TestSpillFailureKeepsBytes(t *testing.T) {
	base := tso(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), 0)
	changes := randomChanges(rand.New(rand.NewSource(8)), 300, base)
	dir := t.TempDir()
	plain := NewBuilder(BuilderConfig{StoreID: 1, NewID: seqIDs()})
	spilly := NewBuilder(BuilderConfig{StoreID: 1, NewID: seqIDs(), SpillDir: dir, Chunks: NewChunkPool()})
	for i, c := range changes {
		r := RegionInfo{ID: uint64(1 + i%50)}
		plain.Add(r, c)
		spilly.Add(r, c)
		if i == 100 {
			if err := spilly.Spill(); err != nil { // a good spill first
				t.Fatal(err)
			}
		}
	}
	good := spilly.spill
	// A read-only handle on the spill file: every write to it fails.
	ro, err := os.Open(good.Name())
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	spilly.spill = ro
	memory, size, spilledBefore := spilly.Memory(), spilly.Size(), spilly.spillSize
	if err := spilly.Spill(); err == nil {
		t.Fatal("a spill to a read-only file succeeded")
	}
	if spilly.Memory() != memory || spilly.Size() != size || spilly.spillSize != spilledBefore {
		t.Fatalf("after a failed spill: memory %d (was %d), size %d (was %d), spill file %d (was %d)",
			spilly.Memory(), memory, spilly.Size(), size, spilly.spillSize, spilledBefore)
	}
	spilly.spill = good
	if err := spilly.Spill(); err != nil {
		t.Fatal(err)
	}
	a, err := plain.Finish(base+9999, base+9998)
	if err != nil {
		t.Fatal(err)
	}
	b, err := spilly.Finish(base+9999, base+9998)
	if err != nil {
		t.Fatal(err)
	}
	defer spilly.Close()
	if a.Meta.Name != b.Meta.Name || !bytes.Equal(a.Meta.Data, b.Meta.Data) || len(a.Data) != len(b.Data) {
		t.Fatal("the failed spill changed the meta file")
	}
	for i := range a.Data {
		if a.Data[i].Name != b.Data[i].Name || !bytes.Equal(mustBytes(a.Data[i]), mustBytes(b.Data[i])) {
			t.Fatalf("object %d differs after a failed spill", i)
		}
	}
}

// TestFrameWindow: a file compresses with a window of at most 1 MiB, as
// TiKV's Level::Fastest (libzstd level 1: window log 19, 512 KiB) keeps
// its own. With the encoder's default 8 MiB window every compressor held
// 8 MiB of history per flush, 12 MiB of the 18.6 a flush adds to the
// builder's heap (BenchmarkFlushPeakHeap), for no smaller objects
// (stored-B/flushed-B in BenchmarkFlushPipeline, same to four digits).
func TestFrameWindow(t *testing.T) {
	b := NewBuilder(BuilderConfig{StoreID: 1})
	defer b.Close()
	r := rand.New(rand.NewSource(1))
	val := make([]byte, 1024)
	for i := range 4096 { // one 4+ MiB write-CF file
		r.Read(val[:64])
		if err := b.Add(RegionInfo{ID: 1}, Change{Key: tableKey(3, int64(i)), Value: val, StartTS: 10, CommitTS: 11}); err != nil {
			t.Fatal(err)
		}
	}
	f, err := b.Finish(100, 50)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if len(f.Data) != 1 {
		t.Fatalf("%d data objects, want 1", len(f.Data))
	}
	data := mustBytes(f.Data[0])
	for _, fi := range f.Metadata.FileGroups[0].DataFilesInfo {
		var h zstd.Header
		if err := h.Decode(data[fi.RangeOffset : fi.RangeOffset+fi.RangeLength]); err != nil {
			t.Fatal(err)
		}
		if fi.Length > 2<<20 && h.WindowSize > 1<<20 {
			t.Errorf("a file of %d bytes compressed with a %d-byte window, want at most 1 MiB", fi.Length, h.WindowSize)
		}
	}
}
