package logfile

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc64"
	"io"
	"os"
	"sort"
	"sync"

	"github.com/klauspost/compress/zstd"
	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/client-go/v2/util/codec"
)

// DefaultFileSizeLimit is TiKV's file-size-limit: the uncompressed bytes of
// one merged object.
const DefaultFileSizeLimit = 256 << 20

// crcTable is CRC-64/XZ (ECMA-182, reflected, inverted), the crc64fast
// crate's algorithm; Go's crc64 with the ECMA table computes the same.
var crcTable = crc64.MakeTable(crc64.ECMA)

// RegionInfo says which region a change came from.
type RegionInfo struct {
	ID               uint64
	StartKey, EndKey []byte // as PD reports them (encoded)
	Epoch            *metapb.RegionEpoch
}

// BuilderConfig configures a Builder.
type BuilderConfig struct {
	StoreID       uint64
	FileSizeLimit int           // default DefaultFileSizeLimit
	NewID         func() string // unique object-name part; default a random UUID
	// SpillDir receives the plain bytes of files when Spill is called; ""
	// means the system temp dir.
	SpillDir string
}

// fileKey groups entries into files, as TiKV's TempFileKey does.
type fileKey struct {
	isMeta   bool
	tableID  int64
	regionID uint64
	cf       string
	fileType brpb.FileType
}

type fileBuf struct {
	key    fileKey
	region RegionInfo
	plain  []byte // the in-memory tail; the head may be spilled
	// spilled is the temp file holding the head of this file's plain bytes
	// once the builder went over its memory quota.
	spilled      *os.File
	spilledBytes int
	crc          uint64
	entries      int64
	minTS, maxTS uint64
	minBegin     uint64 // 0 = none
	first, last  []byte
}

// Builder collects one flush's changes and produces its objects. It is
// pure: no IO, no clock. Not safe for concurrent use.
type Builder struct {
	cfg    BuilderConfig
	files  map[fileKey]*fileBuf
	size   int // all plain bytes added
	memory int // plain bytes held in memory (size minus spilled)
	count  int
}

// NewBuilder returns an empty builder.
func NewBuilder(cfg BuilderConfig) *Builder {
	if cfg.FileSizeLimit <= 0 {
		cfg.FileSizeLimit = DefaultFileSizeLimit
	}
	if cfg.NewID == nil {
		cfg.NewID = newUUID
	}
	return &Builder{cfg: cfg, files: map[fileKey]*fileBuf{}}
}

// Size is the uncompressed bytes buffered so far, in memory or spilled.
func (b *Builder) Size() int { return b.size }

// Memory is the uncompressed bytes held in memory.
func (b *Builder) Memory() int { return b.memory }

// Spill moves every file's in-memory bytes to its temp file, so memory
// stays under the caller's quota; Finish reads them back as a stream.
func (b *Builder) Spill() error {
	for _, f := range b.files {
		if len(f.plain) == 0 {
			continue
		}
		if f.spilled == nil {
			tf, err := os.CreateTemp(b.cfg.SpillDir, "logbackup-*.temp.log")
			if err != nil {
				return fmt.Errorf("spill: %w", err)
			}
			f.spilled = tf
		}
		if _, err := f.spilled.Write(f.plain); err != nil {
			return fmt.Errorf("spill to %s: %w", f.spilled.Name(), err)
		}
		f.spilledBytes += len(f.plain)
		b.memory -= len(f.plain)
		f.plain = nil // release, not just truncate: the point is the memory
	}
	return nil
}

// Close removes the builder's temp files (after Finish, or to discard).
func (b *Builder) Close() {
	for _, f := range b.files {
		if f.spilled != nil {
			name := f.spilled.Name()
			f.spilled.Close()
			os.Remove(name)
			f.spilled = nil
		}
	}
}

// Changes is the number of changes added.
func (b *Builder) Changes() int { return b.count }

// Add records one committed change of a region. Entries are encoded
// straight into their file's buffer: this is the hot path of a flush.
func (b *Builder) Add(region RegionInfo, c Change) {
	b.count++
	isMeta := IsMetaKey(c.Key)
	var table int64
	if !isMeta {
		table = TableID(c.Key)
	}
	switch {
	case c.Op == OpDelete:
		b.appendEntry(region, fileKey{isMeta, table, region.ID, CFWrite, brpb.FileType_Put}, c.Key, c.CommitTS, c.StartTS, WriteDelete, nil, false)
	case len(c.Value) <= ShortValueMaxLen:
		b.appendEntry(region, fileKey{isMeta, table, region.ID, CFWrite, brpb.FileType_Put}, c.Key, c.CommitTS, c.StartTS, WritePut, c.Value, true)
	default:
		b.appendEntry(region, fileKey{isMeta, table, region.ID, CFDefault, brpb.FileType_Put}, c.Key, c.StartTS, c.StartTS, 0, c.Value, false)
		b.appendEntry(region, fileKey{isMeta, table, region.ID, CFWrite, brpb.FileType_Put}, c.Key, c.CommitTS, c.StartTS, WritePut, nil, false)
	}
}

// appendEntry frames one entry into its file: the MVCC key of raw at ts,
// and either a Write record (writeType != 0) or the raw value.
func (b *Builder) appendEntry(region RegionInfo, fk fileKey, raw []byte, ts, startTS uint64, writeType byte, value []byte, short bool) {
	f := b.files[fk]
	if f == nil {
		// A 16 KiB start skips the many tiny regrowths that cost a fifth of
		// the flush's CPU, without reserving much per region: with 10K
		// regions a larger start would dominate the agent's memory.
		f = &fileBuf{key: fk, region: region, minTS: ^uint64(0), plain: make([]byte, 0, 16<<10)}
		b.files[fk] = f
	}
	buf := f.plain
	before := len(buf)
	buf = append(buf, 0, 0, 0, 0) // key length, patched below
	keyAt := len(buf)
	buf = codec.EncodeBytes(buf, raw)
	buf = binary.BigEndian.AppendUint64(buf, ^ts)
	keyEnd := len(buf)
	binary.LittleEndian.PutUint32(buf[before:], uint32(keyEnd-keyAt))
	buf = append(buf, 0, 0, 0, 0) // value length
	valAt := len(buf)
	if writeType != 0 {
		buf = append(buf, writeType)
		buf = binary.AppendUvarint(buf, startTS)
		if short {
			buf = append(buf, shortValuePrefix, byte(len(value)))
			buf = append(buf, value...)
		}
	} else {
		buf = append(buf, value...)
	}
	binary.LittleEndian.PutUint32(buf[valAt-4:], uint32(len(buf)-valAt))
	f.plain = buf
	b.size += len(buf) - before
	b.memory += len(buf) - before

	key := buf[keyAt:keyEnd]
	f.crc ^= crc64.Update(crc64.Update(0, crcTable, key), crcTable, buf[valAt:])
	f.entries++
	f.minTS, f.maxTS = min(f.minTS, ts), max(f.maxTS, ts)
	if writeType != 0 && (f.minBegin == 0 || startTS < f.minBegin) {
		f.minBegin = startTS
	}
	// Copies, not slices of buf: buf moves when it grows.
	if f.first == nil || bytes.Compare(key, f.first) < 0 {
		f.first = append(f.first[:0], key...)
	}
	if f.last == nil || bytes.Compare(key, f.last) > 0 {
		f.last = append(f.last[:0], key...)
	}
	if region.Epoch != nil {
		f.region = region // the newest region info wins
	}
}

// Object is one object to upload.
type Object struct {
	Name string
	Data []byte
}

// Flush is what one flush uploads: the data objects, then the meta file.
type Flush struct {
	Data     []Object
	Meta     Object
	Metadata *brpb.Metadata
	Name     MetaName
}

var encoderPool = sync.Pool{New: func() any {
	e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		panic(err) // only for invalid options, which are constant here
	}
	return e
}}

// Finish compresses and names everything added. resolvedTS is the
// checkpoint the flush covers; flushTS orders this store's meta files and
// must grow with every flush.
func (b *Builder) Finish(flushTS, resolvedTS uint64) (*Flush, error) {
	if flushTS == 0 {
		return nil, fmt.Errorf("flush ts must be positive")
	}
	keys := make([]fileKey, 0, len(b.files))
	for k := range b.files {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return lessKey(keys[i], keys[j]) })

	// Compress every file, in parallel: zstd dominates the flush.
	type done struct {
		info       *brpb.DataFileInfo
		compressed []byte
		err        error
	}
	out := make([]done, len(keys))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i, k := range keys {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int, f *fileBuf) {
			defer wg.Done()
			defer func() { <-sem }()
			compressed, sum, length, err := compressFile(f)
			if err != nil {
				out[i].err = err
				return
			}
			minBegin := f.minBegin
			if minBegin == 0 {
				minBegin = f.minTS
			}
			info := &brpb.DataFileInfo{
				Sha256: sum[:], NumberOfEntries: f.entries, MinTs: f.minTS, MaxTs: f.maxTS, ResolvedTs: resolvedTS,
				RegionId: int64(f.key.regionID), StartKey: f.first, EndKey: f.last, Cf: f.key.cf, Type: f.key.fileType,
				IsMeta: f.key.isMeta, TableId: f.key.tableID, Length: uint64(length), MinBeginTsInDefaultCf: minBegin,
				CompressionType: brpb.CompressionType_ZSTD, Crc64Xor: f.crc,
				RegionStartKey: f.region.StartKey, RegionEndKey: f.region.EndKey,
			}
			if f.region.Epoch != nil {
				info.RegionEpoch = []*metapb.RegionEpoch{f.region.Epoch}
			}
			out[i] = done{info: info, compressed: compressed}
		}(i, b.files[k])
	}
	wg.Wait()
	for _, d := range out {
		if d.err != nil {
			return nil, d.err
		}
	}

	fl := &Flush{Metadata: &brpb.Metadata{StoreId: int64(b.cfg.StoreID), MetaVersion: brpb.MetaVersion_V2, ResolvedTs: resolvedTS}}
	hasSchema := false
	var group *brpb.DataFileGroup
	var body []byte
	var groupPlain int
	closeGroup := func(schema bool) {
		if group == nil {
			return
		}
		group.Length = uint64(len(body))
		group.Path = DataName{StoreID: b.cfg.StoreID, MinTS: group.MinTs, MaxTS: group.MaxTs, Schema: schema, ID: b.cfg.NewID()}.Format()
		fl.Data = append(fl.Data, Object{Name: group.Path, Data: body})
		fl.Metadata.FileGroups = append(fl.Metadata.FileGroups, group)
		group, body, groupPlain = nil, nil, 0
	}
	for i, k := range keys {
		if i > 0 && keys[i-1].isMeta != k.isMeta {
			closeGroup(keys[i-1].isMeta)
		}
		d := out[i]
		if group != nil && groupPlain+int(d.info.Length) > b.cfg.FileSizeLimit {
			closeGroup(k.isMeta)
		}
		if group == nil {
			group = &brpb.DataFileGroup{MinTs: d.info.MinTs, MaxTs: d.info.MaxTs, MinResolvedTs: resolvedTS}
		}
		d.info.RangeOffset = uint64(len(body))
		d.info.RangeLength = uint64(len(d.compressed))
		body = append(body, d.compressed...)
		groupPlain += int(d.info.Length)
		group.DataFilesInfo = append(group.DataFilesInfo, d.info)
		group.MinTs, group.MaxTs = min(group.MinTs, d.info.MinTs), max(group.MaxTs, d.info.MaxTs)
		hasSchema = hasSchema || k.isMeta
	}
	if len(keys) > 0 {
		closeGroup(keys[len(keys)-1].isMeta)
	}

	name := MetaName{FlushTS: flushTS, StoreID: b.cfg.StoreID}
	for i, g := range fl.Metadata.FileGroups {
		if i == 0 || g.MinTs < fl.Metadata.MinTs {
			fl.Metadata.MinTs = g.MinTs
		}
		fl.Metadata.MaxTs = max(fl.Metadata.MaxTs, g.MaxTs)
		for _, f := range g.DataFilesInfo {
			if name.MinBeginTS == 0 || f.MinBeginTsInDefaultCf < name.MinBeginTS {
				name.MinBeginTS = f.MinBeginTsInDefaultCf
			}
		}
	}
	name.MinTS, name.MaxTS = fl.Metadata.MinTs, fl.Metadata.MaxTs
	if !hasSchema {
		name.Flags |= FlagNoMetaFiles
	}
	if len(fl.Metadata.FileGroups) == 0 {
		name.Flags |= FlagEmpty
	}
	raw, err := fl.Metadata.Marshal()
	if err != nil {
		return nil, fmt.Errorf("encode metadata: %w", err)
	}
	fl.Name = name
	fl.Meta = Object{Name: name.Format(), Data: raw}
	return fl, nil
}

func lessKey(a, b fileKey) bool {
	if a.isMeta != b.isMeta {
		return !a.isMeta // data files first, then schema-meta
	}
	if a.tableID != b.tableID {
		return a.tableID < b.tableID
	}
	if a.regionID != b.regionID {
		return a.regionID < b.regionID
	}
	if a.cf != b.cf {
		return a.cf < b.cf
	}
	return a.fileType < b.fileType
}

func newUUID() string {
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand failed: %v", err)) // the platform is broken
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// compressFile compresses one file's plain bytes — the spilled head, read
// back as a stream, then the in-memory tail — and hashes them.
func compressFile(f *fileBuf) ([]byte, []byte, int, error) {
	enc := encoderPool.Get().(*zstd.Encoder)
	defer encoderPool.Put(enc)
	if f.spilled == nil {
		sum := sha256.Sum256(f.plain)
		return enc.EncodeAll(f.plain, make([]byte, 0, len(f.plain)/3+64)), sum[:], len(f.plain), nil
	}
	if _, err := f.spilled.Seek(0, io.SeekStart); err != nil {
		return nil, nil, 0, fmt.Errorf("read back %s: %w", f.spilled.Name(), err)
	}
	var out bytes.Buffer
	h := sha256.New()
	enc.Reset(&out)
	w := io.MultiWriter(enc, h)
	n, err := io.Copy(w, io.MultiReader(f.spilled, bytes.NewReader(f.plain)))
	if err == nil {
		err = enc.Close()
	}
	if err != nil {
		return nil, nil, 0, fmt.Errorf("compress %s: %w", f.spilled.Name(), err)
	}
	if int(n) != f.spilledBytes+len(f.plain) {
		return nil, nil, 0, fmt.Errorf("read back %s: %d bytes, spilled %d", f.spilled.Name(), n, f.spilledBytes+len(f.plain))
	}
	return out.Bytes(), h.Sum(nil), int(n), nil
}
