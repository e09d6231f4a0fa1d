package logfile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"runtime/metrics"
	"strings"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
)

// fuzzMaxPlain bounds a file's plain bytes in the fuzz targets, where the
// real bound (1 GiB) would only make runs slow: an allocation driven by a
// length field shows as a multiple of it.
const fuzzMaxPlain = 256 << 10

// allocated is the bytes allocated on the heap so far (all goroutines);
// runtime/metrics reads it without stopping the world.
func allocated() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// realFlushes are flushes as the agent and TiKV name them: the golden one
// (pinned byte for byte by TestGolden) and one with lineage and checksum.
func realFlushes(f *testing.F) []*Flush {
	g, _ := goldenFlush(f)
	return []*Flush{g, sweepFlush(f, true), oneFileFlush(f)}
}

// FuzzMetaFile: a meta file's name and body as Audit reads them (parse,
// decode, every field check) never panic, and a body that passes every
// check re-encodes to one that passes too.
func FuzzMetaFile(f *testing.F) {
	for _, fl := range realFlushes(f) {
		f.Add(fl.Meta.Name, fl.Meta.Data)
	}
	f.Add("v1/backupmeta/0000000000000010-0000000000000001-0000000000000002-00000000000000ff.meta", []byte{0x38, 0x01})
	f.Fuzz(func(t *testing.T, name string, body []byte) {
		n, err := ParseMetaName(name)
		if err != nil {
			return
		}
		md, err := DecodeMetadata(body)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !strings.Contains(err.Error(), "not supported") {
				t.Fatalf("decode error of no kind: %v", err)
			}
			return
		}
		mf := &MetaFile{Path: name, Name: n, Metadata: md}
		fs := &findings{}
		checkMeta(fs, mf, body, false)
		for _, f := range fs.list {
			if f.Object != name || f.Err == nil {
				t.Fatalf("finding about %q, not the meta file: %v", f.Object, f.Err)
			}
		}
		if fs.failed > 0 || n.HasChecksum {
			return // the checksum covers these bytes exactly
		}
		again, err := md.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		md2, err := DecodeMetadata(again)
		if err != nil {
			t.Fatalf("re-encoded body: %v", err)
		}
		fs2 := &findings{}
		checkMeta(fs2, &MetaFile{Path: name, Name: n, Metadata: md2}, again, false)
		if fs2.failed > 0 {
			t.Fatalf("passes, but its re-encoding fails: %v", fs2.list)
		}
	})
}

// FuzzDataFile: a stored file (zstd frame or plain), its DataFileInfo's
// length and checksum, then its entries, as Audit reads them. Never a
// panic; memory stays within a few times the plain bound whatever the
// length fields say; a file that passes has exactly the length and sha256
// it claims and decodes entry by entry.
func FuzzDataFile(f *testing.F) {
	for _, fl := range realFlushes(f) {
		for gi, g := range fl.Metadata.FileGroups {
			for _, fi := range g.DataFilesInfo {
				stored := mustBytes(fl.Data[gi])[fi.RangeOffset : fi.RangeOffset+fi.RangeLength]
				f.Add(stored, fi.Length, uint8(fi.CompressionType), fi.Sha256, fi.Cf == CFWrite, fi.MinTs, fi.MaxTs, fi.NumberOfEntries)
			}
		}
	}
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x04, 0x58, 0x45, 0x00, 0x00}, uint64(1<<40), uint8(brpb.CompressionType_ZSTD), make([]byte, 32), true, uint64(0), uint64(1), int64(1))
	dec, err := newDecoder(fuzzMaxPlain)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, stored []byte, length uint64, compression uint8, sum []byte, write bool, minTS, maxTS uint64, entries int64) {
		fi := &brpb.DataFileInfo{Length: length, CompressionType: brpb.CompressionType(compression), Sha256: sum,
			Cf: CFDefault, Type: brpb.FileType_Put, MinTs: minTS, MaxTs: maxTS, NumberOfEntries: entries, EndKey: bytes.Repeat([]byte{0xff}, 64)}
		if write {
			fi.Cf = CFWrite
		}
		before := allocated()
		plain, err := dec.Plain(stored, fi)
		if used := allocated() - before; used > 4*fuzzMaxPlain+(1<<20)+64*uint64(len(stored)) {
			t.Fatalf("%d bytes allocated to decode %d stored bytes claiming %d plain", used, len(stored), length)
		}
		if err != nil {
			return
		}
		if uint64(len(plain)) != length {
			t.Fatalf("%d plain bytes pass for a length of %d", len(plain), length)
		}
		if got := sha256.Sum256(plain); !bytes.Equal(got[:], sum) {
			t.Fatal("a plain that does not match its sha256 passes")
		}
		// The entries: whatever they hold, an error or a consistent file.
		fi.StartKey, fi.EndKey = nil, bytes.Repeat([]byte{0xff}, 1<<10)
		if d, err := checkData(plain, "o", fi, false); err == nil && d.entries != entries {
			t.Fatalf("%d entries pass for a count of %d", d.entries, entries)
		}
	})
}

// FuzzAudit: whatever a meta file and the object it lists hold, Audit
// returns findings rather than panicking, names an object in each, and
// allocates no more than its inputs and the plain bound justify.
func FuzzAudit(f *testing.F) {
	for _, fl := range realFlushes(f) {
		f.Add(fl.Meta.Name, fl.Meta.Data, mustBytes(fl.Data[0]))
	}
	f.Fuzz(func(t *testing.T, name string, meta, object []byte) {
		// A hang would stall the fuzzer silently; crash instead, so the
		// input is kept.
		hang := time.AfterFunc(10*time.Second, func() { panic("FuzzAudit input takes over 10 s") })
		defer hang.Stop()
		n, err := ParseMetaName(name)
		if err != nil || !strings.HasPrefix(name, MetaDir) || strings.ContainsAny(name[len(MetaDir):], "/") {
			return
		}
		st := newMapReader()
		files := 0
		if md, err := DecodeMetadata(meta); err == nil {
			for _, g := range md.FileGroups {
				files += len(g.DataFilesInfo)
				if _, err := ParseDataName(g.Path); err == nil {
					st.put(Object{Name: g.Path, Data: object})
				}
			}
		}
		st.put(Object{Name: name, Data: meta})
		before := allocated()
		res, err := audit(context.Background(), st, auditOptions{maxPlain: fuzzMaxPlain}, func(Decoded) error { return nil })
		if err != nil {
			t.Fatalf("audit of %s: %v", n.Format(), err)
		}
		limit := uint64(files)*(4*fuzzMaxPlain+(1<<20)) + 256*uint64(len(meta)+len(object)) + 16<<20
		if used := allocated() - before; used > limit {
			t.Fatalf("%d bytes allocated for %d files in %d+%d input bytes", used, files, len(meta), len(object))
		}
		for _, fd := range res.Findings {
			if fd.Object == "" || fd.Err == nil {
				t.Fatalf("finding names no object: %+v", fd)
			}
		}
	})
}

// FuzzGlobalCheckpoint: the name and body of v1/global_checkpoint/<store>.ts.
func FuzzGlobalCheckpoint(f *testing.F) {
	o := GlobalCheckpointObject(12, 450591562137600000)
	f.Add(o.Name, o.Data)
	f.Add("v1/global_checkpoint/012.ts", []byte{1})
	f.Fuzz(func(t *testing.T, name string, body []byte) {
		if store, err := ParseGlobalCheckpointName(name); err == nil && GlobalCheckpointName(store) != name {
			t.Fatalf("%q parses as store %d, whose name is %q", name, store, GlobalCheckpointName(store))
		}
		ts, err := DecodeGlobalCheckpoint(body)
		if err == nil && !bytes.Equal(EncodeGlobalCheckpoint(ts), body) {
			t.Fatalf("%x decodes to %d, which encodes differently", body, ts)
		}
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("error of no kind: %v", err)
		}
	})
}
