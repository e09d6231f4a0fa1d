package logfile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
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
type Decoder struct {
	zd       *zstd.Decoder
	maxPlain uint64
}

// zstdWindow is the window a frame may ask for beyond its file's length:
// zstd levels up to 19 use at most 8 MiB, and TiKV's streaming encoder
// (Level::Fastest, no content size) asks for 512 KiB even for tiny files.
const zstdWindow = 8 << 20

// zstdBlockMax is the most plain bytes one zstd block holds.
const zstdBlockMax = 128 << 10

// NewDecoder returns a decoder; Close releases it.
func NewDecoder() (*Decoder, error) { return newDecoder(maxPlainFile) }

// newDecoder bounds what one file may decompress to (and so allocate).
func newDecoder(maxPlain uint64) (*Decoder, error) {
	zd, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxPlain))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return &Decoder{zd: zd, maxPlain: maxPlain}, nil
}

// Close releases the decoder.
func (d *Decoder) Close() { d.zd.Close() }

// Plain decompresses one file's stored bytes and checks its length and
// sha256 against fi, as BR's restore does before applying a file.
//
// Memory follows the data, never a length field alone: the frame must
// agree with fi.Length about the plain size before anything is allocated
// for it, its window may not exceed what that size needs, and the output
// grows as bytes actually decompress, up to fi.Length+1.
func (d *Decoder) Plain(stored []byte, fi *brpb.DataFileInfo) ([]byte, error) {
	if fi.FileEncryptionInfo != nil {
		return nil, fmt.Errorf("encrypted log files are not supported")
	}
	if fi.Length > d.maxPlain {
		return nil, corrupt("file of %d plain bytes (at most %d)", fi.Length, d.maxPlain)
	}
	var plain []byte
	switch fi.CompressionType {
	case brpb.CompressionType_UNKNOWN:
		plain = stored
	case brpb.CompressionType_ZSTD:
		// zstd's densest block (RLE: 3 bytes of header, 1 of content)
		// yields at most 128 KiB, so stored bytes bound the plain ones,
		// whatever the frame header and the metadata claim.
		if fi.Length > (uint64(len(stored))/4+1)*zstdBlockMax {
			return nil, corrupt("%d stored bytes cannot hold %d plain bytes", len(stored), fi.Length)
		}
		var h zstd.Header
		if err := h.Decode(stored); err != nil {
			return nil, corrupt("zstd: %v", err)
		}
		if h.HasFCS && h.FrameContentSize != fi.Length {
			return nil, corrupt("zstd frame of %d plain bytes, metadata says %d", h.FrameContentSize, fi.Length)
		}
		window := max(fi.Length, min(zstdWindow, d.maxPlain), zstd.MinWindowSize)
		if err := d.zd.ResetWithOptions(bytes.NewReader(stored), zstd.WithDecoderMaxWindow(window), zstd.WithDecoderMaxMemory(window)); err != nil {
			return nil, corrupt("zstd: %v", err)
		}
		var out bytes.Buffer
		out.Grow(int(min(fi.Length, 1<<20)))
		if _, err := out.ReadFrom(io.LimitReader(d.zd, int64(fi.Length)+1)); err != nil {
			return nil, corrupt("zstd: %v", err)
		}
		plain = out.Bytes()
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
