package playground

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"sync/atomic"
	"time"

	"github.com/tikv/client-go/v2/txnkv/transaction"

	"logbackup/tests/simcluster"
)

// workload commits about rate transactions a second of one to four keys
// each until ctx ends, with a leader transfer or a split every three
// seconds' worth of transactions. Leaders only move to stores that up
// says are up (nil: all are), as PD elects no leader on a down store.
func workload(ctx context.Context, c *simcluster.Cluster, rate int, seed int64, up func(uint64) bool, txns *atomic.Int64) {
	rng := rand.New(rand.NewSource(seed))
	every := time.Second / time.Duration(rate)
	next := time.Now()
	for i := 0; ctx.Err() == nil; i++ {
		if i > 0 && i%(rate*3) == 0 {
			regions := c.Regions()
			r := regions[rng.Intn(len(regions))]
			if to := c.StoreIDs()[rng.Intn(len(c.StoreIDs()))]; rng.Intn(2) == 0 {
				if up == nil || up(to) {
					c.TransferLeader(r.Meta.Id, to)
				}
			} else {
				c.Split([]byte(fmt.Sprintf("t%04d", rng.Intn(10000))))
			}
		}
		st, err := c.Txn(ctx, func(txn *transaction.KVTxn) error {
			for j := 0; j < 1+rng.Intn(4); j++ {
				k := []byte(fmt.Sprintf("t%04d", rng.Intn(10000)))
				if err := txn.Set(k, bytes.Repeat([]byte{byte('a' + rng.Intn(26))}, 20+rng.Intn(200))); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil && st != 0 {
			rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			c.ResolveTxn(rctx, st)
			cancel()
		}
		if err == nil {
			txns.Add(1)
		}
		next = next.Add(every)
		if d := time.Until(next); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
			}
		} else if d < -time.Second {
			next = time.Now() // fell behind (a slow commit): do not burst to catch up
		}
	}
}
