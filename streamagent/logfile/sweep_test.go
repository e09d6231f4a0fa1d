package logfile

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/client-go/v2/util/codec"
)

// sweepBits is which bits of each byte a sweep flips: all 8 with
// LOGBACKUP_FULL_SWEEP=1, else 2 chosen by a seeded generator, so every
// byte offset is covered on every run (the seed is printed;
// LOGBACKUP_SWEEP_SEED repeats a run).
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
	return func() []int { return rng.Perm(8)[:2] }
}

// diffFields lists the known fields (paths like
// file_groups[0].data_files_info[1].region_id) in which a and b differ;
// fields the decoder kept as unknown are ignored.
func diffFields(a, b reflect.Value, path string, out *[]string) {
	switch a.Kind() {
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			if a.IsNil() != b.IsNil() {
				*out = append(*out, path)
			}
			return
		}
		diffFields(a.Elem(), b.Elem(), path, out)
	case reflect.Struct:
		for i := range a.NumField() {
			f := a.Type().Field(i)
			if strings.HasPrefix(f.Name, "XXX_") {
				continue
			}
			name := strings.Split(f.Tag.Get("protobuf"), ",")[3]
			diffFields(a.Field(i), b.Field(i), strings.TrimPrefix(path+"."+strings.TrimPrefix(name, "name="), "."), out)
		}
	case reflect.Slice:
		if a.Type().Elem().Kind() == reflect.Uint8 {
			if !bytes.Equal(a.Bytes(), b.Bytes()) {
				*out = append(*out, path)
			}
			return
		}
		if a.Len() != b.Len() {
			*out = append(*out, path+" (count)")
			return
		}
		for i := range a.Len() {
			diffFields(a.Index(i), b.Index(i), fmt.Sprintf("%s[%d]", path, i), out)
		}
	default:
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			*out = append(*out, path)
		}
	}
}

// fieldOf is the last element of a field path, without indexes.
func fieldOf(path string) string {
	path = strings.TrimSuffix(path, " (count)")
	if i := strings.LastIndexByte(path, '.'); i >= 0 {
		path = path[i+1:]
	}
	if i := strings.IndexByte(path, '['); i >= 0 {
		path = path[:i]
	}
	return path
}

// sweepFlush is a flush as the agent makes it: a data group of both
// column families over two regions and a schema-meta group.
func sweepFlush(t testing.TB, linked bool) *Flush {
	base := tso(time.Date(2024, 6, 20, 8, 0, 0, 0, time.UTC), 0)
	b := NewBuilder(BuilderConfig{StoreID: 4, NewID: seqIDs()})
	regions := []RegionInfo{
		{ID: 41, StartKey: codec.EncodeBytes(nil, tableKey(71, 0)), EndKey: codec.EncodeBytes(nil, tableKey(71, 50)), Epoch: &metapb.RegionEpoch{ConfVer: 1, Version: 5}},
		{ID: 42, StartKey: codec.EncodeBytes(nil, tableKey(71, 50)), EndKey: codec.EncodeBytes(nil, tableKey(72, 0)), Epoch: &metapb.RegionEpoch{ConfVer: 1, Version: 6}},
	}
	for i := int64(0); i < 8; i++ {
		c := Change{Key: tableKey(71, i*13), StartTS: base + uint64(i)*10, CommitTS: base + uint64(i)*10 + 5, Value: bytes.Repeat([]byte{'v'}, 10+int(i%2)*300)}
		if i == 3 {
			c.Op, c.Value = OpDelete, nil
		}
		if err := b.Add(regions[(i*13)/50], c); err != nil {
			t.Fatal(err)
		}
	}
	b.Add(RegionInfo{ID: 43, StartKey: codec.EncodeBytes(nil, []byte("m")), EndKey: codec.EncodeBytes(nil, []byte("n")), Epoch: &metapb.RegionEpoch{ConfVer: 2, Version: 1}},
		Change{Key: []byte("mDB:71\x00h"), Value: []byte(`{"id":71}`), StartTS: base + 100, CommitTS: base + 101})
	var f *Flush
	var err error
	if linked {
		f, err = b.FinishLinked(base+1000, base+999, Lineage{PrevFlushTS: base + 1, ClusterID: 99, TaskStartTS: base})
	} else {
		f, err = b.Finish(base+1000, base+999)
	}
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestFieldChecksSweep measures what the field checks catch without the
// checksum tag: every bit of every byte of a meta file is flipped and the
// storage audited. For a name with the agent's lineage (every check
// applies) and for a name as TiKV writes it (the checks that hold for
// TiKV's files), it counts the flips that alter the decoded metadata yet
// pass, by field. Those may only touch fields no other field or entry
// determines: a file's region id, epoch and region key range (which may be
// widened), and, for TiKV's names, what TiKV leaves free (a file's own
// resolved ts; crc64xor dropped to 0, which older TiKV wrote). The
// checksum tag makes all of these fail in the agent's storages
// (TestVerifyMetaSweep in br).
func TestFieldChecksSweep(t *testing.T) {
	uncheckable := map[string]bool{"region_id": true, "region_epoch": true, "version": true, "conf_ver": true,
		"region_start_key": true, "region_end_key": true}
	tikvFree := map[string]bool{"resolved_ts": true, "crc64xor": true}
	bits := sweepBits(t)
	for _, linked := range []bool{true, false} {
		f := sweepFlush(t, linked)
		orig := f.Meta.Data
		origMD, err := DecodeMetadata(orig)
		if err != nil {
			t.Fatal(err)
		}
		st := newMapReader()
		st.upload(f)
		var flips, undecodable, identical, failed int
		passed := map[string]int{}
		for i := range orig {
			for _, bit := range bits() {
				b := bytes.Clone(orig)
				b[i] ^= 1 << bit
				st.put(Object{Name: f.Meta.Name, Data: b})
				res, err := audit(context.Background(), st, auditOptions{ignoreChecksum: true}, func(Decoded) error { return nil })
				if err != nil {
					t.Fatal(err)
				}
				flips++
				md, derr := DecodeMetadata(b)
				if res.Failed() {
					failed++
					named := false
					for _, fd := range res.Findings {
						named = named || !fd.Warning && (fd.Object == f.Meta.Name || strings.Contains(fd.Err.Error(), f.Meta.Name))
					}
					if !named {
						t.Errorf("linked=%v byte %d bit %d: no failure names the meta file: %v", linked, i, bit, res.Findings)
					}
					if derr != nil {
						undecodable++
					}
					continue
				}
				if derr != nil {
					t.Fatalf("linked=%v byte %d bit %d: undecodable, yet passes", linked, i, bit)
				}
				var diff []string
				diffFields(reflect.ValueOf(origMD), reflect.ValueOf(md), "", &diff)
				if len(diff) == 0 {
					identical++
					continue
				}
				for _, d := range diff {
					field := fieldOf(d)
					passed[field]++
					if !uncheckable[field] && (linked || !tikvFree[field]) {
						t.Errorf("linked=%v byte %d bit %d: %s changed, yet the audit passes", linked, i, bit, d)
					}
				}
			}
		}
		st.put(f.Meta)
		var fields []string
		for k, n := range passed {
			fields = append(fields, fmt.Sprintf("%s %d", k, n))
		}
		sort.Strings(fields)
		t.Logf("linked=%v, checksum ignored: %d-byte meta file, %d flips: %d fail (%d undecodable), %d pass decoding identically, %d pass altering only: %s",
			linked, len(orig), flips, failed, undecodable, identical, flips-failed-identical, strings.Join(fields, ", "))
	}
}
