package logfile

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	brpb "github.com/pingcap/kvproto/pkg/brpb"
)

// oneFileFlush is a flush of a single write-CF file of short values.
func oneFileFlush(t testing.TB) *Flush {
	b := NewBuilder(BuilderConfig{StoreID: 3, NewID: seqIDs()})
	for i := int64(0); i < 5; i++ {
		if err := b.Add(RegionInfo{ID: 1}, Change{Key: tableKey(1, i), Value: []byte("value"), StartTS: 100 + uint64(2*i), CommitTS: 101 + uint64(2*i)}); err != nil {
			t.Fatal(err)
		}
	}
	f, err := b.Finish(1000, 999)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Data) != 1 || len(f.Metadata.FileGroups[0].DataFilesInfo) != 1 {
		t.Fatal("want one object of one file")
	}
	return f
}

func theFile(f *Flush) *brpb.DataFileInfo { return f.Metadata.FileGroups[0].DataFilesInfo[0] }

func plainOf(t testing.TB, f *Flush) []byte {
	st := newMapReader()
	st.upload(f)
	dec, err := NewDecoder()
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	p, err := ReadDataFile(context.Background(), st, dec, f.Data[0].Name, theFile(f))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// setPlain replaces the file's content with plain, compressed, with a
// matching length and sha256: what a buggy writer would produce. Entry
// count and crc64xor are recomputed only when fix is set.
func setPlain(t testing.TB, f *Flush, plain []byte, fix bool) {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	comp := enc.EncodeAll(plain, nil)
	fi := theFile(f)
	sum := sha256.Sum256(plain)
	fi.Sha256, fi.Length, fi.RangeLength = sum[:], uint64(len(plain)), uint64(len(comp))
	if fix {
		n := int64(0)
		for rest := plain; len(rest) > 0; n++ {
			if _, _, rest, err = NextFrame(rest); err != nil {
				break
			}
		}
		fi.NumberOfEntries = n
		fi.Crc64Xor, _ = crcXorFrames(plain)
	}
	f.Metadata.FileGroups[0].Length = uint64(len(comp))
	f.Data[0] = NewDataObject(f.Data[0].Name, comp)
	remarshal(t, f)
}

func remarshal(t testing.TB, f *Flush) {
	raw, err := f.Metadata.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	f.Meta.Data = raw
}

// resync makes the groups, the metadata and the name agree with the files
// again after a test changed a file's ts, so that only the data can tell.
func resync(t testing.TB, f *Flush) {
	md := f.Metadata
	f.Name.MinBeginTS = 0
	for i, g := range md.FileGroups {
		g.MinTs, g.MaxTs = ^uint64(0), 0
		for _, fi := range g.DataFilesInfo {
			g.MinTs, g.MaxTs = min(g.MinTs, fi.MinTs), max(g.MaxTs, fi.MaxTs)
			if f.Name.MinBeginTS == 0 || fi.MinBeginTsInDefaultCf < f.Name.MinBeginTS {
				f.Name.MinBeginTS = fi.MinBeginTsInDefaultCf
			}
		}
		if i == 0 {
			md.MinTs, md.MaxTs = g.MinTs, g.MaxTs
		}
		md.MinTs, md.MaxTs = min(md.MinTs, g.MinTs), max(md.MaxTs, g.MaxTs)
	}
	f.Name.MinTS, f.Name.MaxTS = md.MinTs, md.MaxTs
	f.Meta.Name = f.Name.Format()
	remarshal(t, f)
}

// TestCorruption: every kind of damage is an error naming where it is,
// never a panic and never silently fewer changes.
func TestCorruption(t *testing.T) {
	cases := []struct {
		name   string
		mangle func(t *testing.T, f *Flush)
		want   string // in the error
	}{
		{"truncated frame", func(t *testing.T, f *Flush) { p := plainOf(t, f); setPlain(t, f, p[:len(p)-3], false) }, "truncated frame"},
		{"truncated frame header", func(t *testing.T, f *Flush) { p := plainOf(t, f); setPlain(t, f, append(p, 1, 0), false) }, "truncated frame"},
		{"bad sha256", func(t *testing.T, f *Flush) { theFile(f).Sha256[0] ^= 1; remarshal(t, f) }, "sha256"},
		{"flipped plain byte", func(t *testing.T, f *Flush) {
			p := plainOf(t, f)
			p[len(p)-1] ^= 1
			sum := theFile(f).Sha256
			setPlain(t, f, p, false)
			theFile(f).Sha256 = sum
			remarshal(t, f)
		}, "sha256"},
		{"bad zstd magic", func(t *testing.T, f *Flush) {
			d := mustBytes(f.Data[0])
			d[0] ^= 0xff
			f.Data[0] = NewDataObject(f.Data[0].Name, d)
		}, "zstd"},
		{"bad zstd block", func(t *testing.T, f *Flush) {
			d := mustBytes(f.Data[0])
			for i := 6; i < len(d); i++ { // past the frame header
				d[i] ^= 0x5a
			}
			f.Data[0] = NewDataObject(f.Data[0].Name, d)
		}, "corrupt"},
		{"bad write record", func(t *testing.T, f *Flush) {
			p := AppendFrame(plainOf(t, f), EncodeMVCCKey(tableKey(1, 9), 105), []byte{'X', 1})
			theFile(f).EndKey = EncodeMVCCKey(tableKey(1, 9), 0)
			setPlain(t, f, p, true)
		}, "unknown write type"},
		{"bad mvcc key", func(t *testing.T, f *Flush) {
			p := AppendFrame(plainOf(t, f), []byte("t\x80not-memcomparable"), EncodeWrite(WritePut, 1, nil, false))
			theFile(f).EndKey = []byte("u")
			setPlain(t, f, p, true)
		}, "mvcc key"},
		{"bad meta proto", func(t *testing.T, f *Flush) { f.Meta.Data = []byte("\xff\xff\xff\xff") }, "metadata"},
		{"v1 metadata", func(t *testing.T, f *Flush) { f.Metadata.MetaVersion = brpb.MetaVersion_V1; remarshal(t, f) }, "not supported"},
		{"store differs from name", func(t *testing.T, f *Flush) { f.Metadata.StoreId = 4; remarshal(t, f) }, "store"},
		{"truncated object", func(t *testing.T, f *Flush) {
			d := mustBytes(f.Data[0])
			f.Data[0] = NewDataObject(f.Data[0].Name, d[:len(d)-3])
		}, "bytes"},
		{"missing object", func(t *testing.T, f *Flush) { f.Data = nil }, "listed by"},
		{"range past the object", func(t *testing.T, f *Flush) { theFile(f).RangeLength += 1 << 40; remarshal(t, f) }, "past"},
		{"huge length claim", func(t *testing.T, f *Flush) { theFile(f).Length = 1 << 62; remarshal(t, f) }, "plain bytes"},
		{"wrong length", func(t *testing.T, f *Flush) { theFile(f).Length--; remarshal(t, f) }, "plain bytes"},
		{"wrong entry count", func(t *testing.T, f *Flush) { theFile(f).NumberOfEntries++; remarshal(t, f) }, "entries"},
		{"wrong crc64xor", func(t *testing.T, f *Flush) { theFile(f).Crc64Xor ^= 1; remarshal(t, f) }, "crc64xor"},
		{"ts outside the file", func(t *testing.T, f *Flush) { theFile(f).MaxTs = 102; resync(t, f) }, "outside"},
		{"ts range wider than the entries", func(t *testing.T, f *Flush) { theFile(f).MaxTs = 200; resync(t, f) }, "ts 101..109, metadata says 101..200"},
		{"ts range in the file only", func(t *testing.T, f *Flush) { theFile(f).MaxTs = 200; remarshal(t, f) }, "its files give"},
		{"key outside the file", func(t *testing.T, f *Flush) { theFile(f).EndKey = theFile(f).StartKey; remarshal(t, f) }, "outside"},
		{"begin ts above a start ts", func(t *testing.T, f *Flush) { theFile(f).MinBeginTsInDefaultCf = 103; remarshal(t, f) }, "min begin"},
		{"unknown cf", func(t *testing.T, f *Flush) { theFile(f).Cf = "lock"; remarshal(t, f) }, "column family"},
		{"unknown compression", func(t *testing.T, f *Flush) { theFile(f).CompressionType = brpb.CompressionType_LZ4; remarshal(t, f) }, "not supported"},
		{"long value without its default", func(t *testing.T, f *Flush) {
			p := AppendFrame(plainOf(t, f), EncodeMVCCKey(tableKey(1, 9), 110), EncodeWrite(WritePut, 109, nil, false))
			theFile(f).EndKey, theFile(f).MaxTs = EncodeMVCCKey(tableKey(1, 9), 110), 110
			setPlain(t, f, p, true)
			resync(t, f)
		}, "no default-cf value"},
		{"start key below the entries", func(t *testing.T, f *Flush) { theFile(f).StartKey = []byte("t"); remarshal(t, f) }, "metadata says"},
		{"table id", func(t *testing.T, f *Flush) { theFile(f).TableId = 2; remarshal(t, f) }, "table"},
		{"is_meta", func(t *testing.T, f *Flush) { theFile(f).IsMeta, theFile(f).TableId = true, 0; remarshal(t, f) }, "is_meta"},
		{"delete-type file", func(t *testing.T, f *Flush) { theFile(f).Type = brpb.FileType_Delete; remarshal(t, f) }, "delete of key"},
		{"zstd frame size", func(t *testing.T, f *Flush) {
			p := plainOf(t, f)
			theFile(f).Length = uint64(len(p)) + 1
			remarshal(t, f)
		}, "zstd frame of"},
		{"flags in the meta name", func(t *testing.T, f *Flush) { f.Name.Flags = 0; f.Meta.Name = f.Name.Format() }, "flags"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := oneFileFlush(t)
			c.mangle(t, f)
			st := newMapReader()
			st.upload(f)
			n := 0
			_, err := Walk(context.Background(), st, func(Decoded) error { n++; return nil })
			if err == nil {
				t.Fatalf("not detected (%d changes read)", n)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not mention %q", err, c.want)
			}
			if n != 0 {
				t.Fatalf("%d changes of a damaged flush were handed out", n)
			}
			if !strings.Contains(c.name, "object") && !strings.Contains(c.name, "meta") && !strings.Contains(c.name, "store") && !strings.Contains(c.name, "v1") &&
				!strings.Contains(err.Error(), f.Metadata.FileGroups[0].Path) {
				t.Fatalf("error %q does not name the object", err)
			}
		})
	}
	// The untouched flush reads back fine: the cases above fail for
	// their damage only.
	st := newMapReader()
	st.upload(oneFileFlush(t))
	if got, _ := walkAll(t, st); len(got) != 5 {
		t.Fatalf("%d changes from the intact flush", len(got))
	}
}

// TestWalkStopsOnCallbackError: fn's error ends the walk and comes back.
func TestWalkStopsOnCallbackError(t *testing.T) {
	st := newMapReader()
	st.upload(oneFileFlush(t))
	stop := errors.New("stop")
	n := 0
	if _, err := Walk(context.Background(), st, func(Decoded) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
		t.Fatalf("Walk = %v after %d calls", err, n)
	}
}

// TestLengthClaimsAllocateNothing: a zstd frame and a DataFileInfo that
// agree on a huge plain size, around a few stored bytes, are refused
// before anything is allocated for them.
func TestLengthClaimsAllocateNothing(t *testing.T) {
	dec, err := NewDecoder()
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	// A single-segment frame header saying 768 MiB, then one RLE block.
	const size = 768 << 20
	frame := binary.LittleEndian.AppendUint64([]byte{0x28, 0xb5, 0x2f, 0xfd, 0xe0}, size)
	frame = append(frame, 0x03, 0x00, 0x10, 'x')
	fi := &brpb.DataFileInfo{Length: size, CompressionType: brpb.CompressionType_ZSTD, Sha256: make([]byte, 32)}
	before := allocated()
	_, err = dec.Plain(frame, fi)
	if used := allocated() - before; used > 1<<20 {
		t.Fatalf("%d bytes allocated for %d stored bytes", used, len(frame))
	}
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "cannot hold") {
		t.Fatalf("error %v", err)
	}
}
