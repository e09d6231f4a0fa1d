package logfile

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"sort"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/client-go/v2/util/codec"
)

// DefaultFileSizeLimit is TiKV's file-size-limit: once a merged object
// holds this many plain bytes, the next file starts a new object.
const DefaultFileSizeLimit = 256 << 20

// maxFrameLen bounds a key or value: frame lengths are u32.
const maxFrameLen = 1<<32 - 1 - 64

// Column family indexes inside the builder.
const (
	cfDefaultIdx uint8 = iota
	cfWriteIdx
)

func cfName(i uint8) string {
	if i == cfDefaultIdx {
		return CFDefault
	}
	return CFWrite
}

// RegionInfo says which region a change came from.
type RegionInfo struct {
	ID               uint64
	StartKey, EndKey []byte // as PD reports them (memcomparable, no 'z')
	Epoch            *metapb.RegionEpoch
}

// BuilderConfig configures a Builder.
type BuilderConfig struct {
	StoreID uint64
	// FileSizeLimit is the plain bytes per merged object; 0 means
	// DefaultFileSizeLimit.
	FileSizeLimit int
	// NewID returns the unique part of an object name; nil means a random
	// UUID v4, as TiKV uses.
	NewID func() string
	// SpillDir receives the plain bytes of files when Spill is called,
	// and Finish's compressed output (temp files unlinked at once, freed
	// by Flush.Close); "" means the system temp dir.
	SpillDir string
	// Concurrency is how many files Finish compresses at once; 0 means
	// GOMAXPROCS.
	Concurrency int
	// Chunks, when set, recycles buffer memory between builders: Spill
	// and Close give chunks back.
	Chunks *ChunkPool
}

// fileKey groups entries into files, as TiKV's TempFileKey does.
type fileKey struct {
	isMeta   bool
	cf       uint8
	fileType brpb.FileType
	tableID  int64
	regionID uint64
}

// fileBuf is one file being built: its plain framed bytes (a spilled head
// on disk, then in-memory chunks) and what its DataFileInfo needs.
type fileBuf struct {
	key    fileKey
	chunks [][]byte
	next   int // size of the next chunk
	// spillExt is where the spilled head is in the builder's spill file,
	// in order: one extent per Spill that found bytes in memory.
	spillExt []spillExtent
	spilled  int64  // plain bytes spilled
	spillCRC uint64 // crc64xor of the spilled entries
	// spillSum is the CRC-32C of the spilled bytes in order; Finish
	// checks the bytes it reads back against it, so a temp file damaged
	// on disk is never compressed into a backup.
	spillSum uint32
	length   int64 // all plain bytes
	entries  int64
	minTS    uint64
	maxTS    uint64
	minBegin uint64
	hasBegin bool
	// first and last alias chunks (which never move) until a spill
	// releases those chunks; Spill copies them then.
	first, last []byte
	region      regionAcc
}

// regionAcc collects what a file's DataFileInfo says about its region:
// the widest key range and every distinct epoch seen (TiKV's
// fill_region_info).
type regionAcc struct {
	set        bool
	start, end []byte
	epochs     []*metapb.RegionEpoch
	lastEpoch  *metapb.RegionEpoch
}

func (r *regionAcc) note(ri RegionInfo) {
	if ri.Epoch != nil && ri.Epoch == r.lastEpoch {
		return // the same region object as the last change: nothing new
	}
	if !r.set {
		r.set, r.start, r.end = true, ri.StartKey, ri.EndKey
	} else {
		if bytes.Compare(ri.StartKey, r.start) < 0 {
			r.start = ri.StartKey
		}
		// An empty end key is the end of the key space.
		if len(r.end) != 0 && (len(ri.EndKey) == 0 || bytes.Compare(ri.EndKey, r.end) > 0) {
			r.end = ri.EndKey
		}
	}
	if ri.Epoch == nil {
		return
	}
	r.lastEpoch = ri.Epoch
	for _, e := range r.epochs {
		if e.Version == ri.Epoch.Version && e.ConfVer == ri.Epoch.ConfVer {
			return
		}
	}
	r.epochs = append(r.epochs, ri.Epoch)
}

// Builder collects one flush's changes and produces its objects. It does
// no network IO and reads no clock; it touches the file system only for
// its temp files: the spill file (Spill, removed by Close) and the
// compressed output (Finish, freed by Flush.Close). Not safe for
// concurrent use. It keeps the RegionInfo key slices and epochs it is
// given (not Change keys or values, which it copies).
type Builder struct {
	cfg   BuilderConfig
	files map[fileKey]*fileBuf
	// spill is the one temp file every file's spilled bytes go to (a file
	// each ran an agent with 10,000 regions out of descriptors), and
	// spillSize its length: bytes past it are a failed spill's.
	spill     *os.File
	spillSize int64
	cache     [2]cachedFile // last file used per CF: consecutive changes share one
	size      int           // all plain bytes added
	memory    int           // bytes of the chunks held
	count     int
	closed    bool
}

// spillExtent is a run of one file's plain bytes in the spill file.
type spillExtent struct{ off, n int64 }

type cachedFile struct {
	key fileKey
	f   *fileBuf
}

var errClosed = errors.New("log file builder is closed")

// ErrSpillCorrupt: a spilled buffer read back differs from what was
// written (the temp file was damaged on disk).
var ErrSpillCorrupt = errors.New("spilled buffer read back does not match its checksum")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// NewBuilder returns an empty builder.
func NewBuilder(cfg BuilderConfig) *Builder {
	if cfg.FileSizeLimit <= 0 {
		cfg.FileSizeLimit = DefaultFileSizeLimit
	}
	if cfg.NewID == nil {
		cfg.NewID = NewUUID
	}
	return &Builder{cfg: cfg, files: map[fileKey]*fileBuf{}}
}

// Size is the plain bytes buffered so far, in memory or spilled.
func (b *Builder) Size() int { return b.size }

// Memory is the bytes of buffer the builder holds: the capacity of its
// chunks, which is what a memory quota should count (at least the plain
// bytes not spilled; a file's last chunk is partly empty).
func (b *Builder) Memory() int { return b.memory }

// Changes is the number of changes added with Add.
func (b *Builder) Changes() int { return b.count }

func (b *Builder) file(fk fileKey, region RegionInfo) *fileBuf {
	c := &b.cache[fk.cf]
	f := c.f
	if f == nil || c.key != fk {
		if f = b.files[fk]; f == nil {
			f = &fileBuf{key: fk, next: firstChunk, minTS: ^uint64(0)}
			b.files[fk] = f
		}
		c.key, c.f = fk, f
	}
	f.region.note(region)
	return f
}

// Add records one committed change of a region: a write-CF entry, and a
// default-CF entry first when the value is longer than 255 bytes. The
// entries are encoded straight into their file's buffer: this is the hot
// path of a flush. It fails only for a closed builder and for keys of
// 2 GiB or values of 4 GiB, which u32 frame lengths cannot hold.
func (b *Builder) Add(region RegionInfo, c Change) error {
	if b.closed {
		return errClosed
	}
	if len(c.Key) >= maxFrameLen/2 || len(c.Value) >= maxFrameLen {
		return fmt.Errorf("change of key %d bytes, value %d bytes: too large to frame", len(c.Key), len(c.Value))
	}
	b.count++
	isMeta := IsMetaKey(c.Key)
	var table int64
	if !isMeta {
		table = TableID(c.Key)
	}
	wk := fileKey{isMeta: isMeta, cf: cfWriteIdx, fileType: brpb.FileType_Put, tableID: table, regionID: region.ID}
	switch {
	case c.Op == OpDelete:
		b.appendChange(b.file(wk, region), c.Key, c.CommitTS, WriteDelete, c.StartTS, nil, false)
	case len(c.Value) <= ShortValueMaxLen:
		b.appendChange(b.file(wk, region), c.Key, c.CommitTS, WritePut, c.StartTS, c.Value, true)
	default:
		dk := wk
		dk.cf = cfDefaultIdx
		b.appendChange(b.file(dk, region), c.Key, c.StartTS, 0, 0, c.Value, false)
		b.appendChange(b.file(wk, region), c.Key, c.CommitTS, WritePut, c.StartTS, nil, false)
	}
	return nil
}

// appendChange frames one entry: the MVCC key of raw at ts, and either a
// write record (writeType != 0) or value itself.
func (b *Builder) appendChange(f *fileBuf, raw []byte, ts uint64, writeType byte, startTS uint64, value []byte, short bool) {
	klen := memcomparableLen(len(raw)) + 8
	vlen := len(value)
	if writeType != 0 {
		vlen = writeLen(startTS, len(value), short)
	}
	n := 8 + klen + vlen
	buf := b.reserve(f, n)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(klen))
	keyAt := len(buf)
	buf = codec.EncodeBytes(buf, raw) // fits: reserve made room, so no realloc
	buf = binary.BigEndian.AppendUint64(buf, ^ts)
	key := buf[keyAt:len(buf):len(buf)]
	buf = binary.LittleEndian.AppendUint32(buf, uint32(vlen))
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
	f.chunks[len(f.chunks)-1] = buf
	b.noteEntry(f, key, ts, n, writeType != 0, startTS)
}

func (b *Builder) noteEntry(f *fileBuf, key []byte, ts uint64, n int, hasBegin bool, beginTS uint64) {
	b.size += n
	f.length += int64(n)
	f.minTS, f.maxTS = min(f.minTS, ts), max(f.maxTS, ts)
	if hasBegin && (!f.hasBegin || beginTS < f.minBegin) {
		f.minBegin, f.hasBegin = beginTS, true
	}
	switch {
	case f.entries == 0:
		f.first, f.last = key, key
	case bytes.Compare(key, f.first) < 0:
		f.first = key
	case bytes.Compare(key, f.last) > 0:
		f.last = key
	}
	f.entries++
}

// AddKV records one column-family entry as it is, for sources that have
// TiKV's raw entries (including lock and rollback write records). The key
// must be an MVCC key; a write-CF value must be a write record.
func (b *Builder) AddKV(region RegionInfo, kv KV) error {
	if b.closed {
		return errClosed
	}
	raw, ts, err := DecodeMVCCKey(kv.Key)
	if err != nil {
		return fmt.Errorf("add %s entry: %w", kv.CF, err)
	}
	if len(kv.Key) >= maxFrameLen/2 || len(kv.Value) >= maxFrameLen {
		return fmt.Errorf("add %s entry: too large to frame", kv.CF)
	}
	var cf uint8
	var hasBegin bool
	var begin uint64
	switch kv.CF {
	case CFDefault:
		cf = cfDefaultIdx
	case CFWrite:
		cf = cfWriteIdx
		w, err := DecodeWrite(kv.Value)
		if err != nil {
			return fmt.Errorf("add write entry for %x: %w", raw, err)
		}
		hasBegin, begin = true, w.StartTS
	default:
		return fmt.Errorf("add entry: unknown column family %q", kv.CF)
	}
	isMeta := IsMetaKey(raw)
	var table int64
	if !isMeta {
		table = TableID(raw)
	}
	f := b.file(fileKey{isMeta: isMeta, cf: cf, fileType: brpb.FileType_Put, tableID: table, regionID: region.ID}, region)
	n := 8 + len(kv.Key) + len(kv.Value)
	buf := b.reserve(f, n)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(kv.Key)))
	keyAt := len(buf)
	buf = append(buf, kv.Key...)
	key := buf[keyAt:len(buf):len(buf)]
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(kv.Value)))
	buf = append(buf, kv.Value...)
	f.chunks[len(f.chunks)-1] = buf
	b.noteEntry(f, key, ts, n, hasBegin, begin)
	return nil
}

// Spill moves every file's in-memory bytes to its temp file so memory
// stays under the caller's quota; Finish reads them back as a stream. If
// a write fails, the files of that Spill keep their bytes in memory.
//
// Small chunks are gathered into writes of up to spillWriteSize: at
// 10,000 regions a spill is ~20,000 files of a few KiB each, and a system
// call per chunk was a quarter of the agent's CPU (BenchmarkManyRegions,
// BenchmarkSpillManyFiles).
func (b *Builder) Spill() error {
	var files []*fileBuf
	for _, f := range b.sortedFiles() {
		if len(f.chunks) > 0 {
			files = append(files, f)
		}
	}
	if len(files) == 0 {
		return nil
	}
	if b.spill == nil {
		tf, err := os.CreateTemp(b.cfg.SpillDir, "logbackup-*.temp.log")
		if err != nil {
			return fmt.Errorf("spill: %w", err)
		}
		b.spill = tf
	}
	t := crcTables()
	start, off := b.spillSize, b.spillSize
	var pending []byte // chunks gathered for one write, at off-len(pending)
	write := func(p []byte) error {
		if _, err := b.spill.WriteAt(p, off-int64(len(p))); err != nil {
			// Cut the partial write so the file keeps only whole spills.
			terr := b.spill.Truncate(start)
			return errors.Join(fmt.Errorf("spill to %s: %w", b.spill.Name(), err), terr)
		}
		return nil
	}
	type spilled struct {
		start, end int64
		sum        uint32
		crc        uint64
	}
	done := make([]spilled, len(files))
	for i, f := range files {
		d := spilled{start: off, sum: f.spillSum}
		for _, c := range f.chunks {
			if len(c) >= spillWriteSize/4 { // large: written as it is
				if len(pending) > 0 {
					if err := write(pending); err != nil {
						return err
					}
					pending = pending[:0]
				}
				off += int64(len(c))
				if err := write(c); err != nil {
					return err
				}
			} else {
				if len(pending)+len(c) > spillWriteSize {
					if err := write(pending); err != nil {
						return err
					}
					pending = pending[:0]
				}
				if pending == nil {
					pending = make([]byte, 0, spillWriteSize)
				}
				pending = append(pending, c...)
				off += int64(len(c))
			}
			d.sum = crc32.Update(d.sum, castagnoli, c)
			x, err := crcXorFramesWith(t, c)
			if err != nil {
				return fmt.Errorf("spill: %w", err) // cannot happen: chunks hold whole frames
			}
			d.crc ^= x
		}
		d.end = off
		done[i] = d
	}
	if len(pending) > 0 {
		if err := write(pending); err != nil {
			return err
		}
	}
	// Every byte is in the spill file: only now do the files give up
	// their chunks.
	b.spillSize = off
	for i, f := range files {
		d := done[i]
		if n := len(f.spillExt); n > 0 && f.spillExt[n-1].off+f.spillExt[n-1].n == d.start {
			f.spillExt[n-1].n += d.end - d.start
		} else {
			f.spillExt = append(f.spillExt, spillExtent{off: d.start, n: d.end - d.start})
		}
		f.spilled += d.end - d.start
		f.spillSum, f.spillCRC = d.sum, f.spillCRC^d.crc
		// first and last alias the chunks; keep only their bytes, then let
		// the chunks go: the point is the memory.
		f.first, f.last = bytes.Clone(f.first), bytes.Clone(f.last)
		b.release(f)
	}
	return nil
}

// spillWriteSize bounds one gathered write of small chunks to the spill
// file.
const spillWriteSize = 1 << 20

// Close removes the builder's temp files and returns its buffers to the
// chunk pool, after Finish or to discard the builder. A closed builder
// refuses Add and Finish.
func (b *Builder) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	var errs []error
	for _, f := range b.files {
		f.first, f.last = nil, nil
		b.release(f)
	}
	if b.spill != nil {
		name := b.spill.Name()
		if err := b.spill.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", name, err))
		}
		if err := os.Remove(name); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", name, err))
		}
		b.spill = nil
	}
	return errors.Join(errs...)
}

// sortedFiles is the files in the order a flush lists them: data files,
// then schema-meta files; within each by table, region, cf and type.
func (b *Builder) sortedFiles() []*fileBuf {
	out := make([]*fileBuf, 0, len(b.files))
	for _, f := range b.files {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return lessKey(out[i].key, out[j].key) })
	return out
}

func lessKey(a, b fileKey) bool {
	if a.isMeta != b.isMeta {
		return !a.isMeta
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

// NewUUID returns a random UUID v4, the unique part TiKV gives object
// names.
func NewUUID() string {
	var u [16]byte
	_, _ = rand.Read(u[:]) // never fails since Go 1.24
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
