package logfile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// goldenFlush is the fixed input of the golden test: a short put, a long
// put, a delete of one table's rows in one region, and a schema change.
func goldenFlush(t testing.TB) (*Flush, [][]Change) {
	at := time.Date(2024, 6, 20, 8, 0, 0, 0, time.UTC)
	b := NewBuilder(BuilderConfig{StoreID: 1, NewID: seqIDs()})
	region := RegionInfo{ID: 2, StartKey: EncodeMVCCKey(tableKey(71, 0), 0)[:18], EndKey: nil, Epoch: &metapb.RegionEpoch{ConfVer: 1, Version: 3}}
	rows := []Change{
		{Key: tableKey(71, 1), Value: []byte("short"), StartTS: tso(at, 1), CommitTS: tso(at, 2), Op: OpPut},
		{Key: tableKey(71, 2), Value: bytes.Repeat([]byte("L"), 300), StartTS: tso(at, 3), CommitTS: tso(at, 4), Op: OpPut},
		{Key: tableKey(71, 1), StartTS: tso(at, 5), CommitTS: tso(at, 6), Op: OpDelete},
	}
	schema := []Change{{Key: []byte("mDB:71\x00\x00"), Value: []byte(`{"id":71}`), StartTS: tso(at, 7), CommitTS: tso(at, 8), Op: OpPut}}
	for _, c := range append(append([]Change{}, rows...), schema...) {
		if err := b.Add(region, c); err != nil {
			t.Fatal(err)
		}
	}
	f, err := b.Finish(tso(at, 100), tso(at, 50))
	if err != nil {
		t.Fatal(err)
	}
	return f, [][]Change{rows, schema}
}

// TestGolden pins the byte layout of the data files (plain framed bytes,
// sha256, crc64xor, compressed length) and of the meta file (name and
// marshalled bytes). Run with -update after a deliberate format change.
func TestGolden(t *testing.T) {
	f, inputs := goldenFlush(t)
	st := newMapReader()
	st.upload(f)
	dec, err := NewDecoder()
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()

	var g strings.Builder
	fmt.Fprintf(&g, "meta %s\nmeta-bytes %x\n", f.Meta.Name, f.Meta.Data)
	var plains [][]byte
	for _, grp := range f.Metadata.FileGroups {
		fmt.Fprintf(&g, "object %s length=%d files=%d\n", grp.Path, grp.Length, len(grp.DataFilesInfo))
		var groupPlain []byte
		for _, fi := range grp.DataFilesInfo {
			plain, err := ReadDataFile(context.Background(), st, dec, grp.Path, fi)
			if err != nil {
				t.Fatal(err)
			}
			if sum := sha256.Sum256(plain); !bytes.Equal(sum[:], fi.Sha256) {
				t.Fatal("sha256 is not of the plain bytes")
			}
			fmt.Fprintf(&g, "file cf=%s table=%d region=%d meta=%v entries=%d length=%d compressed=%d offset=%d sha256=%x crc64xor=%016x min=%d max=%d begin=%d\n",
				fi.Cf, fi.TableId, fi.RegionId, fi.IsMeta, fi.NumberOfEntries, fi.Length, fi.RangeLength, fi.RangeOffset,
				fi.Sha256, fi.Crc64Xor, fi.MinTs, fi.MaxTs, fi.MinBeginTsInDefaultCf)
			fmt.Fprintf(&g, "  keys %x..%x\n  plain %x\n", fi.StartKey, fi.EndKey, plain)
			groupPlain = append(groupPlain, plain...)
		}
		plains = append(plains, groupPlain)
	}

	// The builder's hot path agrees with the plain reference encoding:
	// EncodeChange's entries, default CF first, framed in order.
	for i, cs := range inputs {
		var def, wr []byte
		for _, c := range cs {
			for _, kv := range EncodeChange(nil, c) {
				if kv.CF == CFDefault {
					def = AppendFrame(def, kv.Key, kv.Value)
				} else {
					wr = AppendFrame(wr, kv.Key, kv.Value)
				}
			}
		}
		if want := append(def, wr...); !bytes.Equal(plains[i], want) {
			t.Fatalf("object %d plain bytes\n%x\nwant (reference encoding)\n%x", i, plains[i], want)
		}
	}

	path := filepath.Join("testdata", "golden.txt")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(g.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if g.String() != string(want) {
		t.Fatalf("layout changed; got:\n%s\nwant:\n%s", g.String(), want)
	}
}

// TestGoldenPlainLayout spells out one write record entry byte by byte,
// independent of any encoder here.
func TestGoldenPlainLayout(t *testing.T) {
	b := NewBuilder(BuilderConfig{StoreID: 1})
	b.Add(RegionInfo{ID: 1}, Change{Key: []byte("k"), Value: []byte("v"), StartTS: 0x80, CommitTS: 0x81})
	f, err := b.Finish(1, 1)
	if err != nil {
		t.Fatal(err)
	}
	st := newMapReader()
	st.upload(f)
	dec, _ := NewDecoder()
	defer dec.Close()
	fi := f.Metadata.FileGroups[0].DataFilesInfo[0]
	plain, err := ReadDataFile(context.Background(), st, dec, f.Data[0].Name, fi)
	if err != nil {
		t.Fatal(err)
	}
	want := "11000000" + // key length 17, LE
		"6b00000000000000f8" + // memcomparable "k": 1 byte, 7 pads, marker 0xff-7
		"ffffffffffffff7e" + // ^commit ts 0x81, BE
		"06000000" + // value length 6, LE
		"50" + "8001" + // 'P', varint start ts 0x80
		"76" + "01" + "76" // 'v', length 1, "v"
	if got := hex.EncodeToString(plain); got != want {
		t.Fatalf("plain %s, want %s", got, want)
	}
}
