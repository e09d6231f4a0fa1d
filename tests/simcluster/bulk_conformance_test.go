package simcluster_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tikv/client-go/v2/txnkv/transaction"

	"logbackup/tests/eventually"
	"logbackup/tests/simcluster"
	"logbackup/tests/simcluster/refreader"
)

// TestBulkReconstructedUnderNemesis: two bulk writers (short and long
// values, overwriting their keys) and a client-go writer run while leaders
// move, regions split and merge — inside the writers' ranges too — streams
// drop, a store goes down, scans are slow and registrations fail; the
// reference reader must get exactly the committed versions (nothing lost,
// nothing twice with other contents, no commit at or below a resolved ts).
func TestBulkReconstructedUnderNemesis(t *testing.T) {
	seed := time.Now().UnixNano()
	if s := os.Getenv("SIM_SEED"); s != "" {
		seed, _ = strconv.ParseInt(s, 10, 64)
	}
	t.Logf("seed %d (rerun with SIM_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewSource(seed))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c, err := simcluster.Start(ctx, simcluster.Config{SplitKeys: [][]byte{[]byte("k5")}, ResolvedTsInterval: 20 * time.Millisecond, Seed: seed})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	short, err := c.NewBulkWriter(simcluster.BulkConfig{Keys: simcluster.KeysTiDBRow, TableID: 41, Regions: 4, Split: true,
		ValueSize: 64, BatchSize: 64, KeysPerShard: 2000, Seed: rng.Int63()})
	if err != nil {
		t.Fatal(err)
	}
	long, err := c.NewBulkWriter(simcluster.BulkConfig{Prefix: []byte("p/"), Regions: 3, Run: 1,
		ValueSize: 1000, BatchSize: 16, KeysPerShard: 100, Seed: rng.Int63()})
	if err != nil {
		t.Fatal(err)
	}
	begin, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := refreader.New(c.PD(), c.ClusterID(), nil, nil, begin)
	rctx, stopReader := context.WithCancel(ctx)
	var readerDone sync.WaitGroup
	readerDone.Add(1)
	go func() { defer readerDone.Done(); r.Run(rctx) }()

	// Split points inside the writers' ranges as well as among the
	// client-go keys.
	splitKey := func(nr *rand.Rand) []byte {
		switch nr.Intn(3) {
		case 0:
			s, _ := short.Range() // t{41}_r + a memcomparable handle shard<<43 | seq
			return binary.BigEndian.AppendUint64(s, uint64(int64(nr.Intn(4))<<43|int64(nr.Intn(2000)))^1<<63)
		case 1:
			s, _ := long.Range()
			return append(s, 0, 0, 0, byte(nr.Intn(3)), 0, 0, 0, 0, 0, 0, 0, byte(nr.Intn(100)))
		}
		return []byte(fmt.Sprintf("k%d%c", nr.Intn(10), 'a'+nr.Intn(26)))
	}
	var mu sync.Mutex // one topology change at a time
	var down uint64   // guarded by mu
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
		case op < 12 && len(regions) < 24:
			_, _ = c.Split(splitKey(nr))
		case op < 15:
			if raw, err := simcluster.DecodeKey(reg.Meta.StartKey); err == nil && len(reg.Meta.EndKey) > 0 && len(regions) > 4 {
				_ = c.Merge(raw)
			}
		case op < 16:
			c.DropStreams(stores[nr.Intn(len(stores))])
		case op < 17:
			down = stores[nr.Intn(len(stores))]
			c.StoreDown(down)
		case op < 19:
			s := stores[nr.Intn(len(stores))]
			c.HoldScans(s, true)
			time.AfterFunc(time.Duration(5+nr.Intn(20))*time.Millisecond, func() { c.HoldScans(s, false) })
		default:
			c.FailRegistrations(stores[nr.Intn(len(stores))], 1, simcluster.ServerIsBusy())
		}
	}
	stopNemesis := make(chan struct{})
	var wg sync.WaitGroup
	nemesisSeed := rng.Int63()
	wg.Add(1)
	go func() {
		defer wg.Done()
		nr := rand.New(rand.NewSource(nemesisSeed))
		for {
			t := time.NewTimer(time.Duration(10+nr.Intn(30)) * time.Millisecond)
			select {
			case <-stopNemesis:
				t.Stop()
				return
			case <-t.C:
			}
			nemesis(nr)
		}
	}()

	// Resolved-ts rounds back to back, besides the 20 ms loop, so that many
	// fall between a batch's prewrite and its commit.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stopNemesis:
				return
			default:
			}
			c.ResolveOnce(ctx)
			// Time is the subject: the nemesis's pace, a round every
			// 200 µs (what it meets is up to the scheduler).
			time.Sleep(200 * time.Microsecond)
		}
	}()
	errc := make(chan error, 3)
	// The bulk writers write in slices, so the nemesis lands between and
	// during their batches for a good while. Between slices the long-value
	// writer holds a batch open across a scripted topology change (so
	// every kind happens whatever the random nemesis does), then commits
	// it or rolls it back.
	var bulkRows [2]int64
	scripted := func(i int) {
		mu.Lock()
		defer mu.Unlock()
		s, _ := long.Range()
		reg := c.RegionByKey(append(s, 0, 0, 0, byte(i%3)))
		switch i % 4 {
		case 0:
			for _, st := range c.StoreIDs() {
				if st != reg.LeaderStore {
					_ = c.TransferLeader(reg.Meta.Id, st)
					break
				}
			}
		case 1:
			_, _ = c.Split(append(s, 0, 0, 0, byte(i%3), 0, 0, 0, 0, 0, 0, 0, byte(i)))
		case 2:
			if raw, err := simcluster.DecodeKey(reg.Meta.StartKey); err == nil && len(reg.Meta.EndKey) > 0 {
				_ = c.Merge(raw)
			}
		case 3:
			c.DropStreams(reg.LeaderStore)
		}
	}
	for wi, w := range []*simcluster.BulkWriter{short, long} {
		go func(wi int, w *simcluster.BulkWriter) {
			for i := 0; i < 40; i++ {
				st, err := w.Write(ctx, 500)
				if err != nil {
					errc <- err
					return
				}
				bulkRows[wi] += st.Rows
				if wi == 1 && i%2 == 0 {
					b, err := w.Prewrite(ctx)
					if err != nil {
						errc <- err
						return
					}
					scripted(i / 2)
					if i%4 == 0 {
						b.Rollback()
					} else if _, err := b.Commit(ctx); err != nil {
						errc <- err
						return
					}
					if i%4 != 0 {
						bulkRows[wi] += 16
					}
				}
				// Time is the subject: a pause between slices in which the
				// nemesis acts, too.
				time.Sleep(5 * time.Millisecond)
			}
			errc <- nil
		}(wi, w)
	}
	go func() { // client-go transactions beside them
		wr := rand.New(rand.NewSource(rng.Int63()))
		for i := 0; i < 150; i++ {
			startTS, err := c.Txn(ctx, func(txn *transaction.KVTxn) error {
				for j := 0; j < 1+wr.Intn(4); j++ {
					v := bytes.Repeat([]byte{byte('a' + wr.Intn(26))}, 8+wr.Intn(2)*400)
					if err := txn.Set([]byte(fmt.Sprintf("k%d%02d", wr.Intn(10), wr.Intn(40))), v); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil && startTS != 0 {
				if err := c.ResolveTxn(ctx, startTS); err != nil {
					errc <- err
					return
				}
			}
		}
		errc <- nil
	}()
	for i := 0; i < 3; i++ {
		if err := <-errc; err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
	}
	close(stopNemesis)
	wg.Wait()
	mu.Lock()
	if down != 0 {
		c.StoreUp(down)
	}
	mu.Unlock()

	end, err := c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	eventually.NoError(t, untilDone(ctx), func(context.Context) error {
		if got := r.Resolved(); got < end {
			return fmt.Errorf("at %d", got)
		}
		return nil
	}, "seed %d: the reader's resolved ts to reach %d", seed, end)
	stopReader()
	readerDone.Wait()

	want := c.Committed(begin, end)
	got, dups := r.Changes(begin, end)
	for _, p := range r.Problems() {
		t.Errorf("seed %d: reader problem: %v", seed, p)
	}
	if err := compareChanges(want, got); err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	if err := c.CheckLedger(ctx); err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	bulk := 0
	for _, v := range want {
		if bytes.HasPrefix(v.Key, []byte("p/")) || bytes.HasPrefix(v.Key, []byte("t")) {
			bulk++
		}
	}
	_, reasons := r.Stats()
	t.Logf("%d versions (%d from the bulk writers) reconstructed; %d duplicate deliveries, resubscriptions %v, %d regions at the end",
		len(want), bulk, dups, reasons, len(c.Regions()))
	if want := int(bulkRows[0] + bulkRows[1]); bulk != want {
		t.Fatalf("seed %d: %d bulk versions committed, the writers say %d", seed, bulk, want)
	}
	for _, kind := range []string{"not-leader", "stream-lost"} {
		if reasons[kind] == 0 {
			t.Fatalf("seed %d: the nemesis caused no %s resubscription; the test proved too little", seed, kind)
		}
	}
	if reasons["epoch-not-match"]+reasons["region-not-found"] == 0 {
		t.Fatalf("seed %d: no split or merge reached a subscription", seed)
	}
}

// compareChanges checks that got holds exactly the versions of want (both
// ordered by key, then commit ts).
func compareChanges(want []simcluster.Version, got []refreader.Change) error {
	for i, w := range want {
		if i >= len(got) {
			return fmt.Errorf("missing %q@%d and %d more", w.Key, w.CommitTS, len(want)-i-1)
		}
		g := got[i]
		if !bytes.Equal(g.Key, w.Key) || g.CommitTS != w.CommitTS {
			return fmt.Errorf("missing %q@%d (got %q@%d there)", w.Key, w.CommitTS, g.Key, g.CommitTS)
		}
		if g.StartTS != w.StartTS || g.Delete != w.Delete || !bytes.Equal(g.Value, w.Value) {
			return fmt.Errorf("%q@%d differs: got start %d del %v len %d, want start %d del %v len %d",
				w.Key, w.CommitTS, g.StartTS, g.Delete, len(g.Value), w.StartTS, w.Delete, len(w.Value))
		}
	}
	if len(got) > len(want) {
		return fmt.Errorf("reader invented %d changes, first %q@%d", len(got)-len(want), got[len(want)].Key, got[len(want)].CommitTS)
	}
	return nil
}

// TestCompareChangesCanFail feeds the checker deliberately broken output.
func TestCompareChangesCanFail(t *testing.T) {
	want := []simcluster.Version{{Key: []byte("a"), StartTS: 1, CommitTS: 2, Value: []byte("x")}, {Key: []byte("b"), StartTS: 3, CommitTS: 4, Value: []byte("y")}}
	ok := []refreader.Change{{Key: []byte("a"), StartTS: 1, CommitTS: 2, Value: []byte("x")}, {Key: []byte("b"), StartTS: 3, CommitTS: 4, Value: []byte("y")}}
	if err := compareChanges(want, ok); err != nil {
		t.Fatalf("identical output rejected: %v", err)
	}
	for name, got := range map[string][]refreader.Change{
		"missing":  ok[:1],
		"invented": append(append([]refreader.Change{}, ok...), refreader.Change{Key: []byte("c"), CommitTS: 9}),
		"value":    {ok[0], {Key: []byte("b"), StartTS: 3, CommitTS: 4, Value: []byte("z")}},
		"start ts": {ok[0], {Key: []byte("b"), StartTS: 2, CommitTS: 4, Value: []byte("y")}},
		"key":      {ok[0], {Key: []byte("c"), StartTS: 3, CommitTS: 4, Value: []byte("y")}},
	} {
		if compareChanges(want, got) == nil {
			t.Errorf("%s: broken output accepted", name)
		}
	}
}
