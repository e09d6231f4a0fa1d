package logfile

import (
	"fmt"
	"hash/crc64"
	"math/big"
	"math/bits"
	"math/rand"
	"testing"
)

// crcECMA is P = x^64 + 0x42F0E1EBA9EA3693, the ECMA-182 polynomial.
func crcECMA() *big.Int {
	return new(big.Int).SetBit(new(big.Int).SetUint64(0x42F0E1EBA9EA3693), 64, 1)
}

// polyDivMod divides a by P over GF(2): quotient and remainder.
func polyDivMod(a *big.Int) (q, r *big.Int) {
	p := crcECMA()
	r, q = new(big.Int).Set(a), new(big.Int)
	for r.BitLen() > 64 {
		s := r.BitLen() - 65
		r.Xor(r, new(big.Int).Lsh(p, uint(s)))
		q.SetBit(q, s, 1)
	}
	return q, r
}

func xPow(n int) *big.Int { return new(big.Int).SetBit(new(big.Int), n, 1) }

// TestCRCFoldKeys derives crcFoldKeys from the polynomial, as their
// comment in crc_fold.go describes them.
func TestCRCFoldKeys(t *testing.T) {
	rev := func(a *big.Int) uint64 {
		if a.BitLen() > 64 {
			t.Fatalf("%x does not fit in 64 bits", a)
		}
		return bits.Reverse64(a.Uint64())
	}
	modX := func(n int) uint64 { _, r := polyDivMod(xPow(n)); return rev(r) }
	var want [10]uint64
	for i, d := range []int{512, 384, 256, 128} {
		want[2*i], want[2*i+1] = modX(d+63), modX(d-1)
	}
	mu, _ := polyDivMod(xPow(127))
	want[8], want[9] = rev(mu), rev(new(big.Int).Rsh(crcECMA(), 1))
	if crcFoldKeys != want {
		t.Errorf("crcFoldKeys are wrong; derived:\n%#016x", want)
	}
	// The published Barrett pair of crc64fast (TiKV), as a second opinion.
	if want[8] != 0x9c3e466c172963d5 || want[9] != 0x92d8af2baf0e1e85 {
		t.Errorf("Barrett keys %#016x %#016x differ from crc64fast's", want[8], want[9])
	}
}

// clmul is PCLMULQDQ in software: the carry-less product of a and b, high
// and low qwords.
func clmul(a, b uint64) (hi, lo uint64) {
	for i := 0; i < 64; i++ {
		if b>>i&1 != 0 {
			lo ^= a << i
			if i > 0 {
				hi ^= a >> (64 - i)
			}
		}
	}
	return hi, lo
}

// crcFoldModel is crc_amd64.s step for step in Go, with keys k, so that
// the method and the keys are checked on every architecture, the
// assembly aside. len(p) is a positive multiple of 16.
func crcFoldModel(crc uint64, p []byte, k *[10]uint64) uint64 {
	type xmm struct{ lo, hi uint64 }
	load := func(b []byte) xmm {
		return xmm{uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 | uint64(b[4])<<32 |
			uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56, 0}
	}
	block := func(b []byte) xmm { return xmm{load(b).lo, load(b[8:]).lo} }
	fold := func(x xmm, klo, khi uint64, next xmm) xmm {
		h1, l1 := clmul(x.lo, klo)
		h2, l2 := clmul(x.hi, khi)
		return xmm{l1 ^ l2 ^ next.lo, h1 ^ h2 ^ next.hi}
	}
	x := block(p)
	x.lo ^= ^crc
	p = p[16:]
	if len(p) >= 48 {
		r := [4]xmm{x, block(p), block(p[16:]), block(p[32:])}
		for p = p[48:]; len(p) >= 64; p = p[64:] {
			for i := range r {
				r[i] = fold(r[i], k[0], k[1], block(p[16*i:]))
			}
		}
		x = fold(r[0], k[2], k[3], fold(r[1], k[4], k[5], fold(r[2], k[6], k[7], r[3])))
	}
	for ; len(p) > 0; p = p[16:] {
		x = fold(x, k[6], k[7], block(p))
	}
	h, l := clmul(x.lo, k[7])
	y := xmm{l ^ x.hi, h}
	_, q := clmul(y.lo, k[8])
	h, _ = clmul(q, k[9])
	return ^(h ^ y.hi ^ q)
}

func TestCRCFoldModel(t *testing.T) {
	ecma := crc64.MakeTable(crc64.ECMA)
	r := rand.New(rand.NewSource(3))
	for n := 16; n <= 1024; n += 16 {
		p := make([]byte, n)
		r.Read(p)
		init := r.Uint64()
		if got, want := crcFoldModel(init, p, &crcFoldKeys), crc64.Update(init, ecma, p); got != want {
			t.Fatalf("%d bytes: model %016x, hash/crc64 %016x", n, got, want)
		}
	}
}

// crcImpls are the ways crcUpdate can go, each of which must equal
// hash/crc64: the tables alone (other CPUs, short inputs), the assembly
// alone where it runs, and crcUpdate as dispatched here.
func crcImpls() []struct {
	name string
	min  int // shortest length and granule the implementation takes
	f    func(uint64, []byte) uint64
} {
	tab := crcTables()
	impls := []struct {
		name string
		min  int
		f    func(uint64, []byte) uint64
	}{
		{"table", 1, func(c uint64, p []byte) uint64 { return crcUpdateTable(c, tab, p) }},
		{"crcUpdate", 1, func(c uint64, p []byte) uint64 { return crcUpdate(c, tab, p) }},
	}
	if haveCLMUL {
		impls = append(impls, struct {
			name string
			min  int
			f    func(uint64, []byte) uint64
		}{"clmul", 16, crcCLMUL})
	}
	return impls
}

// TestCRCEveryLength: every length from 0 to 4096 at a random alignment,
// from a random register (a continuation), and split in two at a random
// point, against hash/crc64.
func TestCRCEveryLength(t *testing.T) {
	ecma := crc64.MakeTable(crc64.ECMA)
	if !haveCLMUL {
		t.Log("no PCLMULQDQ here (or -tags purego): the tables alone")
	}
	buf := make([]byte, 4096+64)
	for _, im := range crcImpls() {
		t.Run(im.name, func(t *testing.T) {
			r := rand.New(rand.NewSource(7))
			r.Read(buf)
			for n := 0; n <= 4096; n++ {
				if n%im.min != 0 || n < im.min {
					continue
				}
				off := r.Intn(64)
				p := buf[off : off+n]
				init := r.Uint64()
				if n%3 == 0 {
					init = 0
				}
				if got, want := im.f(init, p), crc64.Update(init, ecma, p); got != want {
					t.Fatalf("%d bytes at offset %d from %016x: %016x, hash/crc64 %016x", n, off, init, got, want)
				}
				cut := 0
				if n > 0 {
					cut = r.Intn(n+1) / im.min * im.min
				}
				if cut < im.min || n-cut < im.min {
					continue
				}
				if got, want := im.f(im.f(0, p[:cut]), p[cut:]), crc64.Checksum(p, ecma); got != want {
					t.Fatalf("%d bytes at offset %d split at %d: %016x, hash/crc64 %016x", n, off, cut, got, want)
				}
			}
		})
	}
}

// TestCRCEdgePatterns: all zeros and all ones at lengths around the
// thresholds (16, 64, crcCLMULMin), where a wrong reduction or a skipped
// block shows.
func TestCRCEdgePatterns(t *testing.T) {
	ecma := crc64.MakeTable(crc64.ECMA)
	for _, fill := range []byte{0, 0xff, 0x80, 0x01} {
		for n := 0; n <= 300; n++ {
			p := make([]byte, n)
			for i := range p {
				p[i] = fill
			}
			for _, im := range crcImpls() {
				if n%im.min != 0 || n < im.min {
					continue
				}
				for _, init := range []uint64{0, ^uint64(0)} {
					if got, want := im.f(init, p), crc64.Update(init, ecma, p); got != want {
						t.Fatalf("%s: %d bytes of %#x from %016x: %016x, hash/crc64 %016x", im.name, n, fill, init, got, want)
					}
				}
			}
		}
	}
}

// FuzzCRCMatchesHashCRC64: every implementation, from any register and
// split anywhere, equals hash/crc64 with the ECMA table.
func FuzzCRCMatchesHashCRC64(f *testing.F) {
	f.Add([]byte(""), uint64(0), uint16(0))
	f.Add([]byte("123456789"), uint64(0), uint16(3))
	f.Add(make([]byte, 64), ^uint64(0), uint16(16))
	f.Add(make([]byte, 1024+17), uint64(1), uint16(40))
	r := rand.New(rand.NewSource(11))
	for _, n := range []int{15, 16, 17, 63, 64, 65, 127, 128, 129, 1000, 4099} {
		p := make([]byte, n)
		r.Read(p)
		f.Add(p, r.Uint64(), uint16(r.Intn(n)))
	}
	ecma := crc64.MakeTable(crc64.ECMA)
	impls := crcImpls()
	f.Fuzz(func(t *testing.T, p []byte, init uint64, cut uint16) {
		want := crc64.Update(init, ecma, p)
		c := int(cut) % (len(p) + 1)
		for _, im := range impls {
			if im.min > 1 {
				n := len(p) / im.min * im.min
				if n == 0 {
					continue
				}
				if got, w := im.f(init, p[:n]), crc64.Update(init, ecma, p[:n]); got != w {
					t.Fatalf("%s: %d bytes from %016x: %016x, hash/crc64 %016x", im.name, n, init, got, w)
				}
				continue
			}
			if got := im.f(init, p); got != want {
				t.Fatalf("%s: %d bytes from %016x: %016x, hash/crc64 %016x", im.name, len(p), init, got, want)
			}
			if got := im.f(im.f(init, p[:c]), p[c:]); got != want {
				t.Fatalf("%s: %d bytes from %016x split at %d: %016x, hash/crc64 %016x", im.name, len(p), init, c, got, want)
			}
		}
		// The model is slow (a software PCLMULQDQ): it gets the first 256
		// bytes, which reach every step of the method.
		if n := min(len(p), 256) &^ 15; n > 0 {
			if got, w := crcFoldModel(init, p[:n], &crcFoldKeys), crc64.Update(init, ecma, p[:n]); got != w {
				t.Fatalf("model: %d bytes: %016x, hash/crc64 %016x", n, got, w)
			}
		}
	})
}

// BenchmarkCRC: crcUpdate (as dispatched on this CPU) against the tables
// alone, at a key's size, a typical row value's and a large value's.
func BenchmarkCRC(b *testing.B) {
	tab := crcTables()
	for _, im := range []struct {
		name string
		f    func(uint64, []byte) uint64
	}{
		{"slicing8", func(c uint64, p []byte) uint64 { return crcUpdateTable(c, tab, p) }},
		{"crcUpdate", func(c uint64, p []byte) uint64 { return crcUpdate(c, tab, p) }},
	} {
		for _, n := range []int{32, 1024, 64 << 10} {
			b.Run(fmt.Sprintf("%s/%d", im.name, n), func(b *testing.B) {
				p := make([]byte, n)
				rand.New(rand.NewSource(1)).Read(p)
				b.SetBytes(int64(n))
				var c uint64
				for b.Loop() {
					c = im.f(c, p)
				}
			})
		}
	}
}

// BenchmarkCRCCrossover sets crcCLMULMin: the tables against the assembly
// (with the tables for the last n%16 bytes, as crcUpdate does) by length.
func BenchmarkCRCCrossover(b *testing.B) {
	if !haveCLMUL {
		b.Skip("no PCLMULQDQ")
	}
	tab := crcTables()
	for _, n := range []int{16, 24, 32, 40, 48, 56, 64, 80, 96, 128} {
		p := make([]byte, n)
		b.Run(fmt.Sprintf("table/%d", n), func(b *testing.B) {
			var c uint64
			for b.Loop() {
				c = crcUpdateTable(c, tab, p)
			}
		})
		b.Run(fmt.Sprintf("clmul/%d", n), func(b *testing.B) {
			var c uint64
			for b.Loop() {
				c = crcUpdateTable(crcCLMUL(c, p[:n&^15]), tab, p[n&^15:])
			}
		})
	}
}
