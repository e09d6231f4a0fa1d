package br

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/client-go/v2/util/codec"

	"logbackup/storage"
	"logbackup/streamagent/logfile"
)

// The fixture's clock: storages are built relative to it.
var fixtureNow = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

const fixtureCluster = 7345678901234567890

// fixture is a log backup storage written the way the agents write one:
// a root backupmeta, each store's chain of linked flushes (data and
// schema-meta groups, short and long values, deletes, two regions per
// store), and each store's global checkpoint.
type fixture struct {
	st      storage.Storage
	startTS uint64
	global  uint64
	// metas[store] are the store's meta file names, oldest first.
	metas   map[uint64][]string
	flushes map[uint64][]*logfile.Flush
	objects []string // every data object
	changes int
}

type fixtureOpts struct {
	stores, flushes int
	cluster         uint64 // 0: fixtureCluster
	linked          bool   // agent names (lineage + checksum) or TiKV's
	url             string // "" means mem://
}

func tsAt(t time.Time) uint64 { return ComposeTS(t) }

func tableRowKey(table, handle int64) []byte {
	k := []byte{'t'}
	k = binary.BigEndian.AppendUint64(k, uint64(table)^(1<<63))
	k = append(k, "_r"...)
	return binary.BigEndian.AppendUint64(k, uint64(handle)^(1<<63))
}

func newFixture(t testing.TB, o fixtureOpts) *fixture {
	t.Helper()
	ctx := context.Background()
	if o.url == "" {
		o.url = "mem://"
	}
	st := openTestStorage(t, ctx, o.url)
	if o.cluster == 0 {
		o.cluster = fixtureCluster
	}
	start := fixtureNow.Add(-time.Hour)
	f := &fixture{st: st, startTS: tsAt(start), metas: map[uint64][]string{}, flushes: map[uint64][]*logfile.Flush{}}
	bm := brpb.BackupMeta{StartVersion: f.startTS, ClusterId: fixtureCluster, BrVersion: "logbackup"}
	raw, _ := bm.Marshal()
	f.put(t, BackupMetaFile, raw)
	f.put(t, LockFile, []byte(lockFileBody))
	rng := rand.New(rand.NewSource(1))
	ids := 0
	newID := func() string { ids++; return fmt.Sprintf("00000000-0000-4000-8000-%012d", ids) }
	minCovered := ^uint64(0)
	for store := uint64(1); store <= uint64(o.stores); store++ {
		// Two regions per store: table 70+store split at handle 50.
		table := int64(70 + store)
		split := codec.EncodeBytes(nil, tableRowKey(table, 50))
		regions := []logfile.RegionInfo{
			{ID: store*10 + 1, StartKey: codec.EncodeBytes(nil, tableRowKey(table, 0)), EndKey: split, Epoch: &metapb.RegionEpoch{ConfVer: 1, Version: 5}},
			{ID: store*10 + 2, StartKey: split, EndKey: codec.EncodeBytes(nil, tableRowKey(table+1, 0)), Epoch: &metapb.RegionEpoch{ConfVer: 1, Version: 5}},
		}
		metaRegion := logfile.RegionInfo{ID: store*10 + 3, StartKey: codec.EncodeBytes(nil, []byte("m")), EndKey: codec.EncodeBytes(nil, []byte("n")),
			Epoch: &metapb.RegionEpoch{ConfVer: 1, Version: 2}}
		var prev uint64
		for k := 0; k < o.flushes; k++ {
			at := start.Add(time.Duration(k+1)*3*time.Minute + time.Duration(store)*time.Second)
			flushTS, resolved := tsAt(at), tsAt(at.Add(-time.Second))
			from := tsAt(at.Add(-3 * time.Minute))
			b := logfile.NewBuilder(logfile.BuilderConfig{StoreID: store, NewID: newID})
			for i := 0; i < 6; i++ {
				h := int64(rng.Intn(100))
				startTS := from + uint64(rng.Intn(1000)+1)<<logicalBits
				c := logfile.Change{Key: tableRowKey(table, h), StartTS: startTS, CommitTS: startTS + 5<<logicalBits, Op: logfile.OpPut}
				switch i % 3 {
				case 0:
					c.Value = bytes.Repeat([]byte{byte('a' + i)}, 20)
				case 1:
					c.Value = bytes.Repeat([]byte{byte('a' + i)}, 300) // long: default CF
				default:
					c.Op = logfile.OpDelete
				}
				r := regions[0]
				if h >= 50 {
					r = regions[1]
				}
				if err := b.Add(r, c); err != nil {
					t.Fatal(err)
				}
				f.changes++
			}
			if k%2 == 0 { // a schema change now and then
				startTS := from + 7<<logicalBits
				b.Add(metaRegion, logfile.Change{Key: []byte(fmt.Sprintf("mDB:%d\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00h", table)),
					Value: []byte(`{"id":71}`), StartTS: startTS, CommitTS: startTS + 1<<logicalBits})
				f.changes++
			}
			var fl *logfile.Flush
			var err error
			if o.linked {
				fl, err = b.FinishLinked(flushTS, resolved, logfile.Lineage{PrevFlushTS: prev, ClusterID: o.cluster, TaskStartTS: f.startTS})
			} else {
				fl, err = b.Finish(flushTS, resolved)
			}
			if err != nil {
				t.Fatal(err)
			}
			b.Close()
			for _, obj := range fl.Data {
				data, err := obj.Bytes()
				if err != nil {
					t.Fatal(err)
				}
				f.put(t, obj.Name, data)
				f.objects = append(f.objects, obj.Name)
			}
			fl.Close()
			f.put(t, fl.Meta.Name, fl.Meta.Data)
			f.metas[store] = append(f.metas[store], fl.Meta.Name)
			f.flushes[store] = append(f.flushes[store], fl)
			prev = flushTS
			if k == o.flushes-2 || o.flushes == 1 {
				minCovered = min(minCovered, resolved)
			}
		}
	}
	f.global = minCovered
	for store := uint64(1); store <= uint64(o.stores); store++ {
		obj := logfile.GlobalCheckpointObject(store, f.global)
		f.put(t, obj.Name, obj.Data)
	}
	return f
}

func (f *fixture) put(t testing.TB, name string, data []byte) {
	t.Helper()
	if err := f.st.WriteFile(context.Background(), name, data); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) get(t testing.TB, name string) []byte {
	t.Helper()
	b, err := f.st.ReadFile(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (f *fixture) del(t testing.TB, name string) {
	t.Helper()
	if err := f.st.Delete(context.Background(), name); err != nil {
		t.Fatal(err)
	}
}

// allMetas is every meta file name, sorted.
func (f *fixture) allMetas() []string {
	var out []string
	for _, ms := range f.metas {
		out = append(out, ms...)
	}
	sort.Strings(out)
	return out
}

func (f *fixture) verify(t testing.TB) *VerifyReport {
	t.Helper()
	rep, err := VerifyWith(context.Background(), f.st, VerifyConfig{Now: func() time.Time { return fixtureNow }})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// problemNaming is the first problem about object (the problem starts
// with its name) that contains all of want, or "".
func problemNaming(rep *VerifyReport, object string, want ...string) string {
next:
	for _, p := range rep.Problems {
		if !strings.HasPrefix(p, object) {
			continue
		}
		for _, w := range want {
			if !strings.Contains(p, w) {
				continue next
			}
		}
		return p
	}
	return ""
}

// logicalBits is a TSO's logical part, for the fixtures' ts arithmetic
// (a ms of physical time is 1<<logicalBits).
const logicalBits = 18
