package logfile

// crcFoldKeys are the constants of the carry-less-multiply CRC in
// crc_amd64.s (Intel's "Fast CRC Computation for Generic Polynomials Using
// PCLMULQDQ", reflected form), for P = the ECMA-182 polynomial. Values are
// bit-reversed 64-bit polynomials, so the product of two of them by
// PCLMULQDQ is the reflected product times x; each key carries one power
// of x less to make up for it. In pairs, low qword first, as the assembly
// loads them:
//
//	fold by 512 bits:  x^575 mod P, x^511 mod P
//	fold by 384 bits:  x^447 mod P, x^383 mod P
//	fold by 256 bits:  x^319 mod P, x^255 mod P
//	fold by 128 bits:  x^191 mod P, x^127 mod P
//	Barrett:           floor(x^127 / P), P / x (without its x^0 term)
//
// TestCRCFoldKeys derives them from the polynomial. Never written: the
// assembly reads them by symbol.
var crcFoldKeys = [10]uint64{
	0x6ae3efbb9dd441f3, 0x081f6054a7842df4,
	0xb5ea1af9c013aca4, 0x69a35d91c3730254,
	0x60095b008a9efa44, 0x3be653a30fe1af51,
	0xe05dd497ca393ae4, 0xdabe95afc7875f40,
	0x9c3e466c172963d5, 0x92d8af2baf0e1e85,
}

// crcCLMULMin is the shortest input crcUpdate hands to crcCLMUL: below it
// the tables are faster (BenchmarkCRCCrossover).
const crcCLMULMin = 16
