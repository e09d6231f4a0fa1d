package logfile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/storage"
)

// Reader is the part of storage.Storage the decoder needs.
type Reader interface {
	ReadFile(ctx context.Context, name string) ([]byte, error)
	// ReadRange reads length bytes at offset (fewer at the end).
	ReadRange(ctx context.Context, name string, offset, length int64) ([]byte, error)
	// List calls fn for every object whose name starts with prefix.
	List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error
}

// maxPlainFile bounds the plain bytes the decoder allocates for one file,
// whatever a (possibly corrupt) DataFileInfo claims.
const maxPlainFile = 1 << 30

// MetaFile is one decoded metadata file.
type MetaFile struct {
	Path     string
	Name     MetaName
	Metadata *brpb.Metadata
}

// ReadMetas lists and decodes every metadata file, ordered by flush ts,
// then store.
func ReadMetas(ctx context.Context, r Reader) ([]*MetaFile, error) {
	var out []*MetaFile
	err := r.List(ctx, MetaDir, func(o storage.ObjectInfo) error {
		if !strings.HasSuffix(o.Name, metaSuffix) {
			return nil
		}
		name, err := ParseMetaName(o.Name)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		out = append(out, &MetaFile{Path: o.Name, Name: name})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", MetaDir, err)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].Name, out[j].Name
		if a.FlushTS != b.FlushTS {
			return a.FlushTS < b.FlushTS
		}
		if a.StoreID != b.StoreID {
			return a.StoreID < b.StoreID
		}
		return out[i].Path < out[j].Path
	})
	for _, mf := range out {
		raw, err := r.ReadFile(ctx, mf.Path)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", mf.Path, err)
		}
		if mf.Metadata, err = DecodeMetadata(raw); err != nil {
			return nil, fmt.Errorf("%s: %w", mf.Path, err)
		}
		if !mf.Name.Legacy && uint64(mf.Metadata.StoreId) != mf.Name.StoreID {
			return nil, corrupt("%s: names store %d, holds store %d", mf.Path, mf.Name.StoreID, mf.Metadata.StoreId)
		}
	}
	return out, nil
}

// DecodeMetadata parses a metadata file's body. Only the V2 layout (file
// groups), which TiKV has written since v6.3, is supported.
func DecodeMetadata(raw []byte) (*brpb.Metadata, error) {
	md := &brpb.Metadata{}
	if err := md.Unmarshal(raw); err != nil {
		return nil, corrupt("metadata: %v", err)
	}
	if md.MetaVersion != brpb.MetaVersion_V2 || len(md.Files) > 0 {
		return nil, fmt.Errorf("metadata version %v (V1 file list of %d) is not supported", md.MetaVersion, len(md.Files))
	}
	return md, nil
}

// Decoder turns a file's stored bytes into its checked plain bytes.
// Not safe for concurrent use.
type Decoder struct{ zd *zstd.Decoder }

// NewDecoder returns a decoder; Close releases it.
func NewDecoder() (*Decoder, error) {
	zd, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxPlainFile))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return &Decoder{zd: zd}, nil
}

// Close releases the decoder.
func (d *Decoder) Close() { d.zd.Close() }

// Plain decompresses one file's stored bytes and checks its length and
// sha256 against fi, as BR's restore does before applying a file.
func (d *Decoder) Plain(stored []byte, fi *brpb.DataFileInfo) ([]byte, error) {
	if fi.FileEncryptionInfo != nil {
		return nil, fmt.Errorf("encrypted log files are not supported")
	}
	if fi.Length > maxPlainFile {
		return nil, corrupt("file of %d plain bytes", fi.Length)
	}
	var plain []byte
	switch fi.CompressionType {
	case brpb.CompressionType_UNKNOWN:
		plain = stored
	case brpb.CompressionType_ZSTD:
		var err error
		// The frame header or the zstd data may lie; grow past a modest
		// guess rather than trust fi.Length with a huge allocation.
		if plain, err = d.zd.DecodeAll(stored, make([]byte, 0, min(fi.Length, 64<<20))); err != nil {
			return nil, corrupt("zstd: %v", err)
		}
	default:
		return nil, fmt.Errorf("compression %v is not supported", fi.CompressionType)
	}
	if uint64(len(plain)) != fi.Length {
		return nil, corrupt("%d plain bytes, metadata says %d", len(plain), fi.Length)
	}
	if sum := sha256.Sum256(plain); !bytes.Equal(sum[:], fi.Sha256) {
		return nil, corrupt("sha256 %x, metadata says %x", sum, fi.Sha256)
	}
	return plain, nil
}

// ReadDataFile reads one file of a group the way BR's restore does (a
// range read of the object) and returns its checked plain bytes.
func ReadDataFile(ctx context.Context, r Reader, d *Decoder, objectPath string, fi *brpb.DataFileInfo) ([]byte, error) {
	if fi.RangeOffset > math.MaxInt64 || fi.RangeLength > math.MaxInt64-fi.RangeOffset {
		return nil, corrupt("%s: range %d+%d", objectPath, fi.RangeOffset, fi.RangeLength)
	}
	stored, err := r.ReadRange(ctx, objectPath, int64(fi.RangeOffset), int64(fi.RangeLength))
	if err != nil {
		return nil, fmt.Errorf("read %s at %d: %w", objectPath, fi.RangeOffset, err)
	}
	if uint64(len(stored)) != fi.RangeLength {
		return nil, corrupt("%s at %d: %d bytes, want %d", objectPath, fi.RangeOffset, len(stored), fi.RangeLength)
	}
	plain, err := d.Plain(stored, fi)
	if err != nil {
		return nil, fmt.Errorf("%s at %d: %w", objectPath, fi.RangeOffset, err)
	}
	return plain, nil
}

// Decoded is one committed change read back from storage.
type Decoded struct {
	Change
	RegionID int64
	Meta     string // the metadata file that lists it
	Object   string // the data object holding its write record
}

// Summary describes what Walk read.
type Summary struct {
	MetaFiles, DataObjects, DataFiles int
	Entries                           int64 // KV entries in all files
	// Skipped counts entries that are no change of a value: lock and
	// rollback records, and entries of Delete-type files.
	Skipped int64
	Changes int // joined changes (puts and deletes)
	// MinTS and MaxTS bound the commit ts of the changes.
	MinTS, MaxTS uint64
	// MinResolvedTS and MaxResolvedTS bound the resolved ts the metadata
	// files declare: a flush's resolved ts promises its store's data up
	// to it is listed by that file or an earlier one.
	MinResolvedTS, MaxResolvedTS uint64
}

// pendingWrite is a write record waiting for the end of its metadata file,
// when every default-CF value the flush holds is known.
type pendingWrite struct {
	raw      []byte
	commitTS uint64
	w        Write
	region   int64
	object   string
}

// Walk reads everything the metadata files list, in flush order: each
// data object, each file's range decompressed and checked (length,
// sha256, entry count, crc64xor, ts and key bounds against its
// DataFileInfo), and calls fn for every committed change — write-CF puts
// and deletes, joined with their default-CF values — in file order within
// each metadata file. Any inconsistency is an error naming the object, so
// Walk serves as the oracle of what storage holds.
func Walk(ctx context.Context, r Reader, fn func(Decoded) error) (Summary, error) {
	var sum Summary
	metas, err := ReadMetas(ctx, r)
	if err != nil {
		return sum, err
	}
	sum.MetaFiles = len(metas)
	dec, err := NewDecoder()
	if err != nil {
		return sum, err
	}
	defer dec.Close()

	// Long values by raw key and start ts. Kept for the whole walk: a
	// value is written once at prewrite and may serve a commit listed by a
	// later flush.
	defaults := map[string][]byte{}
	for i, mf := range metas {
		if i == 0 {
			sum.MinResolvedTS = mf.Metadata.ResolvedTs
		}
		sum.MinResolvedTS = min(sum.MinResolvedTS, mf.Metadata.ResolvedTs)
		sum.MaxResolvedTS = max(sum.MaxResolvedTS, mf.Metadata.ResolvedTs)
		var writes []pendingWrite
		for _, g := range mf.Metadata.FileGroups {
			if err := ctx.Err(); err != nil {
				return sum, err
			}
			obj, err := r.ReadFile(ctx, g.Path)
			if err != nil {
				return sum, fmt.Errorf("read %s (listed by %s): %w", g.Path, mf.Path, err)
			}
			sum.DataObjects++
			if uint64(len(obj)) != g.Length {
				return sum, corrupt("%s is %d bytes, %s says %d", g.Path, len(obj), mf.Path, g.Length)
			}
			for _, fi := range g.DataFilesInfo {
				sum.DataFiles++
				if fi.RangeOffset > uint64(len(obj)) || fi.RangeLength > uint64(len(obj))-fi.RangeOffset {
					return sum, corrupt("%s: range %d+%d is past its %d bytes", g.Path, fi.RangeOffset, fi.RangeLength, len(obj))
				}
				plain, err := dec.Plain(obj[fi.RangeOffset:fi.RangeOffset+fi.RangeLength], fi)
				if err != nil {
					return sum, fmt.Errorf("%s at %d: %w", g.Path, fi.RangeOffset, err)
				}
				if writes, err = decodeFile(&sum, defaults, writes, plain, g.Path, fi); err != nil {
					return sum, fmt.Errorf("%s at %d: %w", g.Path, fi.RangeOffset, err)
				}
			}
		}
		// Join first, hand out after: a flush with a missing value yields
		// nothing rather than a part.
		changes := make([]Decoded, 0, len(writes))
		for _, pw := range writes {
			c := Change{Key: pw.raw, StartTS: pw.w.StartTS, CommitTS: pw.commitTS, Op: OpPut}
			switch {
			case pw.w.Type == WriteDelete:
				c.Op = OpDelete
			case pw.w.HasShort:
				c.Value = pw.w.ShortValue
			default:
				v, ok := defaults[defaultKey(pw.raw, pw.w.StartTS)]
				if !ok {
					return sum, corrupt("%s: key %x committed at %d has no default-cf value (start ts %d) in this or an earlier flush",
						pw.object, pw.raw, pw.commitTS, pw.w.StartTS)
				}
				c.Value = v
			}
			changes = append(changes, Decoded{Change: c, RegionID: pw.region, Meta: mf.Path, Object: pw.object})
		}
		for _, d := range changes {
			if sum.Changes == 0 || d.CommitTS < sum.MinTS {
				sum.MinTS = d.CommitTS
			}
			sum.MaxTS = max(sum.MaxTS, d.CommitTS)
			sum.Changes++
			if err := fn(d); err != nil {
				return sum, err
			}
		}
	}
	return sum, nil
}

func defaultKey(raw []byte, startTS uint64) string {
	return string(binary.BigEndian.AppendUint64(append(make([]byte, 0, len(raw)+8), raw...), startTS))
}

// decodeFile checks one file's entries against its DataFileInfo, records
// its default-CF values and appends its puts and deletes to writes.
func decodeFile(sum *Summary, defaults map[string][]byte, writes []pendingWrite, plain []byte, object string, fi *brpb.DataFileInfo) ([]pendingWrite, error) {
	if fi.Cf != CFDefault && fi.Cf != CFWrite {
		return writes, corrupt("unknown column family %q", fi.Cf)
	}
	t := crcTables()
	var crc uint64
	var n int64
	for rest := plain; len(rest) > 0; n++ {
		k, v, next, err := NextFrame(rest)
		if err != nil {
			return writes, fmt.Errorf("entry %d: %w", n, err)
		}
		rest = next
		sum.Entries++
		crc ^= crcUpdate(crcUpdate(0, t, k), t, v)
		if bytes.Compare(k, fi.StartKey) < 0 || bytes.Compare(k, fi.EndKey) > 0 {
			return writes, corrupt("entry %d: key %x outside the file's range %x..%x", n, k, fi.StartKey, fi.EndKey)
		}
		if fi.Type == brpb.FileType_Delete {
			// A raft delete (e.g. GC) removes a version; it is no change.
			if _, ts, err := DecodeMVCCKey(k); err != nil || ts < fi.MinTs || ts > fi.MaxTs {
				return writes, corrupt("entry %d: delete of key %x: ts outside %d..%d or bad key (%v)", n, k, fi.MinTs, fi.MaxTs, err)
			}
			sum.Skipped++
			continue
		}
		e, err := DecodeKV(fi.Cf, k, v)
		if err != nil {
			return writes, fmt.Errorf("entry %d: %w", n, err)
		}
		if e.TS < fi.MinTs || e.TS > fi.MaxTs {
			return writes, corrupt("entry %d: key %x has ts %d outside the file's %d..%d", n, e.Key, e.TS, fi.MinTs, fi.MaxTs)
		}
		if e.CF == CFDefault {
			defaults[defaultKey(e.Key, e.TS)] = bytes.Clone(v)
			continue
		}
		if e.Write.StartTS < fi.MinBeginTsInDefaultCf {
			return writes, corrupt("entry %d: key %x starts at %d, before the file's min begin ts %d", n, e.Key, e.Write.StartTS, fi.MinBeginTsInDefaultCf)
		}
		if e.Write.Type != WritePut && e.Write.Type != WriteDelete {
			sum.Skipped++ // locks and rollbacks change no value
			continue
		}
		writes = append(writes, pendingWrite{raw: e.Key, commitTS: e.TS, w: e.Write, region: fi.RegionId, object: object})
	}
	if n != fi.NumberOfEntries {
		return writes, corrupt("%d entries, metadata says %d", n, fi.NumberOfEntries)
	}
	// Older TiKV left crc64xor empty.
	if fi.Crc64Xor != 0 && crc != fi.Crc64Xor {
		return writes, corrupt("crc64xor %016x, metadata says %016x", crc, fi.Crc64Xor)
	}
	return writes, nil
}
