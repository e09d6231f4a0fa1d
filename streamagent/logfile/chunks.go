package logfile

import (
	"math/bits"
	"sync"
)

// Chunk sizes of a file's buffer. Buffers grow by adding chunks rather
// than reallocating: append's 1.25x growth of large slices copied every
// file about five times over and was 40% of a flush's CPU. Small first
// chunks keep 10K idle regions cheap; entries never straddle chunks.
const (
	firstChunk   = 2 << 10
	maxChunk     = 1 << 20
	chunkClasses = 10 // 2 KiB .. 1 MiB, powers of two
)

// ChunkPool recycles the buffers builders keep plain bytes in, so one
// flush reuses the memory of the one before instead of faulting in and
// zeroing fresh pages. Safe for concurrent use: share one between the
// builders of an agent. The zero value is not usable; see NewChunkPool.
type ChunkPool struct {
	classes [chunkClasses]sync.Pool
}

// NewChunkPool returns an empty pool.
func NewChunkPool() *ChunkPool { return &ChunkPool{} }

// chunkClass is the pool class holding chunks of at least n bytes, or -1
// when n is too large to pool.
func chunkClass(n int) int {
	if n <= firstChunk {
		return 0
	}
	if n > maxChunk {
		return -1
	}
	return bits.Len(uint(n-1)) - bits.Len(uint(firstChunk-1))
}

// get returns an empty chunk with room for at least n bytes.
func (p *ChunkPool) get(n int) []byte {
	c := chunkClass(n)
	if p == nil || c < 0 {
		return make([]byte, 0, n)
	}
	if v, ok := p.classes[c].Get().(*[]byte); ok {
		return (*v)[:0]
	}
	return make([]byte, 0, firstChunk<<c)
}

// put returns a chunk no one references any more.
func (p *ChunkPool) put(b []byte) {
	if p == nil || cap(b) < firstChunk || cap(b) > maxChunk || cap(b)&(cap(b)-1) != 0 {
		return
	}
	b = b[:0]
	p.classes[chunkClass(cap(b))].Put(&b)
}

// reserve returns the buffer of f to append n bytes to, with room for
// them.
func (b *Builder) reserve(f *fileBuf, n int) []byte {
	if k := len(f.chunks); k > 0 {
		if c := f.chunks[k-1]; cap(c)-len(c) >= n {
			return c
		}
	}
	c := b.cfg.Chunks.get(max(f.next, n))
	f.next = min(2*f.next, maxChunk)
	f.chunks = append(f.chunks, c)
	b.memory += cap(c)
	return c
}

// release hands the chunks of f back to the pool. first and last must not
// alias them any more. The next chunk is small again: after a spill, 10K
// regions that each get one more row must not take 1 MiB apiece.
func (b *Builder) release(f *fileBuf) {
	for _, c := range f.chunks {
		b.memory -= cap(c)
		b.cfg.Chunks.put(c)
	}
	f.chunks, f.next = nil, firstChunk
}
