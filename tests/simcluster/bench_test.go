package simcluster_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/tikv/client-go/v2/txnkv/transaction"

	"logbackup/tests/simcluster"
)

// BenchmarkEventFeedLive measures live rows (PREWRITE + COMMIT) per second
// from client-go transactions through one store's EventFeed on loopback.
func BenchmarkEventFeedLive(b *testing.B) {
	c, err := simcluster.Start(context.Background(), simcluster.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	r := c.RegionByKey([]byte("k"))
	f := openFeed(b, c, r.LeaderStore)
	f.register(r, 1, 0)
	drainUntil(b, f, func(row *cdcpb.Event_Row) bool { return row.Type == cdcpb.Event_INITIALIZED })
	const keysPerTxn = 256
	value := make([]byte, 100)
	b.ResetTimer()
	began := time.Now()
	for i := 0; i < b.N; i++ {
		_, err := c.Txn(context.Background(), func(txn *transaction.KVTxn) error {
			for k := 0; k < keysPerTxn; k++ {
				if err := txn.Set([]byte(fmt.Sprintf("k%08d", i*keysPerTxn+k)), value); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	want := b.N * keysPerTxn * 2
	got := 0
	drainUntil(b, f, func(row *cdcpb.Event_Row) bool { got++; return got == want })
	b.ReportMetric(float64(want)/time.Since(began).Seconds(), "rows/s")
}

// BenchmarkEventFeedScan measures initial-scan rows per second: 50,000
// committed versions, registered from checkpoint 0, until INITIALIZED.
func BenchmarkEventFeedScan(b *testing.B) {
	c, err := simcluster.Start(context.Background(), simcluster.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	const rows = 50000
	value := make([]byte, 100)
	for i := 0; i < rows; i += 1000 {
		if _, err := c.Txn(context.Background(), func(txn *transaction.KVTxn) error {
			for k := i; k < i+1000; k++ {
				if err := txn.Set([]byte(fmt.Sprintf("k%08d", k)), value); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	r := c.RegionByKey([]byte("k"))
	f := openFeed(b, c, r.LeaderStore)
	b.ResetTimer()
	began := time.Now()
	for i := 0; i < b.N; i++ {
		f.register(r, uint64(i+1), 0)
		n := 0
		drainUntil(b, f, func(row *cdcpb.Event_Row) bool { n++; return row.Type == cdcpb.Event_INITIALIZED })
		if n != rows+1 {
			b.Fatalf("scan gave %d rows, want %d", n-1, rows)
		}
	}
	b.ReportMetric(float64(b.N*rows)/time.Since(began).Seconds(), "rows/s")
}

func drainUntil(b *testing.B, f *feed, done func(*cdcpb.Event_Row) bool) {
	timeout := time.After(2 * time.Minute)
	for {
		select {
		case cde, ok := <-f.events:
			if !ok {
				b.Fatalf("stream ended: %v", <-f.errc)
			}
			for _, e := range cde.Events {
				if en := e.GetEntries(); en != nil {
					for _, row := range en.Entries {
						if done(row) {
							return
						}
					}
				}
			}
		case <-timeout:
			b.Fatal("timed out draining the feed")
		}
	}
}
