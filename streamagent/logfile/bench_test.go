package logfile

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"

	"logbackup/storage"

	"github.com/klauspost/compress/zstd"
	"github.com/pingcap/kvproto/pkg/metapb"
)

// benchRows is about 64 MiB of framed entries shaped like a TiDB
// workload: 8 tables, each row written as a record key t{id}_r{handle}
// with a row-format value (a header, small integers, and text drawn from
// a vocabulary: compressible about 3x, like real rows) plus one or two
// index keys t{id}_i{idx}{value}{handle} with tiny values; one row in 20
// has a long (> 255 byte) value that goes to the default CF, one change in
// 20 is a delete. 64 regions, 8 per table, split by handle range.
// Deterministic: every call gives the same changes.
func benchRows() ([]Change, []RegionInfo) {
	r := rand.New(rand.NewSource(42))
	base := tso(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), 0)
	words := []string{"alpha", "beta", "gamma", "delta", "pending", "shipped", "paid", "refunded", "north", "south",
		"east", "west", "customer", "order", "item", "warehouse", "priority", "standard", "express", "note"}
	regions := make([]RegionInfo, 64)
	for i := range regions {
		regions[i] = RegionInfo{ID: uint64(1000 + i), Epoch: &metapb.RegionEpoch{Version: 5, ConfVer: 3}}
	}
	var out []Change
	total, ts := 0, base
	val := make([]byte, 0, 8<<10)
	for i := 0; total < 64<<20; i++ {
		table := int64(100 + r.Intn(8))
		handle := int64(r.Intn(1 << 20))
		val = val[:0]
		val = append(val, 0x80, 0x00, 0x06, 0x00, 0x00, 0x00) // row format v2 header
		val = binary.BigEndian.AppendUint64(val, uint64(handle))
		val = binary.AppendUvarint(val, uint64(r.Intn(100000)))
		n := 4 + r.Intn(20)
		if r.Intn(20) == 0 {
			n = 60 + r.Intn(400)
		}
		for j := 0; j < n; j++ {
			val = append(val, words[r.Intn(len(words))]...)
			val = append(val, ' ')
			if r.Intn(4) == 0 {
				val = binary.AppendUvarint(val, uint64(r.Intn(1e6)))
			}
		}
		ts += 2
		c := Change{Key: tableKey(table, handle), Value: append([]byte(nil), val...), StartTS: ts, CommitTS: ts + 1, Op: OpPut}
		if r.Intn(20) == 0 {
			c.Op, c.Value = OpDelete, nil
		}
		out = append(out, c)
		total += len(c.Key) + len(c.Value) + 30
		for k := 0; k < 1+r.Intn(2); k++ {
			ik := append(tableKey(table, 0)[:9], "_i"...)
			ik = binary.BigEndian.AppendUint64(ik, uint64(k+1))
			ik = append(ik, words[r.Intn(len(words))]...)
			ik = binary.BigEndian.AppendUint64(ik, uint64(handle))
			out = append(out, Change{Key: ik, Value: []byte{'0'}, StartTS: ts, CommitTS: ts + 1, Op: c.Op})
			total += len(ik) + 40
		}
	}
	return out, regions
}

func regionOf(regions []RegionInfo, c Change) RegionInfo {
	t := TableID(c.Key) - 100
	h := 0
	if len(c.Key) >= 19 {
		h = int(binary.BigEndian.Uint64(c.Key[len(c.Key)-8:])>>17) & 7
	}
	return regions[int(t)*8%64+h]
}

// BenchmarkFlushPipeline is one flush of ~64 MiB: Builder.Add for every
// change (MVCC keys, write records, framing, grouping) and Finish (zstd,
// sha256, crc64xor, object assembly, metadata), with buffers recycled
// through a ChunkPool as an agent does from flush to flush. Run with
// -cpu 1 for a per-core figure. BenchmarkZstdSha256Only is the bound: zstd
// with the same options plus sha256 over the very bytes the pipeline
// produces.
func BenchmarkFlushPipeline(b *testing.B) { benchFlush(b, NewChunkPool()) }

// BenchmarkFlushPipelineNoPool is the same without recycling buffers.
func BenchmarkFlushPipelineNoPool(b *testing.B) { benchFlush(b, nil) }

func benchFlush(b *testing.B, pool *ChunkPool) {
	changes, regions := benchRows()
	plain := 0
	{
		bl := NewBuilder(BuilderConfig{StoreID: 1})
		for _, c := range changes {
			bl.Add(regionOf(regions, c), c)
		}
		plain = bl.Size()
	}
	dir := b.TempDir()
	b.SetBytes(int64(plain))
	b.ReportAllocs()
	b.ResetTimer()
	before := allocated()
	var stored int64
	for i := 0; i < b.N; i++ {
		bl := NewBuilder(BuilderConfig{StoreID: 1, Chunks: pool, SpillDir: dir})
		for _, c := range changes {
			if err := bl.Add(regionOf(regions, c), c); err != nil {
				b.Fatal(err)
			}
		}
		fl, err := bl.Finish(uint64(i+1), 1)
		if err != nil {
			b.Fatal(err)
		}
		if err := bl.Close(); err != nil {
			b.Fatal(err)
		}
		for _, o := range fl.Data {
			stored += o.Size
		}
		releaseFlush(fl)
	}
	// Heap bytes allocated per plain byte flushed: the goal is
	// at most 1.5.
	b.ReportMetric(float64(allocated()-before)/float64(plain)/float64(b.N), "alloc-B/flushed-B")
	// What the objects take in storage against the plain bytes: a change
	// to the compressor's settings must say what it costs here.
	b.ReportMetric(float64(stored)/float64(plain)/float64(b.N), "stored-B/flushed-B")
}

// BenchmarkFlushPeakHeap is one flush of the same ~64 MiB as the agent
// does it: Add every change, Finish, upload every object to file storage,
// release the flush. A sampler reads the live heap every 100 µs (GC at
// 50% to keep garbage from hiding the live peak); peak-heap-MiB is the
// highest reading, over-builder-MiB that less the heap once the builder
// is full (the plain bytes the memory quota counts), i.e. what Finish and
// the upload add on top.
func BenchmarkFlushPeakHeap(b *testing.B) {
	changes, regions := benchRows()
	ctx := context.Background()
	st, err := storage.OpenURL(ctx, "local://"+b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	dir := b.TempDir()
	defer debug.SetGCPercent(debug.SetGCPercent(50))
	var peak, over float64
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		bl := NewBuilder(BuilderConfig{StoreID: 1, SpillDir: dir})
		for _, c := range changes {
			if err := bl.Add(regionOf(regions, c), c); err != nil {
				b.Fatal(err)
			}
		}
		b.SetBytes(int64(bl.Size()))
		runtime.GC()
		full := heapLive()
		stop := make(chan struct{})
		got := make(chan uint64)
		go func() {
			m := full
			t := time.NewTicker(100 * time.Microsecond)
			defer t.Stop()
			for {
				select {
				case <-stop:
					got <- max(m, heapLive())
					return
				case <-t.C:
					m = max(m, heapLive())
				}
			}
		}()
		fl, err := bl.Finish(uint64(i+1), 1)
		if err != nil {
			b.Fatal(err)
		}
		if err := bl.Close(); err != nil {
			b.Fatal(err)
		}
		if err := uploadFlush(ctx, st, fl); err != nil {
			b.Fatal(err)
		}
		releaseFlush(fl)
		close(stop)
		m := <-got
		peak = max(peak, float64(m)/(1<<20))
		over = max(over, float64(m-full)/(1<<20))
	}
	b.ReportMetric(peak, "peak-heap-MiB")
	b.ReportMetric(over, "over-builder-MiB")
}

// heapLive is the bytes in heap objects, live or not yet swept.
func heapLive() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func BenchmarkZstdSha256Only(b *testing.B) {
	changes, regions := benchRows()
	bl := NewBuilder(BuilderConfig{StoreID: 1})
	for _, c := range changes {
		bl.Add(regionOf(regions, c), c)
	}
	// Each file's plain bytes, contiguous: the pipeline's exact input to
	// zstd and sha256.
	var files [][]byte
	plain := 0
	for _, f := range bl.sortedFiles() {
		var p []byte
		for _, c := range f.chunks {
			p = append(p, c...)
		}
		files = append(files, p)
		plain += len(p)
	}
	enc, err := zstd.NewWriter(nil, zstdOptions()...)
	if err != nil {
		b.Fatal(err)
	}
	dst := make([]byte, 0, 1<<20)
	b.SetBytes(int64(plain))
	b.ReportAllocs()
	b.ResetTimer()
	before := allocated()
	for i := 0; i < b.N; i++ {
		for _, p := range files {
			dst = enc.EncodeAll(p, dst[:0])
			sha256.Sum256(p)
		}
	}
	b.ReportMetric(float64(allocated()-before)/float64(plain)/float64(b.N), "alloc-B/flushed-B")
}

// uploadFlush writes a flush as the agent does: data objects, then the
// meta file.
func uploadFlush(ctx context.Context, st storage.Storage, fl *Flush) error {
	for _, o := range fl.Data {
		if err := st.WriteFrom(ctx, o.Name, o.Size, o.Open); err != nil {
			return err
		}
	}
	return st.WriteFile(ctx, fl.Meta.Name, fl.Meta.Data)
}

// releaseFlush lets go of a flush's data.
func releaseFlush(fl *Flush) {
	if err := fl.Close(); err != nil {
		panic(err)
	}
}

// BenchmarkSpillManyFiles: one Spill of 10,000 regions' files of ~3 KiB
// each (1 KiB rows, as the agent holds at 10,000 regions past its quota):
// the cost is the writes to the spill file, not the bytes.
//
//	go test -run '^$' -bench SpillManyFiles ./streamagent/logfile/
func BenchmarkSpillManyFiles(b *testing.B) {
	const regions, perRegion = 10000, 3
	value := make([]byte, 1024)
	dir := b.TempDir()
	b.SetBytes(regions * perRegion * 1024)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		bl := NewBuilder(BuilderConfig{StoreID: 1, SpillDir: dir, Chunks: NewChunkPool()})
		for r := 0; r < regions; r++ {
			for j := 0; j < perRegion; j++ {
				key := []byte(fmt.Sprintf("t\x80\x00\x00\x00\x00\x00\x00\x64_r%08d%02d", r, j))
				if err := bl.Add(RegionInfo{ID: uint64(r + 1)}, Change{Key: key, Value: value, StartTS: 10, CommitTS: 11, Op: OpPut}); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.StartTimer()
		if err := bl.Spill(); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		bl.Close()
		b.StartTimer()
	}
}
