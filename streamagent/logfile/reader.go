package logfile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/storage"
)

// Reader is the part of storage.Storage the decoder needs.
type Reader interface {
	ReadFile(ctx context.Context, name string) ([]byte, error)
	List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error
}

// MetaFile is one decoded metadata file.
type MetaFile struct {
	Path     string
	Name     MetaName
	Metadata *brpb.Metadata
}

// ReadMetas lists and decodes every metadata file, ordered by flush ts
// (names sort that way).
func ReadMetas(ctx context.Context, r Reader) ([]*MetaFile, error) {
	var names []string
	err := r.List(ctx, MetaDir, func(o storage.ObjectInfo) error {
		if strings.HasSuffix(o.Name, ".meta") {
			names = append(names, o.Name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", MetaDir, err)
	}
	sort.Strings(names)
	out := make([]*MetaFile, 0, len(names))
	for _, n := range names {
		name, err := ParseMetaName(n)
		if err != nil {
			return nil, err
		}
		raw, err := r.ReadFile(ctx, n)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", n, err)
		}
		md := &brpb.Metadata{}
		if err := md.Unmarshal(raw); err != nil {
			return nil, fmt.Errorf("%w: decode %s: %v", ErrCorrupt, n, err)
		}
		if md.MetaVersion != brpb.MetaVersion_V2 {
			return nil, fmt.Errorf("%s: metadata version %v is not supported", n, md.MetaVersion)
		}
		out = append(out, &MetaFile{Path: n, Name: name, Metadata: md})
	}
	return out, nil
}

// Decoded is one committed change read back from storage.
type Decoded struct {
	Change
	RegionID int64
	Meta     string // the metadata file that lists it
}

// Summary describes what Walk read.
type Summary struct {
	MetaFiles, DataObjects, DataFiles int
	Entries                           int64 // KV entries in all files
	Changes                           int   // joined changes (puts and deletes)
	MinTS, MaxTS                      uint64
	// MaxResolvedTS is the highest resolved ts any metadata file declares:
	// a flush's resolved ts promises its store's data up to it is listed.
	MaxResolvedTS uint64
}

// Walk reads everything the metadata files list — data objects, each
// file's range checked against its sha256 and decompressed — and calls fn
// for every committed change (write-CF puts and deletes joined with their
// default-CF values). Corruption anywhere is an error naming the object.
func Walk(ctx context.Context, r Reader, fn func(Decoded) error) (Summary, error) {
	var sum Summary
	metas, err := ReadMetas(ctx, r)
	if err != nil {
		return sum, err
	}
	sum.MetaFiles = len(metas)
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return sum, err
	}
	defer dec.Close()

	type writeEntry struct {
		raw      []byte
		commitTS uint64
		w        Write
		region   int64
		meta     string
	}
	var writes []writeEntry
	defaults := map[string][]byte{} // raw key + start ts → value
	defKey := func(raw []byte, ts uint64) string { return fmt.Sprintf("%x@%d", raw, ts) }

	for _, mf := range metas {
		sum.MaxResolvedTS = max(sum.MaxResolvedTS, mf.Metadata.ResolvedTs)
		for _, g := range mf.Metadata.FileGroups {
			obj, err := r.ReadFile(ctx, g.Path)
			if err != nil {
				return sum, fmt.Errorf("read %s (listed by %s): %w", g.Path, mf.Path, err)
			}
			sum.DataObjects++
			if uint64(len(obj)) != g.Length {
				return sum, fmt.Errorf("%w: %s is %d bytes, %s says %d", ErrCorrupt, g.Path, len(obj), mf.Path, g.Length)
			}
			for _, fi := range g.DataFilesInfo {
				sum.DataFiles++
				end := fi.RangeOffset + fi.RangeLength
				if end > uint64(len(obj)) || fi.RangeOffset > end {
					return sum, fmt.Errorf("%w: %s: range %d+%d past the object", ErrCorrupt, g.Path, fi.RangeOffset, fi.RangeLength)
				}
				plain, err := dec.DecodeAll(obj[fi.RangeOffset:end], make([]byte, 0, fi.Length))
				if err != nil {
					return sum, fmt.Errorf("%w: %s at %d: zstd: %v", ErrCorrupt, g.Path, fi.RangeOffset, err)
				}
				if got := sha256.Sum256(plain); !bytes.Equal(got[:], fi.Sha256) {
					return sum, fmt.Errorf("%w: %s at %d: sha256 mismatch", ErrCorrupt, g.Path, fi.RangeOffset)
				}
				for rest := plain; len(rest) > 0; {
					var k, v []byte
					if k, v, rest, err = NextFrame(rest); err != nil {
						return sum, fmt.Errorf("%s at %d: %w", g.Path, fi.RangeOffset, err)
					}
					sum.Entries++
					raw, ts, err := DecodeMVCCKey(k)
					if err != nil {
						return sum, fmt.Errorf("%s at %d: %w", g.Path, fi.RangeOffset, err)
					}
					switch fi.Cf {
					case CFDefault:
						defaults[defKey(raw, ts)] = v
					case CFWrite:
						w, err := DecodeWrite(v)
						if err != nil {
							return sum, fmt.Errorf("%s at %d: key %q: %w", g.Path, fi.RangeOffset, raw, err)
						}
						writes = append(writes, writeEntry{raw: raw, commitTS: ts, w: w, region: fi.RegionId, meta: mf.Path})
					default:
						return sum, fmt.Errorf("%w: %s: unknown cf %q", ErrCorrupt, g.Path, fi.Cf)
					}
				}
			}
		}
	}
	for _, we := range writes {
		c := Change{Key: we.raw, StartTS: we.w.StartTS, CommitTS: we.commitTS}
		switch we.w.Type {
		case WriteDelete:
			c.Op = OpDelete
		case WritePut:
			c.Op = OpPut
			if we.w.HasShort {
				c.Value = we.w.ShortValue
			} else {
				v, ok := defaults[defKey(we.raw, we.w.StartTS)]
				if !ok {
					return sum, fmt.Errorf("%w: %s: key %q committed at %d has no default-cf value (start %d)", ErrCorrupt, we.meta, we.raw, we.commitTS, we.w.StartTS)
				}
				c.Value = v
			}
		default:
			continue // locks and rollbacks change nothing
		}
		if sum.Changes == 0 || c.CommitTS < sum.MinTS {
			sum.MinTS = c.CommitTS
		}
		sum.MaxTS = max(sum.MaxTS, c.CommitTS)
		sum.Changes++
		if err := fn(Decoded{Change: c, RegionID: we.region, Meta: we.meta}); err != nil {
			return sum, err
		}
	}
	return sum, nil
}
