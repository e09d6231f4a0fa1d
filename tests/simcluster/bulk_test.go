package simcluster_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"

	"logbackup/tests/simcluster"
)

// bulkRegions lists the regions overlapping a writer's raw range.
func bulkRegions(c *simcluster.Cluster, w *simcluster.BulkWriter) []simcluster.RegionInfo {
	start, end := w.Range()
	es, ee := simcluster.EncodeKey(start), simcluster.EncodeKey(end)
	var out []simcluster.RegionInfo
	for _, r := range c.Regions() {
		if (len(r.Meta.EndKey) == 0 || bytes.Compare(r.Meta.EndKey, es) > 0) && bytes.Compare(r.Meta.StartKey, ee) < 0 {
			out = append(out, r)
		}
	}
	return out
}

// benchShapes are the benchmarks' value sizes and region counts. Run 0 is
// the default (1,024-row transactions spread evenly: 64 rows per region at
// 16 regions, about one row per region — one Event per row — at 1,000);
// run 1,024 puts each transaction in one region.
type benchShapeT struct{ value, regions, run int }

var benchShapes = []benchShapeT{{100, 16, 0}, {1024, 16, 0}, {100, 1000, 0}, {1024, 1000, 0}, {100, 1000, 1024}}

func (s benchShapeT) name() string {
	n := fmt.Sprintf("value=%d/regions=%d", s.value, s.regions)
	if s.run > 0 {
		n += fmt.Sprintf("/run=%d", s.run)
	}
	return n
}

func startBulk(b *testing.B, value, regions, run int) (*simcluster.Cluster, *simcluster.BulkWriter) {
	c, err := simcluster.Start(context.Background(), simcluster.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	w, err := c.NewBulkWriter(simcluster.BulkConfig{Keys: simcluster.KeysTiDBRow, Regions: regions, Split: true, ValueSize: value, BatchSize: 1024, Run: run})
	if err != nil {
		b.Fatal(err)
	}
	return c, w
}

// BenchmarkBulkWriter measures the bulk writer alone (no subscriber):
// b.N rows of TiDB-like row keys in transactions of 1,024 rows.
func BenchmarkBulkWriter(b *testing.B) {
	for _, s := range benchShapes {
		b.Run(benchShapeT(s).name(), func(b *testing.B) {
			_, w := startBulk(b, s.value, s.regions, s.run)
			b.ResetTimer()
			cpu := cpuTime(b)
			st, err := w.Write(context.Background(), int64(b.N))
			if err != nil {
				b.Fatal(err)
			}
			reportCPU(b, cpu)
			b.ReportMetric(float64(st.Rows)/st.Elapsed.Seconds(), "rows/s")
			b.ReportMetric(float64(st.Bytes)/st.Elapsed.Seconds()/1e6, "MB/s")
		})
	}
}

// BenchmarkBulkEventFeed measures the bulk writer delivering to one plain
// gRPC EventFeed client subscribed to every region of the writer's range on
// the store leading them: b.N rows, until the client has every COMMIT row.
// rows/s and MB/s count committed rows and their key and value bytes; each
// row is two rows on the wire (PREWRITE and COMMIT).
func BenchmarkBulkEventFeed(b *testing.B) {
	for _, s := range benchShapes {
		b.Run(benchShapeT(s).name(), func(b *testing.B) {
			c, w := startBulk(b, s.value, s.regions, s.run)
			regions := bulkRegions(c, w)
			f := openFeed(b, c, regions[0].LeaderStore)
			for i, r := range regions {
				if r.LeaderStore != regions[0].LeaderStore {
					b.Fatalf("region %d led by store %d, not %d", r.Meta.Id, r.LeaderStore, regions[0].LeaderStore)
				}
				f.register(r, uint64(i+1), 0)
			}
			inits := 0
			drainUntil(b, f, func(row *cdcpb.Event_Row) bool {
				if row.Type == cdcpb.Event_INITIALIZED {
					inits++
				}
				return inits == len(regions)
			})
			b.ResetTimer()
			cpu := cpuTime(b)
			began := time.Now()
			errc := make(chan error, 1)
			var st simcluster.BulkStats
			go func() {
				var err error
				st, err = w.Write(context.Background(), int64(b.N))
				errc <- err
			}()
			commits := 0
			drainUntil(b, f, func(row *cdcpb.Event_Row) bool {
				if row.Type == cdcpb.Event_COMMIT {
					commits++
				}
				return commits == b.N
			})
			took := time.Since(began)
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
			reportCPU(b, cpu)
			b.ReportMetric(float64(b.N)/took.Seconds(), "rows/s")
			b.ReportMetric(float64(st.Bytes)/took.Seconds()/1e6, "MB/s")
		})
	}
}

// cpuTime is the process's CPU time so far (user + system). On a shared
// machine wall-clock rates move with other work; CPU per row does less.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the process's CPU time per row since from: writer,
// stores and client together, garbage collection included.
func reportCPU(b *testing.B, from time.Duration) {
	b.ReportMetric(float64((cpuTime(b)-from).Nanoseconds())/float64(b.N), "cpu-ns/row")
}

// TestBulkRowsLikeTwoPhaseCommit: the writer's rows on the wire are the
// 2PC path's — PREWRITE with the value, then COMMIT with the value when it
// is short and none when it is long — in order, with start ts < commit ts
// from the cluster's TSO, and the initial scan gives them back as
// COMMITTED rows, keys ascending, newest version first.
func TestBulkRowsLikeTwoPhaseCommit(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	for _, size := range []int{100, 256, 4096} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			w, err := c.NewBulkWriter(simcluster.BulkConfig{Prefix: []byte(fmt.Sprintf("v%d/", size)), Regions: 2, Split: true,
				ValueSize: size, BatchSize: 8, KeysPerShard: 8})
			if err != nil {
				t.Fatal(err)
			}
			regions := bulkRegions(c, w)
			if len(regions) != 2 {
				t.Fatalf("split into %d regions, want 2", len(regions))
			}
			// A client-go write of the same value size outside the range:
			// the reference row shape.
			ref := fmt.Sprintf("v%d.", size-1)
			var feeds []*feed
			for _, r := range append(regions, c.RegionByKey([]byte(ref))) {
				f := openFeed(t, c, r.LeaderStore)
				f.register(r, 1, 0)
				f.items(5*time.Second, isInitialized)
				feeds = append(feeds, f)
			}
			before, err := c.TSO(ctx)
			if err != nil {
				t.Fatal(err)
			}
			st, err := w.Write(ctx, 32) // 4 batches: every key twice
			if err != nil {
				t.Fatal(err)
			}
			if st.Rows != 32 || st.Batches != 4 {
				t.Fatalf("wrote %+v", st)
			}
			put(t, c, ref, string(bytes.Repeat([]byte{'r'}, size)))
			shape := func(rows []*cdcpb.Event_Row) string {
				var out []string
				for _, r := range rows {
					s := r.Type.String() + " " + r.OpType.String()
					if len(r.Value) > 0 {
						s += fmt.Sprintf(" value=%d", len(r.Value))
					}
					out = append(out, s)
				}
				return strings.Join(out, ", ")
			}
			var refRows []*cdcpb.Event_Row
			feeds[2].items(5*time.Second, func(it item) bool {
				refRows = append(refRows, it.ev.GetEntries().GetEntries()...)
				return len(refRows) == 2
			})
			want := shape(refRows)
			for i, f := range feeds[:2] {
				var got []*cdcpb.Event_Row
				f.items(5*time.Second, func(it item) bool {
					got = append(got, it.ev.GetEntries().GetEntries()...)
					return len(got) == 32 // 16 rows × PREWRITE + COMMIT
				})
				prewrites := map[string]*cdcpb.Event_Row{}
				for _, r := range got {
					k := fmt.Sprintf("%s@%d", r.Key, r.StartTs)
					switch r.Type {
					case cdcpb.Event_PREWRITE:
						if r.StartTs <= before {
							t.Fatalf("region %d: start ts %d not from the TSO after %d", i, r.StartTs, before)
						}
						prewrites[k] = r
					case cdcpb.Event_COMMIT:
						p := prewrites[k]
						if p == nil {
							t.Fatalf("region %d: COMMIT %s before its PREWRITE", i, k)
						}
						if r.CommitTs <= r.StartTs {
							t.Fatalf("region %d: commit ts %d not after start ts %d", i, r.CommitTs, r.StartTs)
						}
						if got := shape([]*cdcpb.Event_Row{p, r}); got != want {
							t.Fatalf("region %d: bulk rows %q, 2PC rows %q", i, got, want)
						}
						if len(r.Value) > 0 && !bytes.Equal(r.Value, p.Value) {
							t.Fatalf("region %d: COMMIT value differs from the PREWRITE's", i)
						}
						delete(prewrites, k)
					default:
						t.Fatalf("region %d: unexpected %v row", i, r.Type)
					}
				}
				if len(prewrites) != 0 {
					t.Fatalf("region %d: %d PREWRITEs never committed", i, len(prewrites))
				}
			}
			// The initial scan: every version as COMMITTED with its value,
			// keys ascending, a key's versions newest first.
			var versions int
			for _, r := range regions {
				f := openFeed(t, c, r.LeaderStore)
				f.register(r, 2, 0)
				var scanned []*cdcpb.Event_Row
				for _, it := range f.items(5*time.Second, isInitialized) {
					scanned = append(scanned, it.ev.GetEntries().GetEntries()...)
				}
				scanned = scanned[:len(scanned)-1] // INITIALIZED
				for j, row := range scanned {
					if row.Type != cdcpb.Event_COMMITTED || len(row.Value) != size {
						t.Fatalf("scan row %d: %v value %d bytes", j, row.Type, len(row.Value))
					}
					if j > 0 {
						prev := scanned[j-1]
						if c := bytes.Compare(prev.Key, row.Key); c > 0 || c == 0 && prev.CommitTs <= row.CommitTs {
							t.Fatalf("scan order: %q@%d before %q@%d", prev.Key, prev.CommitTs, row.Key, row.CommitTs)
						}
					}
					vs := c.Versions(row.Key)
					if !containsVersion(vs, row) {
						t.Fatalf("scan row %q@%d is not a version of the ledger", row.Key, row.CommitTs)
					}
				}
				versions += len(scanned)
			}
			if versions != 32 {
				t.Fatalf("scans gave %d versions, want 32", versions)
			}
		})
	}
}

func containsVersion(vs []simcluster.Version, row *cdcpb.Event_Row) bool {
	for _, v := range vs {
		if v.StartTS == row.StartTs && v.CommitTS == row.CommitTs && bytes.Equal(v.Value, row.Value) && !v.Delete {
			return true
		}
	}
	return false
}

// TestBulkScanMergesWithOtherKeys: a region holding both client-go keys and
// a writer's keys scans them all, in one ascending key order.
func TestBulkScanMergesWithOtherKeys(t *testing.T) {
	c := start(t)
	put(t, c, "a", "1", "m", "2", "m0", "3", "z", "4")
	w, err := c.NewBulkWriter(simcluster.BulkConfig{Prefix: []byte("m/"), Regions: 3, BatchSize: 6})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(context.Background(), 12); err != nil {
		t.Fatal(err)
	}
	r := c.RegionByKey([]byte("a"))
	f := openFeed(t, c, r.LeaderStore)
	f.register(r, 1, 0)
	var keys []string
	for _, it := range f.items(5*time.Second, isInitialized) {
		for _, row := range it.ev.GetEntries().GetEntries() {
			if row.Type == cdcpb.Event_COMMITTED {
				keys = append(keys, string(row.Key))
			}
		}
	}
	if len(keys) != 16 || keys[0] != "a" || keys[1] != "m" || keys[14] != "m0" || keys[15] != "z" {
		t.Fatalf("scan keys %q", keys)
	}
	for i := 1; i < len(keys); i++ {
		if keys[i-1] >= keys[i] {
			t.Fatalf("scan keys out of order: %q before %q", keys[i-1], keys[i])
		}
	}
	// A sub-range inside the writer's range, and one across its end.
	for _, rg := range [][2]string{{"m/\x00\x00\x00\x01", "m/\x00\x00\x00\x02"}, {"m/\x00\x00\x00\x02", "n"}} {
		g := openFeed(t, c, r.LeaderStore)
		g.registerRange(r.Meta, 2, 0, simcluster.EncodeKey([]byte(rg[0])), simcluster.EncodeKey([]byte(rg[1])))
		var got []string
		for _, it := range g.items(5*time.Second, isInitialized) {
			for _, row := range it.ev.GetEntries().GetEntries() {
				if row.Type == cdcpb.Event_COMMITTED {
					got = append(got, string(row.Key))
				}
			}
		}
		var want []string
		for _, k := range keys {
			if k >= rg[0] && k < rg[1] {
				want = append(want, k)
			}
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Fatalf("scan of %q..%q: %q, want %q", rg[0], rg[1], got, want)
		}
	}
	if err := c.CheckLedger(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestBulkOwnsItsRange: client-go prewrites into a writer's range are
// refused (mocktikv could not see the conflict), writes beside it work,
// and writers cannot overlap each other or claim keys already written.
func TestBulkOwnsItsRange(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	put(t, c, "taken/1", "x")
	w, err := c.NewBulkWriter(simcluster.BulkConfig{Keys: simcluster.KeysTiDBRow, TableID: 7})
	if err != nil {
		t.Fatal(err)
	}
	start, end := w.Range()
	if _, err := c.Put(ctx, append(start, 1, 2, 3), []byte("v")); err == nil || !strings.Contains(err.Error(), "bulk writer") {
		t.Fatalf("a client-go write into the writer's range: %v", err)
	}
	if _, err := c.Put(ctx, end, []byte("v")); err != nil {
		t.Fatalf("a write just past the writer's range: %v", err)
	}
	for name, cfg := range map[string]simcluster.BulkConfig{
		"same table":          {Keys: simcluster.KeysTiDBRow, TableID: 7},
		"prefix over a table": {Prefix: start[:3]},
		"written keys":        {Prefix: []byte("taken/")},
		"empty prefix":        {Prefix: []byte{}},
		"all-0xff prefix":     {Prefix: []byte{0xff, 0xff}},
		"regions":             {Prefix: []byte("r/"), Regions: 1 << 21},
		"negative rate":       {Prefix: []byte("r/"), Rate: -1},
		"huge values":         {Prefix: []byte("r/"), ValueSize: 9 << 20},
		"too few keys":        {Prefix: []byte("r/"), BatchSize: 100, KeysPerShard: 10},
		"layout":              {Prefix: []byte("r/"), Keys: 9},
	} {
		if _, err := c.NewBulkWriter(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := c.CheckLedger(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestBulkRate: a target rate paces the writer (a lower bound on time, so
// a slow machine cannot fail it).
func TestBulkRate(t *testing.T) {
	c := start(t)
	w, err := c.NewBulkWriter(simcluster.BulkConfig{Prefix: []byte("rate/"), BatchSize: 10, Rate: 2000})
	if err != nil {
		t.Fatal(err)
	}
	st, err := w.Write(context.Background(), 200)
	if err != nil {
		t.Fatal(err)
	}
	// The last batch may start at (200-10)/2000 s.
	if st.Rows != 200 || st.Elapsed < 95*time.Millisecond {
		t.Fatalf("wrote %d rows in %s at 2,000 rows/s", st.Rows, st.Elapsed)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if st, err := w.Write(ctx, 0); err != nil || st.Rows != 0 {
		t.Fatalf("write with an ended context: %+v, %v", st, err)
	}
}

// TestBulkOpenBatchHoldsResolvedTs: a batch held open keeps the resolved
// ts of every region it locks at its start ts, and a registration meanwhile
// scans its locks as PREWRITE rows; the COMMIT follows live and the
// resolved ts passes it. A rolled-back batch sends ROLLBACK rows.
func TestBulkOpenBatchHoldsResolvedTs(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	w, err := c.NewBulkWriter(simcluster.BulkConfig{Prefix: []byte("open/"), Regions: 2, Split: true, BatchSize: 4, ValueSize: 300})
	if err != nil {
		t.Fatal(err)
	}
	regions := bulkRegions(c, w)
	f := openFeed(t, c, regions[0].LeaderStore)
	for i, r := range regions {
		f.register(r, uint64(i+1), 0)
	}
	inits := 0
	f.items(5*time.Second, func(it item) bool {
		if isInitialized(it) {
			inits++
		}
		return inits == 2
	})
	b, err := w.Prewrite(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(ctx, 1); err == nil {
		t.Fatal("a write while a batch is open was accepted")
	}
	// Each region must report the lock's start ts, and never more.
	held := map[uint64]bool{}
	f.items(10*time.Second, func(it item) bool {
		if it.resolved == nil {
			return false
		}
		for _, region := range it.resolved.Regions {
			if it.resolved.Ts > b.StartTS() {
				t.Fatalf("region %d resolved to %d past the open batch at %d", region, it.resolved.Ts, b.StartTS())
			}
			if it.resolved.Ts == b.StartTS() {
				held[region] = true
			}
		}
		return len(held) == 2
	})
	// A registration now scans the locks (long values included).
	g := openFeed(t, c, regions[1].LeaderStore)
	g.register(regions[1], 9, 0)
	if got := strings.Join(rows(g.items(5*time.Second, isInitialized)), ", "); strings.Count(got, "PREWRITE") != 2 || !strings.Contains(got, "<300 bytes>") {
		t.Fatalf("scan of an open batch's region: %s", got)
	}
	commitTS, err := b.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Commit(ctx); err == nil {
		t.Fatal("a second commit was accepted")
	}
	g.items(5*time.Second, func(it item) bool {
		e := it.ev.GetEntries()
		return e != nil && e.Entries[0].Type == cdcpb.Event_COMMIT && e.Entries[0].CommitTs == commitTS
	})
	passed := map[uint64]bool{}
	f.items(10*time.Second, func(it item) bool {
		if it.resolved != nil && it.resolved.Ts >= commitTS {
			for _, region := range it.resolved.Regions {
				passed[region] = true
			}
		}
		return len(passed) == 2
	})

	rb, err := w.Prewrite(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rb.Rollback()
	got := rows(g.items(5*time.Second, func(it item) bool {
		e := it.ev.GetEntries()
		return e != nil && e.Entries[0].Type == cdcpb.Event_ROLLBACK
	}))
	if s := strings.Join(got, ", "); strings.Count(s, "ROLLBACK") != 2 || strings.Count(s, "PREWRITE") != 2 {
		t.Fatalf("rows of a rolled-back batch in region %d: %s", regions[1].Meta.Id, s)
	}
	if vs := c.Committed(0, ^uint64(0)); len(vs) != 4 {
		t.Fatalf("%d committed versions, want the first batch's 4", len(vs))
	}
	if st, err := w.Write(ctx, 8); err != nil || st.Rows != 8 {
		t.Fatalf("write after the rollback: %+v, %v", st, err)
	}
}

// TestBulkKeepVersions: with KeysPerShard and KeepVersions the writer
// overwrites its keys and the ledger keeps each key's newest versions only.
func TestBulkKeepVersions(t *testing.T) {
	c := start(t)
	w, err := c.NewBulkWriter(simcluster.BulkConfig{Prefix: []byte("keep/"), BatchSize: 8, KeysPerShard: 8, KeepVersions: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(context.Background(), 40); err != nil { // 5 versions of each key
		t.Fatal(err)
	}
	all := c.Committed(0, ^uint64(0))
	if len(all) != 16 {
		t.Fatalf("%d versions kept, want 8 keys × 2", len(all))
	}
	for i := 0; i < len(all); i += 2 {
		vs := c.Versions(all[i].Key)
		if len(vs) != 2 || vs[0].CommitTS >= vs[1].CommitTS {
			t.Fatalf("versions of %q: %+v", all[i].Key, vs)
		}
	}
	r := c.RegionByKey([]byte("keep/"))
	f := openFeed(t, c, r.LeaderStore)
	f.register(r, 1, 0)
	if got := rows(f.items(5*time.Second, isInitialized)); len(got) != 17 {
		t.Fatalf("scan gave %d rows, want 16 and INITIALIZED", len(got))
	}
}
