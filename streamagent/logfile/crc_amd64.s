//go:build amd64 && !purego

#include "textflag.h"

// CRC-64/XZ by folding with carry-less multiplication (Intel, "Fast CRC
// Computation for Generic Polynomials Using PCLMULQDQ", reflected form; the
// method of Linux's crc64 and TiKV's crc64fast). An XMM register holds 128
// bits of message in input order: its low qword is the higher-degree half
// H, its high qword the lower half L. Moving a register D bits further on
// is H·x^(D+64) + L·x^D, reduced mod P one half at a time by a PCLMULQDQ
// with a key from crcFoldKeys, which leaves at most 128 bits; the block D
// bits on is then XORed in. Four registers fold 64 bytes per round by 512
// bits; at the end they fold into one (by 384, 256, 128), the remaining
// 16-byte blocks by 128, and the last 128 bits become 64 by one more fold
// and a Barrett reduction.

// func crcCLMUL(crc uint64, p []byte) uint64
TEXT ·crcCLMUL(SB), NOSPLIT, $0-40
	MOVQ crc+0(FP), AX
	MOVQ p_base+8(FP), SI
	MOVQ p_len+16(FP), CX
	LEAQ ·crcFoldKeys(SB), DX
	NOTQ AX
	MOVQ AX, X10                 // the register, XORed into the first 8 bytes
	CMPQ CX, $64
	JB   one

	MOVOU 0(SI), X0
	MOVOU 16(SI), X1
	MOVOU 32(SI), X2
	MOVOU 48(SI), X3
	PXOR  X10, X0
	ADDQ  $64, SI
	SUBQ  $64, CX
	MOVOU 0(DX), X10             // fold by 512

four:
	CMPQ CX, $64
	JB   fourtoone
	MOVO  X0, X4
	MOVO  X1, X5
	MOVO  X2, X6
	MOVO  X3, X7
	PCLMULQDQ $0x00, X10, X0
	PCLMULQDQ $0x11, X10, X4
	PCLMULQDQ $0x00, X10, X1
	PCLMULQDQ $0x11, X10, X5
	PCLMULQDQ $0x00, X10, X2
	PCLMULQDQ $0x11, X10, X6
	PCLMULQDQ $0x00, X10, X3
	PCLMULQDQ $0x11, X10, X7
	MOVOU 0(SI), X11
	MOVOU 16(SI), X12
	MOVOU 32(SI), X13
	MOVOU 48(SI), X14
	PXOR  X4, X0
	PXOR  X5, X1
	PXOR  X6, X2
	PXOR  X7, X3
	PXOR  X11, X0
	PXOR  X12, X1
	PXOR  X13, X2
	PXOR  X14, X3
	ADDQ  $64, SI
	SUBQ  $64, CX
	JMP   four

fourtoone:
	// X0 is 384 bits before X3, X1 256, X2 128.
	MOVOU 16(DX), X10
	MOVOU 32(DX), X11
	MOVOU 48(DX), X12
	MOVO  X0, X4
	MOVO  X1, X5
	MOVO  X2, X6
	PCLMULQDQ $0x00, X10, X0
	PCLMULQDQ $0x11, X10, X4
	PCLMULQDQ $0x00, X11, X1
	PCLMULQDQ $0x11, X11, X5
	PCLMULQDQ $0x00, X12, X2
	PCLMULQDQ $0x11, X12, X6
	PXOR  X4, X0
	PXOR  X5, X1
	PXOR  X6, X2
	PXOR  X1, X0
	PXOR  X2, X3
	PXOR  X3, X0
	MOVO  X12, X10               // fold by 128
	JMP   ones

one:
	MOVOU 0(SI), X0
	PXOR  X10, X0
	ADDQ  $16, SI
	SUBQ  $16, CX
	MOVOU 48(DX), X10            // fold by 128

ones:
	TESTQ CX, CX
	JZ    reduce
	MOVO  X0, X4
	PCLMULQDQ $0x00, X10, X0
	PCLMULQDQ $0x11, X10, X4
	MOVOU 0(SI), X11
	PXOR  X4, X0
	PXOR  X11, X0
	ADDQ  $16, SI
	SUBQ  $16, CX
	JMP   ones

reduce:
	// 128 bits X = H·x^64 + L; the CRC register is X·x^64 mod P. First
	// Y = H·(x^128 mod P) + L·x^64 (the high key of X10 is x^127 mod P),
	// 128 bits whose low qword is Y's higher half Yh.
	MOVO  X0, X1
	PCLMULQDQ $0x10, X10, X1     // H times the high key
	PSRLDQ $8, X0                // L into the low qword: L·x^64
	PXOR  X1, X0
	// Barrett: q = floor(Yh·x^64 / P) = floor(Yh·floor(x^127/P) / x^63),
	// the low qword of the product; Y mod P = (q·P mod x^64) + Yl. With
	// the key P/x the product q·(P/x)·x lacks q·1, which the low qword of
	// the first product (q itself) adds back.
	MOVOU 64(DX), X10            // floor(x^127/P), P/x
	MOVO  X0, X1
	PCLMULQDQ $0x00, X10, X1     // Yh·mu: q in the low qword
	MOVO  X1, X2
	PCLMULQDQ $0x10, X10, X2     // q·(P/x)
	PXOR  X2, X0
	PSHUFD $0xee, X0, X0         // high qword down
	MOVQ  X0, AX
	MOVQ  X1, BX
	XORQ  BX, AX
	NOTQ  AX
	MOVQ  AX, ret+32(FP)
	RET
