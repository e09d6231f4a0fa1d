//go:build amd64 && !purego

package logfile

import "golang.org/x/sys/cpu"

// haveCLMUL is whether crcCLMUL can run here: it needs PCLMULQDQ and
// SSE2 (which every amd64 has). Set once by the cpu package's detection.
var haveCLMUL = cpu.X86.HasPCLMULQDQ

// crcCLMUL continues a CRC-64/XZ over p, whose length must be a multiple
// of 16 and at least 16, by folding with PCLMULQDQ.
//
//go:noescape
func crcCLMUL(crc uint64, p []byte) uint64
