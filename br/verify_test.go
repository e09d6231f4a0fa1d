package br

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"logbackup/streamagent/logfile"
)

func TestVerifyIntactStorage(t *testing.T) {
	for _, linked := range []bool{true, false} {
		f := newFixture(t, fixtureOpts{stores: 3, flushes: 4, linked: linked})
		rep := f.verify(t)
		if len(rep.Problems) > 0 {
			t.Fatalf("linked=%v: problems in an intact storage: %v", linked, rep.Problems)
		}
		if rep.Changes != f.changes || rep.MetaFiles != 12 || rep.GlobalCheckpoint != f.global || rep.StartTS != f.startTS || rep.ClusterID != fixtureCluster {
			t.Fatalf("linked=%v: report %+v, want %d changes", linked, rep, f.changes)
		}
		for _, s := range rep.Stores {
			if want := 0; !linked {
				want = 4
				if s.Linked != 0 {
					t.Fatalf("store %d: %d linked of TiKV-named metas", s.StoreID, s.Linked)
				}
			} else if s.Linked != 4 || s.Forks != want {
				t.Fatalf("store %d: %+v", s.StoreID, s)
			}
		}
		// TiKV's names cannot prove a chain: verify says so.
		warned := strings.Contains(strings.Join(rep.Warnings, "\n"), "no lineage tags")
		if warned == linked {
			t.Fatalf("linked=%v: warnings %v", linked, rep.Warnings)
		}
	}
}

// TestVerifyFindsDamage damages each kind of object in turn: every
// damage is a problem naming the object.
func TestVerifyFindsDamage(t *testing.T) {
	type damage struct {
		name   string
		mangle func(t *testing.T, f *fixture) string // returns the object the problem must name
	}
	var cases []damage
	// Every meta file but each store's newest is followed by another
	// flush of its store, whose lineage names it.
	for store := uint64(1); store <= 2; store++ {
		for k := 0; k < 3; k++ {
			cases = append(cases, damage{name: "delete meta " + string(rune('0'+store)) + "/" + string(rune('0'+k)), mangle: func(t *testing.T, f *fixture) string {
				f.del(t, f.metas[store][k])
				return f.metas[store][k][:len(logfile.MetaDir)+32]
			}})
		}
	}
	cases = append(cases,
		damage{"truncate a meta file", func(t *testing.T, f *fixture) string {
			m := f.metas[1][3]
			f.put(t, m, f.get(t, m)[:40])
			return m
		}},
		damage{"empty a meta file", func(t *testing.T, f *fixture) string {
			m := f.metas[2][1]
			f.put(t, m, nil)
			return m
		}},
		damage{"rename a meta file (its min ts)", func(t *testing.T, f *fixture) string {
			m := f.metas[1][2]
			n, _ := logfile.ParseMetaName(m)
			n.MinTS--
			f.put(t, n.Format(), f.get(t, m))
			f.del(t, m)
			return n.Format()
		}},
		damage{"copy a meta file under another flush ts", func(t *testing.T, f *fixture) string {
			m := f.metas[2][3]
			n, _ := logfile.ParseMetaName(m)
			n.FlushTS++
			f.put(t, n.Format(), f.get(t, m))
			return n.Format()
		}},
		damage{"delete a data object", func(t *testing.T, f *fixture) string {
			f.del(t, f.objects[3])
			return f.objects[3]
		}},
		damage{"truncate a data object", func(t *testing.T, f *fixture) string {
			b := f.get(t, f.objects[4])
			f.put(t, f.objects[4], b[:len(b)-1])
			return f.objects[4]
		}},
		damage{"flip a data object byte", func(t *testing.T, f *fixture) string {
			b := f.get(t, f.objects[5])
			b[len(b)/2] ^= 0x10
			f.put(t, f.objects[5], b)
			return f.objects[5]
		}},
		damage{"swap two data objects", func(t *testing.T, f *fixture) string {
			a, b := f.get(t, f.objects[0]), f.get(t, f.objects[2])
			f.put(t, f.objects[0], b)
			f.put(t, f.objects[2], a)
			return f.objects[0]
		}},
		damage{"delete the root backupmeta", func(t *testing.T, f *fixture) string {
			f.del(t, BackupMetaFile)
			return BackupMetaFile
		}},
		damage{"global checkpoint far in the future", func(t *testing.T, f *fixture) string {
			o := logfile.GlobalCheckpointObject(2, tsAt(fixtureNow.Add(30*24*time.Hour)))
			f.put(t, o.Name, o.Data)
			return o.Name
		}},
		damage{"global checkpoint beyond every flush", func(t *testing.T, f *fixture) string {
			o := logfile.GlobalCheckpointObject(3, tsAt(fixtureNow.Add(-time.Minute)))
			f.put(t, o.Name, o.Data)
			return o.Name
		}},
		damage{"global checkpoint before the start", func(t *testing.T, f *fixture) string {
			o := logfile.GlobalCheckpointObject(1, f.startTS-1)
			f.put(t, o.Name, o.Data)
			return o.Name
		}},
		damage{"global checkpoint of 7 bytes", func(t *testing.T, f *fixture) string {
			o := logfile.GlobalCheckpointObject(1, f.global)
			f.put(t, o.Name, o.Data[:7])
			return o.Name
		}},
		damage{"global checkpoint of a store without meta files", func(t *testing.T, f *fixture) string {
			o := logfile.GlobalCheckpointObject(9, f.global)
			f.put(t, o.Name, o.Data)
			return o.Name
		}},
		damage{"a meta file of another task", func(t *testing.T, f *fixture) string {
			b := logfile.NewBuilder(logfile.BuilderConfig{StoreID: 1})
			fl, err := b.FinishLinked(tsAt(fixtureNow.Add(-time.Minute)), tsAt(fixtureNow.Add(-2*time.Minute)),
				logfile.Lineage{ClusterID: fixtureCluster, TaskStartTS: f.startTS - 1<<logicalBits})
			if err != nil {
				t.Fatal(err)
			}
			f.put(t, fl.Meta.Name, fl.Meta.Data)
			return fl.Meta.Name
		}},
		damage{"a flush before the task started", func(t *testing.T, f *fixture) string {
			b := logfile.NewBuilder(logfile.BuilderConfig{StoreID: 3})
			fl, _ := b.Finish(f.startTS-5, f.startTS-6)
			f.put(t, fl.Meta.Name, fl.Meta.Data)
			return fl.Meta.Name
		}},
		damage{"a flush from the future", func(t *testing.T, f *fixture) string {
			b := logfile.NewBuilder(logfile.BuilderConfig{StoreID: 3})
			at := tsAt(fixtureNow.Add(time.Hour))
			fl, _ := b.FinishLinked(at, at-1, logfile.Lineage{PrevFlushTS: f.flushes[3][3].Name.FlushTS, ClusterID: fixtureCluster, TaskStartTS: f.startTS})
			f.put(t, fl.Meta.Name, fl.Meta.Data)
			return fl.Meta.Name
		}},
		damage{"a meta file edited in place (its resolved ts)", func(t *testing.T, f *fixture) string {
			fl := f.flushes[2][2]
			md := *fl.Metadata
			md.ResolvedTs++
			raw, _ := md.Marshal()
			f.put(t, fl.Meta.Name, raw)
			return fl.Meta.Name
		}},
	)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, fixtureOpts{stores: 3, flushes: 4, linked: true})
			object := c.mangle(t, f)
			rep := f.verify(t)
			if problemNaming(rep, object) == "" {
				t.Fatalf("no problem names %s; problems: %v; warnings: %v", object, rep.Problems, rep.Warnings)
			}
		})
	}
}

// TestVerifyTwoClusters: two clusters writing one storage at once.
func TestVerifyTwoClusters(t *testing.T) {
	f := newFixture(t, fixtureOpts{stores: 2, flushes: 3, linked: true})
	other := newFixture(t, fixtureOpts{stores: 1, flushes: 3, linked: true, cluster: 42})
	// The other cluster's store 1 writes here too.
	var foreign []string
	for _, fl := range other.flushes[1] {
		foreign = append(foreign, fl.Meta.Name)
		for _, o := range fl.Data {
			f.put(t, o.Name, other.get(t, o.Name))
		}
		f.put(t, fl.Meta.Name, fl.Meta.Data)
	}
	rep := f.verify(t)
	for _, m := range foreign {
		if problemNaming(rep, m, "cluster 42") == "" {
			t.Fatalf("%s of cluster 42 not flagged: %v", m, rep.Problems)
		}
	}
}

// TestVerifyCrashFork: an agent that crashed after writing a meta file and
// before recording it in etcd starts again from the recorded flush: two
// flushes follow one. Nothing is missing.
func TestVerifyCrashFork(t *testing.T) {
	f := newFixture(t, fixtureOpts{stores: 1, flushes: 3, linked: true})
	last := f.flushes[1][2]
	b := logfile.NewBuilder(logfile.BuilderConfig{StoreID: 1})
	at := last.Name.FlushTS + 3<<logicalBits
	fl, err := b.FinishLinked(at, at-1, logfile.Lineage{PrevFlushTS: last.Name.PrevFlushTS, ClusterID: fixtureCluster, TaskStartTS: f.startTS})
	if err != nil {
		t.Fatal(err)
	}
	f.put(t, fl.Meta.Name, fl.Meta.Data)
	rep := f.verify(t)
	if len(rep.Problems) > 0 || rep.Stores[0].Forks != 1 {
		t.Fatalf("fork: problems %v, stores %+v", rep.Problems, rep.Stores)
	}
}

// TestVerifyTruncated: below the truncate safepoint, meta files may be
// gone; above it, not.
func TestVerifyTruncated(t *testing.T) {
	f := newFixture(t, fixtureOpts{stores: 1, flushes: 4, linked: true})
	f.del(t, f.metas[1][0])
	f.put(t, TruncateSafepointFile, []byte("0"))
	if rep := f.verify(t); problemNaming(rep, f.metas[1][0][:len(logfile.MetaDir)+32]) == "" {
		t.Fatalf("deleted first flush not found: %v", rep.Problems)
	}
	f.put(t, TruncateSafepointFile, []byte(strconv.FormatUint(f.flushes[1][1].Name.FlushTS, 10)))
	if rep := f.verify(t); len(rep.Problems) > 0 {
		t.Fatalf("a flush below the truncate safepoint is missing: %v", rep.Problems)
	}
}

// TestVerifyUnlistedObjects: leftovers of an interrupted flush are warnings.
func TestVerifyUnlistedObjects(t *testing.T) {
	f := newFixture(t, fixtureOpts{stores: 1, flushes: 2, linked: true})
	orphan := logfile.DataName{StoreID: 1, MinTS: 5, MaxTS: f.startTS, ID: "ffffffff-0000-4000-8000-000000000000"}.Format()
	f.put(t, orphan, []byte("x"))
	rep := f.verify(t)
	if len(rep.Problems) > 0 || !strings.Contains(strings.Join(rep.Warnings, "\n"), orphan) {
		t.Fatalf("problems %v warnings %v", rep.Problems, rep.Warnings)
	}
}

// TestVerifyGlobalCheckpointPastResolved: a global checkpoint between the
// highest resolved ts and the newest flush is not provable from storage.
func TestVerifyGlobalCheckpointPastResolved(t *testing.T) {
	f := newFixture(t, fixtureOpts{stores: 2, flushes: 2, linked: true})
	o := logfile.GlobalCheckpointObject(1, f.flushes[2][1].Name.FlushTS-1)
	f.put(t, o.Name, o.Data)
	rep := f.verify(t)
	if len(rep.Problems) > 0 || !strings.Contains(strings.Join(rep.Warnings, "\n"), o.Name+": global checkpoint") {
		t.Fatalf("problems %v warnings %v", rep.Problems, rep.Warnings)
	}
}

// TestVerifyRestorableRange: the range verify prints (and restorable_from
// in its JSON) starts where the storage really restores from: the task
// start, the truncate safepoint past it, and after a takeover the takeover
// (the log before it is another cluster's). It used to print the task
// start whatever happened.
func TestVerifyRestorableRange(t *testing.T) {
	f := newFixture(t, fixtureOpts{stores: 2, flushes: 3, linked: true})
	printed := func(rep *VerifyReport) string {
		var b bytes.Buffer
		printVerify(&b, rep, time.UTC)
		return b.String()
	}
	rep := f.verify(t)
	if rep.RestorableFrom != f.startTS || !strings.Contains(printed(rep), "restorable: "+FormatTS(f.startTS, time.UTC)+" .. ") {
		t.Fatalf("fresh: from %d, want the start %d\n%s", rep.RestorableFrom, f.startTS, printed(rep))
	}

	truncated := f.flushes[1][0].Name.FlushTS
	f.put(t, TruncateSafepointFile, []byte(fmt.Sprint(truncated)))
	rep = f.verify(t)
	if rep.RestorableFrom != truncated || !strings.Contains(printed(rep), "restorable: "+FormatTS(truncated, time.UTC)+" .. ") ||
		!strings.Contains(printed(rep), "truncated until") {
		t.Fatalf("truncated: from %d, want %d\n%s", rep.RestorableFrom, truncated, printed(rep))
	}
	b, _ := json.Marshal(rep)
	if !strings.Contains(string(b), fmt.Sprintf(`"restorable_from":%d`, truncated)) {
		t.Fatalf("JSON: %s", b)
	}

	const newCluster = 42
	takeover := fixtureNow.Add(-40 * time.Minute) // after the fixture's flushes
	o := &logfile.Owner{Version: logfile.OwnerVersion, ClusterID: newCluster, Task: "pitr", TaskStartTS: f.global, SinceTS: tsAt(takeover),
		Previous: []logfile.PreviousOwner{{ClusterID: fixtureCluster, Task: "pitr", TaskStartTS: f.startTS, TakenOverTS: tsAt(takeover), TakenOverBy: newCluster}}}
	if err := logfile.WriteOwner(context.Background(), f.st, o); err != nil {
		t.Fatal(err)
	}
	rep = f.verify(t)
	if rep.RestorableFrom != tsAt(takeover) || !strings.Contains(printed(rep), "restorable: "+FormatTS(tsAt(takeover), time.UTC)+" .. ") ||
		!strings.Contains(printed(rep), "taken over") {
		t.Fatalf("taken over: from %d, want %d\n%s", rep.RestorableFrom, tsAt(takeover), printed(rep))
	}
}
