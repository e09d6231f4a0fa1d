package logfile

import (
	"encoding/binary"
	"hash/crc64"
	"sync"
)

// crcTables is slicing-by-8 for CRC-64/XZ (ECMA-182 polynomial, reflected,
// init and xorout all ones): the checksum TiKV's crc64fast computes and
// Go's hash/crc64 computes with the ECMA table. We keep our own loop
// because hash/crc64 compares 2 KiB tables on every call of 64 bytes or
// more and runs bytewise below that, which made the crc64xor of small
// entries cost more than their sha256. The tables are built once and
// never written again.
var crcTables = sync.OnceValue(func() *[8][256]uint64 {
	var t [8][256]uint64
	t[0] = *crc64.MakeTable(crc64.ECMA)
	for i := 0; i < 256; i++ {
		c := t[0][i]
		for j := 1; j < 8; j++ {
			c = t[0][c&0xff] ^ c>>8
			t[j][i] = c
		}
	}
	return &t
})

// crcUpdate continues a CRC-64/XZ: crcUpdate(crcUpdate(0, a), b) is the
// checksum of a‖b, as with hash/crc64.Update. Inputs of crcCLMULMin bytes
// or more go through carry-less multiplication where the CPU has it
// (crc_amd64.s), 16 bytes at a time; the rest of them (under 16 bytes),
// short inputs such as keys, and other CPUs use the tables.
func crcUpdate(crc uint64, t *[8][256]uint64, p []byte) uint64 {
	if haveCLMUL && len(p) >= crcCLMULMin {
		n := len(p) &^ 15
		crc = crcCLMUL(crc, p[:n])
		p = p[n:]
	}
	return crcUpdateTable(crc, t, p)
}

// crcUpdateTable is crcUpdate with slicing-by-8 alone.
func crcUpdateTable(crc uint64, t *[8][256]uint64, p []byte) uint64 {
	crc = ^crc
	for len(p) >= 8 {
		crc ^= binary.LittleEndian.Uint64(p)
		crc = t[7][crc&0xff] ^ t[6][crc>>8&0xff] ^ t[5][crc>>16&0xff] ^ t[4][crc>>24&0xff] ^
			t[3][crc>>32&0xff] ^ t[2][crc>>40&0xff] ^ t[1][crc>>48&0xff] ^ t[0][crc>>56]
		p = p[8:]
	}
	for _, b := range p {
		crc = t[0][byte(crc)^b] ^ crc>>8
	}
	return ^crc
}

// crcXorFrames is the crc64xor of framed entries: the XOR over entries of
// the CRC of key‖value. b must hold whole frames.
func crcXorFrames(b []byte) (uint64, error) { return crcXorFramesWith(crcTables(), b) }

func crcXorFramesWith(t *[8][256]uint64, b []byte) (uint64, error) {
	var x uint64
	for len(b) > 0 {
		k, v, rest, err := NextFrame(b)
		if err != nil {
			return 0, err
		}
		x ^= crcUpdate(crcUpdate(0, t, k), t, v)
		b = rest
	}
	return x, nil
}
