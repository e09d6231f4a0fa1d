package storage_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"logbackup/storage"
	"logbackup/tests/s3test"
)

// BenchmarkWriteFile writes 8 MiB objects (a typical flushed log file)
// and reports MB/s. The file:// figure includes the two fsyncs per write.
func BenchmarkWriteFile(b *testing.B) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 8<<20/16)
	run := func(b *testing.B, s storage.Storage) {
		ctx := context.Background()
		b.SetBytes(int64(len(data)))
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := s.WriteFile(ctx, fmt.Sprintf("bench/%08d.log", i), data); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("file", func(b *testing.B) {
		run(b, open(b, "file://"+b.TempDir()))
	})
	b.Run("s3-loopback", func(b *testing.B) {
		srv := s3test.Start(b, "bk")
		run(b, open(b, srv.URL("bk", "bench")))
	})
}
