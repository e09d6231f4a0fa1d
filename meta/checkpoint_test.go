package meta_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"logbackup/meta"
)

// TestCheckpointsNeverGoBack races writers with values that jump up and
// down on every checkpoint kind, while a watch on the key checks that no
// stored value is ever below an earlier one.
func TestCheckpointsNeverGoBack(t *testing.T) {
	c, cli, _ := setup(t)
	kinds := []struct {
		name    string
		key     string
		advance func(ctx context.Context, ts uint64) (uint64, error)
	}{
		{"global", meta.GlobalCheckpointKey("pitr"), func(ctx context.Context, ts uint64) (uint64, error) {
			return c.AdvanceGlobalCheckpoint(ctx, "pitr", ts)
		}},
		{"store", meta.StoreCheckpointKey("pitr", 3), func(ctx context.Context, ts uint64) (uint64, error) {
			return c.AdvanceStoreCheckpoint(ctx, "pitr", 3, ts)
		}},
		{"region", meta.RegionCheckpointKey("pitr", 7, 2), func(ctx context.Context, ts uint64) (uint64, error) {
			return c.AdvanceRegionCheckpoint(ctx, "pitr", 7, 2, ts)
		}},
		{"storage", meta.StorageCheckpointKey("pitr", 3), func(ctx context.Context, ts uint64) (uint64, error) {
			return c.AdvanceStorageCheckpoint(ctx, "pitr", 3, ts)
		}},
	}
	const writers, rounds = 6, 20
	value := func(w, i int) uint64 { return uint64(1000 + (i*writers+w)*(1-2*(i%2)) + i*50) }
	var maxWritten uint64
	for w := 0; w < writers; w++ {
		for i := 0; i < rounds; i++ {
			maxWritten = max(maxWritten, value(w, i))
		}
	}
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			start, err := cli.Get(ctx, "rev")
			if err != nil {
				t.Fatal(err)
			}
			watch := cli.Watch(ctx, k.key, clientv3.WithRev(start.Header.Revision+1))

			var wg sync.WaitGroup
			for w := 0; w < writers; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					var last uint64
					for i := 0; i < rounds; i++ {
						ts := value(w, i)
						got, err := k.advance(ctx, ts)
						if err != nil {
							t.Error(err)
							return
						}
						if got < ts || got < last {
							t.Errorf("advance(%d) returned %d after %d", ts, got, last)
						}
						last = got
					}
				}(w)
			}
			wg.Wait()

			final, err := cli.Get(ctx, k.key)
			if err != nil || len(final.Kvs) != 1 {
				t.Fatalf("read back: %v", err)
			}
			got, err := meta.DecodeTS(k.key, final.Kvs[0].Value)
			if err != nil || got != maxWritten {
				t.Fatalf("stored %d (%v), want the max written %d", got, err, maxWritten)
			}
			// Every stored value, in order, up to the final revision.
			var prev uint64
			for resp := range watch {
				if err := resp.Err(); err != nil {
					t.Fatal(err)
				}
				done := false
				for _, ev := range resp.Events {
					v, err := meta.DecodeTS(k.key, ev.Kv.Value)
					if err != nil {
						t.Fatal(err)
					}
					if v < prev {
						t.Fatalf("stored value went back from %d to %d", prev, v)
					}
					prev = v
					done = ev.Kv.ModRevision >= final.Kvs[0].ModRevision
				}
				if done {
					break
				}
			}
			if prev != maxWritten {
				t.Fatalf("watched values end at %d, want %d", prev, maxWritten)
			}
		})
	}

	ctx := context.Background()
	cps, err := c.Checkpoints(ctx, "pitr")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, cp := range cps {
		got[fmt.Sprintf("%s/%d/%d/%d", cp.Kind, cp.StoreID, cp.RegionID, cp.EpochVersion)] = cp.TS
	}
	want := map[string]uint64{"global/0/0/0": maxWritten, "store/3/0/0": maxWritten, "region/0/7/2": maxWritten}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Checkpoints = %v, want %v", got, want)
	}
	if ts, ok, err := c.GlobalCheckpoint(ctx, "pitr"); err != nil || !ok || ts != maxWritten {
		t.Fatalf("GlobalCheckpoint = %d %v %v", ts, ok, err)
	}
	if scs, err := c.StorageCheckpoints(ctx, "pitr"); err != nil || len(scs) != 1 || scs[3] != maxWritten {
		t.Fatalf("StorageCheckpoints = %v %v", scs, err)
	}
	if _, ok, err := c.GlobalCheckpoint(ctx, "none"); ok || err != nil {
		t.Fatalf("absent global checkpoint: ok=%v %v", ok, err)
	}
}

// TestLegacyCheckpointKeys: BR's V1 binary store-id keys are listed with
// the others.
func TestLegacyCheckpointKeys(t *testing.T) {
	c, cli, _ := setup(t)
	ctx := context.Background()
	legacy := meta.CheckpointPrefix("pitr") + "\x00\x00\x00\x00\x00\x00\x00\x05"
	if _, err := cli.Put(ctx, legacy, string(meta.EncodeTS(77))); err != nil {
		t.Fatal(err)
	}
	cps, err := c.Checkpoints(ctx, "pitr")
	if err != nil || len(cps) != 1 || cps[0] != (meta.Checkpoint{Kind: meta.CheckpointStore, StoreID: 5, TS: 77}) {
		t.Fatalf("legacy checkpoint: %+v %v", cps, err)
	}
}

func TestAdvanceRegionCheckpointsBatch(t *testing.T) {
	c, _, _ := setup(t)
	ctx := context.Background()
	var cps []meta.RegionTS
	for i := uint64(1); i <= 150; i++ {
		cps = append(cps, meta.RegionTS{RegionID: i, EpochVersion: 2, TS: 100 + i})
	}
	if err := c.AdvanceRegionCheckpoints(ctx, "pitr", cps); err != nil {
		t.Fatal(err)
	}
	// Some go up, some would go down: the lower ones must be ignored.
	// Region 8 was raised by someone else in between (999 > its 108-50).
	if _, err := c.AdvanceRegionCheckpoint(ctx, "pitr", 8, 2, 999); err != nil {
		t.Fatal(err)
	}
	for i := range cps {
		if i%2 == 0 {
			cps[i].TS += 1000
		} else {
			cps[i].TS -= 50
		}
	}
	if err := c.AdvanceRegionCheckpoints(ctx, "pitr", cps); err != nil {
		t.Fatal(err)
	}
	got, err := c.Checkpoints(ctx, "pitr")
	if err != nil || len(got) != 150 {
		t.Fatalf("%d checkpoints, %v", len(got), err)
	}
	for _, cp := range got {
		want := 100 + cp.RegionID
		if (cp.RegionID-1)%2 == 0 {
			want += 1000
		}
		if cp.RegionID == 8 {
			want = 999
		}
		if cp.TS != want {
			t.Fatalf("region %d checkpoint %d, want %d", cp.RegionID, cp.TS, want)
		}
	}
}

// TestCheckpointsExceptRegions: every checkpoint of the task but the
// region ones, the legacy V1 store key included, none of another task
// whose name extends this one's.
func TestCheckpointsExceptRegions(t *testing.T) {
	c, cli, _ := setup(t)
	ctx := context.Background()
	ts := make([]byte, 8)
	binary.BigEndian.PutUint64(ts, 100)
	legacy := meta.CheckpointPrefix("pitr") + string(binary.BigEndian.AppendUint64(nil, 5)) // V1: the store id in 8 raw bytes
	keys := []string{meta.GlobalCheckpointKey("pitr"), meta.StoreCheckpointKey("pitr", 1), meta.StoreCheckpointKey("pitr", 2), legacy,
		meta.RegionCheckpointKey("pitr", 7, 1), meta.RegionCheckpointKey("pitr", 8, 3), meta.StoreCheckpointKey("pitr2", 9)}
	for _, k := range keys {
		if _, err := cli.Put(ctx, k, string(ts)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := c.CheckpointsExceptRegions(ctx, "pitr")
	if err != nil {
		t.Fatal(err)
	}
	all, err := c.Checkpoints(ctx, "pitr")
	if err != nil {
		t.Fatal(err)
	}
	var want []meta.Checkpoint
	for _, cp := range all {
		if cp.Kind != meta.CheckpointRegion {
			want = append(want, cp)
		}
	}
	if len(all) != 6 || len(want) != 4 || !reflect.DeepEqual(got, want) {
		t.Fatalf("CheckpointsExceptRegions = %+v; want %+v (of all %+v)", got, want, all)
	}
}
