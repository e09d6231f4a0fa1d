package br

import (
	"bytes"
	"context"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/streamagent/logfile"
)

// knownFields is md re-encoded without the fields the decoder did not
// know: two bodies that decode to the same knownFields mean the same.
func knownFields(t testing.TB, md *brpb.Metadata) []byte {
	c := &brpb.Metadata{}
	raw, err := md.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Unmarshal(raw); err != nil {
		t.Fatal(err)
	}
	c.XXX_unrecognized = nil
	for _, g := range c.FileGroups {
		g.XXX_unrecognized = nil
		for _, fi := range g.DataFilesInfo {
			fi.XXX_unrecognized = nil
			for _, e := range fi.RegionEpoch {
				e.XXX_unrecognized = nil
			}
		}
	}
	out, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sweepBits is which bits of each byte a sweep flips: all 8 with
// LOGBACKUP_FULL_SWEEP=1 (about a minute), else 2 chosen by a seeded
// generator, so every byte offset is covered on every run (the seed is
// printed; LOGBACKUP_SWEEP_SEED repeats a run).
func sweepBits(t *testing.T) func() []int {
	if os.Getenv("LOGBACKUP_FULL_SWEEP") == "1" {
		t.Log("full sweep: every bit of every byte")
		return func() []int { return []int{0, 1, 2, 3, 4, 5, 6, 7} }
	}
	seed := time.Now().UnixNano()
	if s := os.Getenv("LOGBACKUP_SWEEP_SEED"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("LOGBACKUP_SWEEP_SEED: %v", err)
		}
		seed = v
	}
	t.Logf("sweep seed %d (LOGBACKUP_SWEEP_SEED=%d repeats it; LOGBACKUP_FULL_SWEEP=1 flips every bit)", seed, seed)
	rng := rand.New(rand.NewSource(seed))
	return func() []int {
		p := rng.Perm(8)
		return p[:2]
	}
}

// TestVerifyMetaSweep flips bits of every byte of a meta file as the agent
// writes it (two groups, both column families, three regions, a successor
// that names it) and of every character of its name, and runs verify on
// each. A flip "alters meaning" unless the body still decodes to metadata
// identical in every known field (for the name: unless it parses to the
// same values and tags). Every flip that alters meaning must fail verify
// with a problem naming the file; the rest may pass, and are counted.
func TestVerifyMetaSweep(t *testing.T) {
	f := newFixture(t, fixtureOpts{stores: 1, flushes: 2, linked: true})
	target := f.flushes[1][0]
	name, orig := target.Meta.Name, target.Meta.Data
	if len(target.Metadata.FileGroups) != 2 {
		t.Fatalf("the target should list a data and a schema-meta group, has %d", len(target.Metadata.FileGroups))
	}
	want := knownFields(t, target.Metadata)
	bits := sweepBits(t)
	var flips, undecodable, identical, identicalPassed int
	for i := range orig {
		for _, bit := range bits() {
			b := bytes.Clone(orig)
			b[i] ^= 1 << bit
			f.put(t, name, b)
			rep := f.verify(t)
			flips++
			meaning := "altered"
			if md, err := logfile.DecodeMetadata(b); err != nil {
				undecodable++
				meaning = "undecodable"
			} else if bytes.Equal(knownFields(t, md), want) {
				identical++
				meaning = "identical"
			}
			if problemNaming(rep, name) != "" {
				continue
			}
			if meaning == "identical" {
				identicalPassed++
				continue
			}
			t.Errorf("byte %d bit %d (%s meaning) passes verify; problems: %v", i, bit, meaning, rep.Problems)
		}
	}
	f.put(t, name, orig)
	t.Logf("meta file of %d bytes: %d flips; %d undecodable, %d decode to identical metadata (%d of those pass verify), %d alter it; every flip that alters meaning fails",
		len(orig), flips, undecodable, identical, identicalPassed, flips-undecodable-identical)

	// The name: every bit of every character of the base name, where the
	// result is still a character names hold. One parsing to the same
	// values and tags (a hex digit's case) means the same.
	base := name[len(logfile.MetaDir):]
	orig0, _ := logfile.ParseMetaName(name)
	var renames, sameName, sameNamePassed int
	for i := range len(base) - len(".meta") {
		for bit := range 8 {
			c := base[i] ^ 1<<bit
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '-' || c == '_' || c == '.') {
				continue
			}
			renamed := logfile.MetaDir + base[:i] + string(c) + base[i+1:]
			f.del(t, name)
			f.put(t, renamed, orig)
			rep := f.verify(t)
			f.del(t, renamed)
			renames++
			parsed, err := logfile.ParseMetaName(renamed)
			same := err == nil && parsed == orig0
			if same {
				sameName++
			}
			if problemNaming(rep, renamed) != "" {
				continue
			}
			if same {
				sameNamePassed++
				continue
			}
			t.Errorf("renamed to %s: passes verify; problems: %v", renamed, rep.Problems)
		}
	}
	f.put(t, name, orig)
	t.Logf("name of %d characters: %d renames, %d parse to the same values (%d of those pass); every other rename fails",
		len(base), renames, sameName, sameNamePassed)
	if rep := f.verify(t); len(rep.Problems) > 0 {
		t.Fatalf("restored storage: %v", rep.Problems)
	}
}

// TestVerifyRootSweep flips every bit of the root backupmeta. A flip that
// changes what verify reads from it (start ts, end ts, a non-zero cluster
// id) or makes it undecodable must fail naming it. A flip that drops the
// cluster id only warns (a storage started on a plain etcd has none); one
// in another field (br_version) changes nothing restore reads.
func TestVerifyRootSweep(t *testing.T) {
	f := newFixture(t, fixtureOpts{stores: 1, flushes: 2, linked: true})
	orig := f.get(t, BackupMetaFile)
	var want brpb.BackupMeta
	if err := want.Unmarshal(orig); err != nil {
		t.Fatal(err)
	}
	var flips, relied, dropped, other int
	for i := range orig {
		for bit := range 8 {
			b := bytes.Clone(orig)
			b[i] ^= 1 << bit
			f.put(t, BackupMetaFile, b)
			rep := f.verify(t)
			flips++
			var got brpb.BackupMeta
			err := got.Unmarshal(b)
			switch {
			case err != nil || got.StartVersion != want.StartVersion || got.EndVersion != want.EndVersion || got.ClusterId != want.ClusterId && got.ClusterId != 0:
				relied++
				if problemNaming(rep, BackupMetaFile) == "" {
					t.Errorf("byte %d bit %d: %+v (%v) passes; problems %v", i, bit, &got, err, rep.Problems)
				}
			case got.ClusterId != want.ClusterId:
				dropped++
			default:
				other++
			}
		}
	}
	f.put(t, BackupMetaFile, orig)
	t.Logf("root backupmeta of %d bytes: %d flips; %d change what verify reads, all fail; %d drop the cluster id (a warning); %d touch nothing verify reads",
		len(orig), flips, relied, dropped, other)
}

// TestVerifyGlobalCheckpointSweep flips every bit of a store's global
// checkpoint. Lowering it only shrinks what restore may reach, and nothing
// is lost. Raising it claims more: past the newest flush or the clock
// storage alone shows it; within the flushed range only the task's global
// checkpoint in etcd does, which verify reads with --task-name.
func TestVerifyGlobalCheckpointSweep(t *testing.T) {
	f := newFixture(t, fixtureOpts{stores: 2, flushes: 3, linked: true})
	name := logfile.GlobalCheckpointName(1)
	orig := f.get(t, name)
	etcd := func(context.Context) (uint64, error) { return f.global, nil }
	var lowered, raisedSeen, raisedWarned, raisedHidden int
	for i := range orig {
		for bit := range 8 {
			b := bytes.Clone(orig)
			b[i] ^= 1 << bit
			f.put(t, name, b)
			ts, _ := logfile.DecodeGlobalCheckpoint(b)
			if ts < f.global {
				lowered++
				continue
			}
			switch rep := f.verify(t); {
			case problemNaming(rep, name) != "":
				raisedSeen++
			case strings.Contains(strings.Join(rep.Warnings, "\n"), name+": "):
				raisedWarned++
			default:
				raisedHidden++
			}
			rep, err := VerifyWith(context.Background(), f.st, VerifyConfig{Now: func() time.Time { return fixtureNow }, EtcdGlobal: etcd, Task: "pitr"})
			if err != nil {
				t.Fatal(err)
			}
			if problemNaming(rep, name) == "" {
				t.Errorf("byte %d bit %d: raised to %d, passes even against etcd's %d", i, bit, ts, f.global)
			}
		}
	}
	f.put(t, name, orig)
	t.Logf("global checkpoint: 64 flips; %d lower it (no loss); %d raise it past every flush or the clock (fail), %d past every flush's resolved ts (a warning), %d within it (fail only against etcd)",
		lowered, raisedSeen, raisedWarned, raisedHidden)
}
