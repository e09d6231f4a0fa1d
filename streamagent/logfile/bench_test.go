package logfile

import (
	"crypto/sha256"
	"fmt"
	"math/rand"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// benchChanges is about 64 MiB of framed entries: TiDB-like row keys over
// 8 tables and 16 regions, mostly short values with some long ones.
func benchChanges() ([]Change, []RegionInfo) {
	r := rand.New(rand.NewSource(42))
	base := tso(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), 0)
	var out []Change
	regions := make([]RegionInfo, 16)
	for i := range regions {
		regions[i] = RegionInfo{ID: uint64(i + 1)}
	}
	words := []byte("the quick brown fox jumps over the lazy dog 0123456789 ")
	total := 0
	for i := 0; total < 64<<20; i++ {
		size := 64 + r.Intn(160)
		if r.Intn(20) == 0 {
			size = 512 + r.Intn(4096)
		}
		v := make([]byte, size)
		for j := range v {
			v[j] = words[(i+j*7)%len(words)] // compressible, like row data
		}
		c := Change{Key: tableKey(int64(1+r.Intn(8)), fmt.Sprintf("%012d", i)), Value: v, StartTS: base + uint64(2*i), CommitTS: base + uint64(2*i+1), Op: OpPut}
		out = append(out, c)
		total += len(c.Key) + len(v) + 40
	}
	return out, regions
}

// BenchmarkFlushPipeline compares the whole flush (encode, frame, group,
// zstd, sha256, crc64, metadata) with zstd + sha256 alone over the same
// framed bytes, in the same run.
func BenchmarkFlushPipeline(b *testing.B) {
	changes, regions := benchChanges()
	// The framed bytes the pipeline produces, per file, for the baseline.
	pre := NewBuilder(BuilderConfig{StoreID: 1})
	for i, c := range changes {
		pre.Add(regions[i%len(regions)], c)
	}
	var files [][]byte
	plain := 0
	for _, f := range pre.files {
		files = append(files, f.plain)
		plain += len(f.plain)
	}

	b.Run("pipeline", func(b *testing.B) {
		b.SetBytes(int64(plain))
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			bl := NewBuilder(BuilderConfig{StoreID: 1})
			for j, c := range changes {
				bl.Add(regions[j%len(regions)], c)
			}
			if _, err := bl.Finish(uint64(i+1), 1); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("zstd+sha256-only", func(b *testing.B) {
		enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		b.SetBytes(int64(plain))
		for i := 0; i < b.N; i++ {
			for _, f := range files {
				enc.EncodeAll(f, make([]byte, 0, len(f)/3))
				sha256.Sum256(f)
			}
		}
	})
}
