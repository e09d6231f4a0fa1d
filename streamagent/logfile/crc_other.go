//go:build !amd64 || purego

package logfile

// haveCLMUL is false without the assembly: crcUpdate uses the tables.
const haveCLMUL = false

func crcCLMUL(crc uint64, p []byte) uint64 { panic("logfile: crcCLMUL without the assembly") }
