package logfile

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/pingcap/kvproto/pkg/metapb"
)

// Object is one small object to upload, in memory: a meta file, a
// global checkpoint.
type Object struct {
	Name string
	Data []byte
}

// Flush is what one flush uploads: every Data object first, then Meta,
// which lists them. Metadata is Meta decoded; Name is Meta's parsed name.
// The data objects stream from temp files the flush owns: Close frees
// them once uploaded (or abandoned); Meta, Metadata and Name stay.
type Flush struct {
	Data     []DataObject
	Meta     Object
	Metadata *brpb.Metadata
	Name     MetaName

	spools *spools
}

// Close frees the flush's temp files; its data objects can no longer be
// opened. It may be called more than once.
func (f *Flush) Close() error {
	if f.spools == nil {
		return nil
	}
	return f.spools.close()
}

// zstdOptions is how files are compressed: TiKV's Level::Fastest, one
// frame per file, no frame checksum (zstd's default, which TiKV keeps;
// the sha256 of the plain bytes guards the content), and a 1 MiB window
// (libzstd's level 1 uses 512 KiB; the encoder's default of 8 MiB held
// 8 MiB of history per compressor for objects no smaller: TestFrameWindow).
func zstdOptions() []zstd.EOption {
	return []zstd.EOption{zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false), zstd.WithWindowSize(1 << 20)}
}

// Finish compresses and names everything added. flushTS orders this
// store's meta files and must grow with every flush; resolvedTS is the
// checkpoint the flush covers. Finish leaves the builder as it was, so a
// failed upload can call it again (the objects get new ids); the flush
// does not depend on the builder, which may be closed at once. Called
// with nothing added, it returns only the meta file, flagged EMPTY. The
// meta file gets the name TiKV would give it; see FinishLinked. The
// caller closes the flush.
func (b *Builder) Finish(flushTS, resolvedTS uint64) (*Flush, error) {
	return b.finish(flushTS, resolvedTS, nil)
}

// FinishLinked is Finish for the agent: the meta file name also carries
// the flush's lineage (the store's previous durable flush, the cluster,
// the task) and a checksum of the name and body, so `br stream verify` can
// prove the store's chain of flushes has no gap and every field is as
// written. l.PrevFlushTS must be below flushTS, and l.TaskStartTS at most
// flushTS.
func (b *Builder) FinishLinked(flushTS, resolvedTS uint64, l Lineage) (*Flush, error) {
	if l.PrevFlushTS >= flushTS {
		return nil, fmt.Errorf("finish flush: flush ts %d does not follow the previous flush ts %d", flushTS, l.PrevFlushTS)
	}
	if l.TaskStartTS > flushTS {
		return nil, fmt.Errorf("finish flush: flush ts %d is before the task start %d", flushTS, l.TaskStartTS)
	}
	return b.finish(flushTS, resolvedTS, &l)
}

func (b *Builder) finish(flushTS, resolvedTS uint64, lineage *Lineage) (*Flush, error) {
	if flushTS == 0 {
		return nil, errors.New("finish flush: flush ts must be positive")
	}
	if b.closed {
		return nil, fmt.Errorf("finish flush: %w", errClosed)
	}
	sp := &spools{}
	fl, err := b.build(flushTS, resolvedTS, lineage, sp)
	if err != nil {
		return nil, errors.Join(err, sp.close())
	}
	return fl, nil
}

func (b *Builder) build(flushTS, resolvedTS uint64, lineage *Lineage, sp *spools) (*Flush, error) {
	files := b.sortedFiles()
	comp, err := b.compressAll(files, sp)
	if err != nil {
		return nil, err
	}
	infos := make([]*brpb.DataFileInfo, len(files))
	for i, f := range files {
		infos[i] = f.info(comp[i], resolvedTS)
	}

	fl := &Flush{Metadata: &brpb.Metadata{StoreId: int64(b.cfg.StoreID), ResolvedTs: resolvedTS, MetaVersion: brpb.MetaVersion_V2}, spools: sp}
	names := map[string]bool{}
	for _, schema := range []bool{false, true} {
		// TiKV's merge_and_flush_log: a new object starts once the plain
		// length already batched reaches the limit.
		var batch []int
		var plain uint64
		for i, f := range files {
			if f.key.isMeta != schema {
				continue
			}
			if len(batch) > 0 && plain >= uint64(b.cfg.FileSizeLimit) {
				if err := b.addGroup(fl, names, schema, batch, infos, comp); err != nil {
					return nil, err
				}
				batch, plain = batch[:0], 0
			}
			batch = append(batch, i)
			plain += infos[i].Length
		}
		if len(batch) > 0 {
			if err := b.addGroup(fl, names, schema, batch, infos, comp); err != nil {
				return nil, err
			}
		}
	}

	md := fl.Metadata
	for i, g := range md.FileGroups {
		if i == 0 {
			md.MinTs, md.MaxTs = g.MinTs, g.MaxTs
		}
		md.MinTs, md.MaxTs = min(md.MinTs, g.MinTs), max(md.MaxTs, g.MaxTs)
	}
	raw, err := md.Marshal()
	if err != nil {
		return nil, fmt.Errorf("finish flush: encode metadata: %w", err)
	}
	name := MetaName{FlushTS: flushTS, StoreID: b.cfg.StoreID, HasFlags: true, Tags: "dlup"}
	if lineage != nil {
		name.Linked, name.Lineage, name.HasChecksum = true, *lineage, true
		name.Tags += "bcsh"
	}
	name = NameFor(name, md, raw)
	fl.Name = name
	fl.Meta = Object{Name: name.Format(), Data: raw}
	return fl, nil
}

// addGroup lists the compressed files batch (indexes into infos and comp)
// as one object: their extents in order, concatenated only as the object
// is read.
func (b *Builder) addGroup(fl *Flush, names map[string]bool, schema bool, batch []int, infos []*brpb.DataFileInfo, comp []compressed) error {
	g := &brpb.DataFileGroup{MinTs: ^uint64(0), MinResolvedTs: ^uint64(0)}
	parts := make([]extent, 0, len(batch))
	var off uint64
	for _, i := range batch {
		fi := infos[i]
		fi.RangeOffset, fi.RangeLength = off, uint64(comp[i].ext.n)
		off += fi.RangeLength
		parts = append(parts, comp[i].ext)
		g.DataFilesInfo = append(g.DataFilesInfo, fi)
		g.MinTs, g.MaxTs = min(g.MinTs, fi.MinTs), max(g.MaxTs, fi.MaxTs)
		g.MinResolvedTs = min(g.MinResolvedTs, fi.ResolvedTs)
	}
	g.Length = off
	g.Path = DataName{StoreID: b.cfg.StoreID, MinTS: g.MinTs, MaxTS: g.MaxTs, Schema: schema, ID: b.cfg.NewID()}.Format()
	if names[g.Path] {
		// Objects must never overwrite each other; a constant id source
		// would make two groups of one hour and min ts collide.
		return fmt.Errorf("finish flush: object name %s given twice: the id source repeats", g.Path)
	}
	names[g.Path] = true
	fl.Data = append(fl.Data, DataObject{Name: g.Path, Size: int64(off), parts: parts})
	fl.Metadata.FileGroups = append(fl.Metadata.FileGroups, g)
	return nil
}

// info is the file's DataFileInfo, less its place in the object.
func (f *fileBuf) info(c compressed, resolvedTS uint64) *brpb.DataFileInfo {
	minBegin := f.minTS
	if f.hasBegin {
		minBegin = f.minBegin
	}
	fi := &brpb.DataFileInfo{
		Sha256: c.sum, NumberOfEntries: f.entries, MinTs: f.minTS, MaxTs: f.maxTS, ResolvedTs: resolvedTS,
		RegionId: int64(f.key.regionID), StartKey: bytes.Clone(f.first), EndKey: bytes.Clone(f.last),
		Cf: cfName(f.key.cf), Type: f.key.fileType, IsMeta: f.key.isMeta, TableId: f.key.tableID,
		Length: uint64(f.length), MinBeginTsInDefaultCf: minBegin, CompressionType: brpb.CompressionType_ZSTD,
		Crc64Xor: c.crc, RegionStartKey: f.region.start, RegionEndKey: f.region.end,
	}
	if len(f.region.epochs) > 0 {
		fi.RegionEpoch = append([]*metapb.RegionEpoch(nil), f.region.epochs...)
	}
	return fi
}

// compressed is one file's zstd frame, in a temp file, and checksums.
type compressed struct {
	ext extent
	sum []byte // sha256 of the plain bytes
	crc uint64 // crc64xor of the entries
}

// compressAll compresses files on up to Concurrency goroutines, each
// with its own encoder, hasher and buffers, reused across its files, and
// its own temp file in SpillDir (added to sp), which the encoder writes
// as it goes: no file's compressed bytes are ever whole in memory.
func (b *Builder) compressAll(files []*fileBuf, sp *spools) ([]compressed, error) {
	out := make([]compressed, len(files))
	errs := make([]error, len(files))
	var next atomic.Int64
	work := func() {
		enc, encErr := zstd.NewWriter(nil, zstdOptions()...)
		if encErr == nil {
			defer enc.Close()
		}
		c := compressor{enc: enc, h: sha256.New(), crc: crcTables(), spill: b.spill}
		last := -1 // the last file this goroutine compressed
		defer func() {
			// The files' tails may still be in the spool's buffer; a
			// failure to write them fails the last file (and Finish).
			if c.out != nil && last >= 0 {
				if err := c.out.flush(); err != nil {
					errs[last] = errors.Join(errs[last], err)
				}
			}
		}()
		for {
			i := int(next.Add(1) - 1)
			if i >= len(files) {
				return
			}
			if encErr != nil {
				errs[i] = fmt.Errorf("zstd encoder: %w", encErr)
				continue
			}
			if c.out == nil {
				if c.out, errs[i] = newSpoolFile(b.cfg.SpillDir); errs[i] != nil {
					encErr = errs[i] // every later file of this goroutine fails too
					continue
				}
				sp.add(c.out)
			}
			out[i], errs[i] = c.compress(files[i])
			last = i
		}
	}
	workers := b.cfg.Concurrency
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	workers = min(workers, len(files))
	if workers <= 1 {
		work()
	} else {
		var wg sync.WaitGroup
		for range workers {
			wg.Go(work)
		}
		wg.Wait()
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("finish flush: %w", err)
	}
	return out, nil
}

type compressor struct {
	enc  *zstd.Encoder
	h    hash.Hash
	crc  *[8][256]uint64
	out  *spoolFile // the compressed files, one after another
	rbuf []byte     // read-back buffer for spilled bytes
	// spill is the builder's spill file (nil if it spilled nothing or was
	// closed), read at each file's extents; reads at offsets are safe
	// from several compressors at once.
	spill *os.File
}

// crcWriter sums what the encoder writes to the temp file.
type crcWriter struct {
	w   io.Writer
	sum uint32
}

func (w *crcWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.sum = crc32.Update(w.sum, castagnoli, p[:n])
	return n, err
}

// compress streams one file's plain bytes — the spilled head, read back,
// then the in-memory chunks — through sha256 and one zstd frame, and
// computes the crc64xor of the in-memory entries (Spill did the rest).
// Streaming makes a spilled file compress to exactly the bytes it would
// have in memory.
func (c *compressor) compress(f *fileBuf) (compressed, error) {
	c.h.Reset()
	start := c.out.size
	w := crcWriter{w: c.out}
	c.enc.ResetContentSize(&w, f.length)
	crc := f.spillCRC
	if f.spilled > 0 {
		if c.spill == nil {
			return compressed{}, errors.New("spilled bytes are gone: the builder was closed")
		}
		if c.rbuf == nil {
			c.rbuf = make([]byte, 256<<10)
		}
		var sum uint32
		for _, e := range f.spillExt {
			r := io.NewSectionReader(c.spill, e.off, e.n)
			for {
				n, err := io.ReadFull(r, c.rbuf)
				if n > 0 {
					sum = crc32.Update(sum, castagnoli, c.rbuf[:n])
					c.h.Write(c.rbuf[:n])
					if _, werr := c.enc.Write(c.rbuf[:n]); werr != nil {
						return compressed{}, fmt.Errorf("compress %s: %w", c.spill.Name(), werr)
					}
				}
				if err == io.EOF || err == io.ErrUnexpectedEOF {
					break
				}
				if err != nil {
					return compressed{}, fmt.Errorf("read back %s: %w", c.spill.Name(), err)
				}
			}
		}
		if sum != f.spillSum {
			return compressed{}, fmt.Errorf("%w: %s (crc32c %08x, written %08x)", ErrSpillCorrupt, c.spill.Name(), sum, f.spillSum)
		}
	}
	for _, chunk := range f.chunks {
		c.h.Write(chunk)
		if _, err := c.enc.Write(chunk); err != nil {
			return compressed{}, fmt.Errorf("compress: %w", err)
		}
		x, err := crcXorFramesWith(c.crc, chunk)
		if err != nil {
			return compressed{}, fmt.Errorf("compress: %w", err)
		}
		crc ^= x
	}
	// Close fails if fewer bytes came back from the spill file than the
	// frame header promised.
	if err := c.enc.Close(); err != nil {
		return compressed{}, fmt.Errorf("compress %d plain bytes: %w", f.length, err)
	}
	return compressed{ext: extent{f: c.out, off: start, n: c.out.size - start, crc: w.sum}, sum: c.h.Sum(nil), crc: crc}, nil
}
