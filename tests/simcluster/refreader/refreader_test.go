package refreader_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pingcap/log"
	"github.com/tikv/client-go/v2/txnkv/transaction"
	"go.uber.org/zap/zapcore"

	"logbackup/tests/eventually"
	"logbackup/tests/simcluster"
	"logbackup/tests/simcluster/refreader"
)

func TestMain(m *testing.M) {
	log.SetLevel(zapcore.ErrorLevel)
	if os.Getenv("SIM_DEBUG") != "" {
		log.SetLevel(zapcore.WarnLevel)
	}
	os.Exit(m.Run())
}

func seed(t *testing.T) int64 {
	if s := os.Getenv("SIM_SEED"); s != "" {
		v, _ := strconv.ParseInt(s, 10, 64)
		return v
	}
	return time.Now().UnixNano()
}

// TestReconstructsCommittedWrites runs a randomized workload while leaders
// move, regions split and merge and streams drop, and checks the reference
// reader gets exactly the committed writes: nothing missing, nothing
// invented, duplicates only as identical re-deliveries.
func TestReconstructsCommittedWrites(t *testing.T) {
	s := seed(t)
	t.Logf("seed %d (rerun with SIM_SEED=%d)", s, s)
	rng := rand.New(rand.NewSource(s))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c, err := simcluster.Start(ctx, simcluster.Config{SplitKeys: [][]byte{[]byte("k2"), []byte("k5")}, ResolvedTsInterval: 20 * time.Millisecond, Seed: s})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	began := time.Now()
	begin, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := refreader.New(c.PD(), c.ClusterID(), nil, nil, begin)
	rctx, stopReader := context.WithCancel(ctx)
	var readerDone sync.WaitGroup
	readerDone.Add(1)
	go func() { defer readerDone.Done(); r.Run(rctx) }()

	keys := make([]string, 60)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d%02d", i%8, i)
	}
	var mu sync.Mutex // one topology change at a time
	var down uint64   // the store currently down, if any (guarded by mu)
	nemesis := func(nr *rand.Rand) {
		mu.Lock()
		defer mu.Unlock()
		if down != 0 {
			c.StoreUp(down)
			down = 0
			return
		}
		regions := c.Regions()
		reg := regions[nr.Intn(len(regions))]
		stores := c.StoreIDs()
		switch op := nr.Intn(20); {
		case op < 7:
			_ = c.TransferLeader(reg.Meta.Id, stores[nr.Intn(len(stores))])
		case op < 12 && len(regions) < 12:
			_, _ = c.Split([]byte(fmt.Sprintf("k%d%02d%c", nr.Intn(8), nr.Intn(60), 'a'+nr.Intn(26))))
		case op < 15:
			if len(regions) > 3 {
				if raw, err := simcluster.DecodeKey(reg.Meta.StartKey); err == nil && len(reg.Meta.EndKey) > 0 {
					_ = c.Merge(raw)
				}
			}
		case op < 16:
			c.DropStreams(stores[nr.Intn(len(stores))])
		case op < 17:
			down = stores[nr.Intn(len(stores))]
			c.StoreDown(down)
		case op < 19:
			// Slow initial scans: live rows overtake them for a while.
			s := stores[nr.Intn(len(stores))]
			c.HoldScans(s, true)
			time.AfterFunc(time.Duration(5+nr.Intn(20))*time.Millisecond, func() { c.HoldScans(s, false) })
		default:
			c.FailRegistrations(stores[nr.Intn(len(stores))], 1, simcluster.ServerIsBusy())
		}
	}
	var wg sync.WaitGroup
	nemesisSeed := rng.Int63()
	stopNemesis := make(chan struct{})
	wg.Add(1)
	go func() { // a concurrent nemesis, racing the writes
		defer wg.Done()
		nr := rand.New(rand.NewSource(nemesisSeed))
		for {
			t := time.NewTimer(time.Duration(20+nr.Intn(40)) * time.Millisecond)
			select {
			case <-stopNemesis:
				t.Stop()
				return
			case <-t.C:
			}
			nemesis(nr)
		}
	}()

	// Workload: two concurrent writers (racing on shared keys) running
	// multi-key transactions, deletes, large values, rollbacks, heartbeats
	// and transactions held open across topology changes.
	writer := func(wr *rand.Rand, id int, txns int) error {
		var open []*simcluster.OpenTxn
		for i := 0; i < txns; i++ {
			if id == 0 && i%8 == 0 {
				nemesis(wr) // and one in step with the workload
			}
			switch op := wr.Intn(10); {
			case op < 6:
				n := 1 + wr.Intn(5)
				startTS, err := c.Txn(ctx, func(txn *transaction.KVTxn) error {
					for j := 0; j < n; j++ {
						k := []byte(keys[wr.Intn(len(keys))])
						if wr.Intn(5) == 0 {
							if err := txn.Delete(k); err != nil {
								return err
							}
							continue
						}
						size := 8
						if wr.Intn(10) == 0 {
							size = 300 + wr.Intn(64<<10) // past TiKV's short-value limit
						}
						if err := txn.Set(k, bytes.Repeat([]byte{byte('a' + wr.Intn(26))}, size)); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil && startTS != 0 {
					// A commit that failed (a write conflict with the other
					// writer, topology churn) may leave locks; settle them as
					// TiKV's lock resolution would. The ledger says what did
					// commit.
					if err := c.ResolveTxn(ctx, startTS); err != nil {
						return fmt.Errorf("resolve txn %d: %w", startTS, err)
					}
				}
			case op < 8:
				size := 4
				if wr.Intn(3) == 0 {
					size = 1000
				}
				t2, err := c.Prewrite(ctx, simcluster.Mutation{Key: []byte(fmt.Sprintf("%s-open%d-%d", keys[wr.Intn(len(keys))], id, i)),
					Value: bytes.Repeat([]byte{'o'}, size)})
				if err != nil {
					return fmt.Errorf("prewrite: %w", err)
				}
				open = append(open, t2)
			default:
				if len(open) == 0 {
					continue
				}
				t2 := open[0]
				open = open[1:]
				var err error
				switch wr.Intn(4) {
				case 0:
					err = t2.Rollback(ctx)
				case 1:
					if err = t2.Heartbeat(ctx, 2*time.Hour); err == nil {
						_, err = t2.Commit(ctx)
					}
				default:
					_, err = t2.Commit(ctx)
				}
				if err != nil {
					return fmt.Errorf("finish open txn: %w", err)
				}
			}
		}
		for _, t2 := range open {
			if _, err := t2.Commit(ctx); err != nil {
				return err
			}
		}
		return nil
	}
	errc := make(chan error, 2)
	for w := 0; w < 2; w++ {
		wr := rand.New(rand.NewSource(rng.Int63()))
		go func(id int) { errc <- writer(wr, id, 200) }(w)
	}
	for w := 0; w < 2; w++ {
		if err := <-errc; err != nil {
			t.Fatalf("seed %d: %v", s, err)
		}
	}
	close(stopNemesis)
	wg.Wait()
	mu.Lock()
	if down != 0 {
		c.StoreUp(down)
	}
	mu.Unlock()
	workloadTook := time.Since(began)

	end, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	testEnd, _ := ctx.Deadline()
	eventually.NoError(t, time.Until(testEnd), func(context.Context) error {
		if got := r.Resolved(); got < end {
			return fmt.Errorf("at %d", got)
		}
		return nil
	}, "seed %d: the reader's resolved ts to reach %d", s, end)
	t.Logf("workload %s, reader caught up %s later", workloadTook.Round(time.Millisecond), (time.Since(began) - workloadTook).Round(time.Millisecond))
	stopReader()
	readerDone.Wait()

	want := c.Committed(begin, end)
	got, dups := r.Changes(begin, end)
	if len(want) < 100 {
		t.Fatalf("seed %d: workload committed only %d versions", s, len(want))
	}
	for _, p := range r.Problems() {
		t.Errorf("seed %d: reader problem: %v", s, p)
	}
	if err := compare(want, got); err != nil {
		t.Fatalf("seed %d: %v", s, err)
	}
	if err := c.CheckLedger(ctx); err != nil {
		t.Fatalf("seed %d: %v", s, err)
	}
	_, reasons := r.Stats()
	t.Logf("%d versions reconstructed; %d duplicate deliveries, resubscriptions %v, %d regions at the end",
		len(want), dups, reasons, len(c.Regions()))
	for _, kind := range []string{"not-leader", "stream-lost"} {
		if reasons[kind] == 0 {
			t.Fatalf("seed %d: the nemesis caused no %s resubscription; the test proved too little", s, kind)
		}
	}
	if reasons["epoch-not-match"]+reasons["region-not-found"] == 0 {
		t.Fatalf("seed %d: no split or merge reached a subscription", s)
	}
}

func describe(cs []refreader.Change, i int) string {
	if i >= len(cs) {
		return "<none>"
	}
	return fmt.Sprintf("%q@%d", cs[i].Key, cs[i].CommitTS)
}

// compare checks that got holds exactly the versions of want.
func compare(want []simcluster.Version, got []refreader.Change) error {
	gi := 0
	for _, w := range want {
		if gi >= len(got) || !bytes.Equal(got[gi].Key, w.Key) || got[gi].CommitTS != w.CommitTS {
			return fmt.Errorf("missing %q@%d (next got: %v)", w.Key, w.CommitTS, describe(got, gi))
		}
		g := got[gi]
		if g.StartTS != w.StartTS || g.Delete != w.Delete || !bytes.Equal(g.Value, w.Value) {
			return fmt.Errorf("%q@%d differs: got start %d del %v len %d, want start %d del %v len %d",
				w.Key, w.CommitTS, g.StartTS, g.Delete, len(g.Value), w.StartTS, w.Delete, len(w.Value))
		}
		gi++
	}
	if gi != len(got) {
		return fmt.Errorf("reader invented %d changes, first %v", len(got)-gi, describe(got, gi))
	}
	return nil
}

// TestCompareCanFail feeds the checker deliberately broken output.
func TestCompareCanFail(t *testing.T) {
	want := []simcluster.Version{{Key: []byte("a"), StartTS: 1, CommitTS: 2, Value: []byte("x")}, {Key: []byte("b"), StartTS: 3, CommitTS: 4, Delete: true}}
	ok := []refreader.Change{{Key: []byte("a"), StartTS: 1, CommitTS: 2, Value: []byte("x")}, {Key: []byte("b"), StartTS: 3, CommitTS: 4, Delete: true}}
	if err := compare(want, ok); err != nil {
		t.Fatalf("identical output rejected: %v", err)
	}
	broken := map[string][]refreader.Change{
		"missing":  ok[:1],
		"invented": append(append([]refreader.Change{}, ok...), refreader.Change{Key: []byte("c"), CommitTS: 9}),
		"value":    {{Key: []byte("a"), StartTS: 1, CommitTS: 2, Value: []byte("y")}, ok[1]},
		"op":       {ok[0], {Key: []byte("b"), StartTS: 3, CommitTS: 4}},
		"ts":       {{Key: []byte("a"), StartTS: 1, CommitTS: 3, Value: []byte("x")}, ok[1]},
	}
	for name, got := range broken {
		if compare(want, got) == nil {
			t.Errorf("%s: broken output accepted", name)
		}
	}
}
