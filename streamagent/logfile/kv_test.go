package logfile

import (
	"bytes"
	"encoding/hex"
	"errors"
	"hash/crc64"
	"math/rand"
	"reflect"
	"testing"
)

func TestMVCCKeyEncoding(t *testing.T) {
	cases := []struct {
		raw  string
		ts   uint64
		want string
	}{
		// memcomparable: 8-byte groups, zero padded, marker 0xff - pad.
		{"abc", 5, "6162630000000000fa" + "fffffffffffffffa"},
		{"", 0, "0000000000000000f7" + "ffffffffffffffff"},
		{"12345678", 1 << 40, "3132333435363738ff" + "0000000000000000f7" + "fffffeffffffffff"},
	}
	for _, c := range cases {
		k := EncodeMVCCKey([]byte(c.raw), c.ts)
		if got := hex.EncodeToString(k); got != c.want {
			t.Errorf("EncodeMVCCKey(%q, %d) = %s, want %s", c.raw, c.ts, got, c.want)
		}
		if len(k) != memcomparableLen(len(c.raw))+8 {
			t.Errorf("memcomparableLen(%d) is wrong", len(c.raw))
		}
		raw, ts, err := DecodeMVCCKey(k)
		if err != nil || string(raw) != c.raw || ts != c.ts {
			t.Errorf("DecodeMVCCKey(%x) = %q, %d, %v", k, raw, ts, err)
		}
	}
	// Newer versions of a key sort first; different keys keep their order.
	if bytes.Compare(EncodeMVCCKey([]byte("a"), 9), EncodeMVCCKey([]byte("a"), 8)) >= 0 {
		t.Error("a newer version must sort before an older one")
	}
	if bytes.Compare(EncodeMVCCKey([]byte("a"), 1), EncodeMVCCKey([]byte("a\x00"), 9)) >= 0 {
		t.Error("key order must survive the encoding")
	}
	for _, bad := range []string{"", "0102", "6162630000000000fa" + "00", "6162630000000001fa" + "fffffffffffffffa", "6162630000000000f6" + "fffffffffffffffa", "6162630000000000fa00" + "fffffffffffffffa"} {
		b, _ := hex.DecodeString(bad)
		if _, _, err := DecodeMVCCKey(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("DecodeMVCCKey(%s) = %v, want ErrCorrupt", bad, err)
		}
	}
}

func TestWriteRecordEncoding(t *testing.T) {
	cases := []struct {
		name string
		w    Write
		want string
	}{
		{"put short", Write{Type: WritePut, StartTS: 300, ShortValue: []byte("v"), HasShort: true}, "50" + "ac02" + "76" + "01" + "76"},
		{"put empty short", Write{Type: WritePut, StartTS: 1, ShortValue: []byte{}, HasShort: true}, "50" + "01" + "76" + "00"},
		{"put long", Write{Type: WritePut, StartTS: 1 << 62}, "50" + "808080808080808040"},
		{"delete", Write{Type: WriteDelete, StartTS: 7}, "44" + "07"},
		{"lock", Write{Type: WriteLock, StartTS: 0}, "4c" + "00"},
		{"rollback overlapped", Write{Type: WriteRollback, StartTS: 2, OverlappedRollback: true}, "52" + "02" + "52"},
		{"all fields", Write{Type: WritePut, StartTS: 2, ShortValue: []byte("x"), HasShort: true, OverlappedRollback: true,
			GCFence: 9, HasGCFence: true, LastChangeTS: 5, VersionsToLastChange: 3, HasLastChange: true, TxnSource: 1},
			"50" + "02" + "760178" + "52" + "46" + "0000000000000009" + "6c" + "0000000000000005" + "03" + "53" + "01"},
	}
	for _, c := range cases {
		b := c.w.Append(nil)
		if got := hex.EncodeToString(b); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
		back, err := DecodeWrite(b)
		if err != nil || !reflect.DeepEqual(back, c.w) {
			t.Errorf("%s: decode %+v %v", c.name, back, err)
		}
	}
	if got := EncodeWrite(WritePut, 300, []byte("v"), true); hex.EncodeToString(got) != cases[0].want {
		t.Errorf("EncodeWrite = %x", got)
	}
	// TiKV stops at an unknown byte, for forward compatibility.
	if w, err := DecodeWrite([]byte{'D', 7, 'Z', 1, 2}); err != nil || w.Type != WriteDelete || w.StartTS != 7 {
		t.Errorf("unknown trailing field: %+v %v", w, err)
	}
	for _, bad := range [][]byte{nil, {'P'}, {'X', 1}, {'P', 1, 'v', 5, 'a'}, {'P', 1, 'v'}, {'P', 0xff},
		{'P', 1, 'F', 0, 0}, {'P', 1, 'l', 0, 0, 0, 0, 0, 0, 0, 0}, {'P', 1, 'S'}, {'P', 1, 'S', 0x80}} {
		if _, err := DecodeWrite(bad); !errors.Is(err, ErrCorrupt) {
			t.Errorf("DecodeWrite(%x) = %v, want ErrCorrupt", bad, err)
		}
	}
}

func TestEncodeChangeColumnFamilies(t *testing.T) {
	key := []byte("k")
	for _, c := range []struct {
		name  string
		ch    Change
		cfs   []string
		short bool
	}{
		{"empty put", Change{Key: key, Value: nil, StartTS: 1, CommitTS: 2, Op: OpPut}, []string{CFWrite}, true},
		{"255 bytes", Change{Key: key, Value: bytes.Repeat([]byte("x"), 255), StartTS: 1, CommitTS: 2, Op: OpPut}, []string{CFWrite}, true},
		{"256 bytes", Change{Key: key, Value: bytes.Repeat([]byte("x"), 256), StartTS: 1, CommitTS: 2, Op: OpPut}, []string{CFDefault, CFWrite}, false},
		{"delete", Change{Key: key, StartTS: 1, CommitTS: 2, Op: OpDelete}, []string{CFWrite}, false},
	} {
		kvs := EncodeChange(nil, c.ch)
		var cfs []string
		for _, kv := range kvs {
			cfs = append(cfs, kv.CF)
			e, err := DecodeKV(kv.CF, kv.Key, kv.Value)
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			switch kv.CF {
			case CFDefault:
				if e.TS != c.ch.StartTS || !bytes.Equal(e.Value, c.ch.Value) {
					t.Errorf("%s: default entry %+v: want the value at the start ts", c.name, e)
				}
			case CFWrite:
				if e.TS != c.ch.CommitTS || e.Write.StartTS != c.ch.StartTS || e.Write.HasShort != c.short {
					t.Errorf("%s: write entry %+v", c.name, e)
				}
				if c.short && !bytes.Equal(e.Write.ShortValue, c.ch.Value) {
					t.Errorf("%s: short value differs", c.name)
				}
				if want := map[Op]byte{OpPut: WritePut, OpDelete: WriteDelete}[c.ch.Op]; e.Write.Type != want {
					t.Errorf("%s: write type %q", c.name, e.Write.Type)
				}
			}
		}
		if !reflect.DeepEqual(cfs, c.cfs) {
			t.Errorf("%s: column families %v, want %v", c.name, cfs, c.cfs)
		}
	}
	if _, err := DecodeKV("lock", EncodeMVCCKey(key, 1), nil); !errors.Is(err, ErrCorrupt) {
		t.Errorf("lock cf: %v", err)
	}
}

func TestTableAndMetaKeys(t *testing.T) {
	for _, c := range []struct {
		key  []byte
		want int64
		meta bool
	}{
		{tableKey(71, 1), 71, false},
		{tableKey(-3, 1), -3, false},
		{tableKey(1<<62, 0)[:9], 1 << 62, false},
		{tableKey(5, 0)[:8], 0, false}, // too short for an id
		{[]byte("mDB:1"), 0, true},
		{[]byte("x"), 0, false},
		{nil, 0, false},
	} {
		if got := TableID(c.key); got != c.want {
			t.Errorf("TableID(%x) = %d, want %d", c.key, got, c.want)
		}
		if IsMetaKey(c.key) != c.meta {
			t.Errorf("IsMetaKey(%x) != %v", c.key, c.meta)
		}
	}
}

func TestFraming(t *testing.T) {
	b := AppendFrame(nil, []byte("key"), []byte("value"))
	b = AppendFrame(b, nil, nil)
	if want := "03000000" + "6b6579" + "05000000" + "76616c7565" + "00000000" + "00000000"; hex.EncodeToString(b) != want {
		t.Fatalf("frames %x, want %s", b, want)
	}
	k, v, rest, err := NextFrame(b)
	if err != nil || string(k) != "key" || string(v) != "value" {
		t.Fatalf("first frame: %q %q %v", k, v, err)
	}
	if k, v, rest, err = NextFrame(rest); err != nil || len(k) != 0 || len(v) != 0 || len(rest) != 0 {
		t.Fatalf("second frame: %q %q %x %v", k, v, rest, err)
	}
	for cut := 1; cut < 16; cut++ { // the first frame is 16 bytes
		if _, _, _, err := NextFrame(b[:cut]); !errors.Is(err, ErrCorrupt) {
			t.Errorf("frame cut at %d: %v", cut, err)
		}
	}
	if _, _, _, err := NextFrame([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("huge key length: %v", err)
	}
}

func TestCRC64MatchesTiKV(t *testing.T) {
	tab := crcTables()
	// crc64fast's documented vector, and CRC-64/XZ's check value.
	if got := crcUpdate(crcUpdate(0, tab, []byte("hello ")), tab, []byte("world!")); got != 0x8483c0fa32607d61 {
		t.Errorf("crc64(hello world!) = %016x, want crc64fast's 8483c0fa32607d61", got)
	}
	if got := crcUpdate(0, tab, []byte("123456789")); got != 0x995dc9bbdf1939fa {
		t.Errorf("crc64(123456789) = %016x, want CRC-64/XZ check 995dc9bbdf1939fa", got)
	}
	ecma := crc64.MakeTable(crc64.ECMA)
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 500; i++ {
		p := make([]byte, r.Intn(300))
		r.Read(p)
		cut := 0
		if len(p) > 0 {
			cut = r.Intn(len(p))
		}
		if got, want := crcUpdate(crcUpdate(0, tab, p[:cut]), tab, p[cut:]), crc64.Checksum(p, ecma); got != want {
			t.Fatalf("%d bytes split at %d: %016x, hash/crc64 says %016x", len(p), cut, got, want)
		}
	}
	// crc64xor is order-free and over key‖value, not the frame.
	f := AppendFrame(AppendFrame(nil, []byte("a"), []byte("b")), []byte("c"), []byte("d"))
	x, err := crcXorFrames(f)
	if want := crc64.Checksum([]byte("ab"), ecma) ^ crc64.Checksum([]byte("cd"), ecma); err != nil || x != want {
		t.Errorf("crcXorFrames = %016x %v, want %016x", x, err, want)
	}
}

func FuzzDecodeWrite(f *testing.F) {
	f.Add(EncodeWrite(WritePut, 3, []byte("v"), true))
	f.Add(Write{Type: WriteRollback, StartTS: 9, OverlappedRollback: true, HasGCFence: true, GCFence: 4, TxnSource: 2}.Append(nil))
	f.Add([]byte{'P', 1, 'v', 5, 'a'})
	f.Fuzz(func(t *testing.T, v []byte) {
		w, err := DecodeWrite(v)
		if err != nil {
			return
		}
		back, err := DecodeWrite(w.Append(nil))
		if err != nil || !reflect.DeepEqual(normWrite(back), normWrite(w)) {
			t.Fatalf("%x decodes to %+v, which re-encodes to %+v (%v)", v, w, back, err)
		}
	})
}

// normWrite makes equal records DeepEqual: an empty short value may be
// nil or not, and a zero txn source is not written.
func normWrite(w Write) Write {
	if w.ShortValue == nil {
		w.ShortValue = []byte{}
	}
	return w
}

func FuzzDecodeKV(f *testing.F) {
	for _, kv := range EncodeChange(nil, Change{Key: []byte("k"), Value: bytes.Repeat([]byte("v"), 300), StartTS: 3, CommitTS: 4}) {
		f.Add(kv.CF == CFWrite, kv.Key, kv.Value)
	}
	f.Add(true, EncodeMVCCKey(nil, 0), []byte{'L', 0})
	f.Fuzz(func(t *testing.T, write bool, k, v []byte) {
		if raw, ts, err := DecodeMVCCKey(k); err == nil && !bytes.Equal(EncodeMVCCKey(raw, ts), k) {
			t.Fatalf("mvcc key %x does not round trip", k)
		}
		cf := CFDefault
		if write {
			cf = CFWrite
		}
		e, err := DecodeKV(cf, k, v)
		if err != nil {
			return
		}
		if !bytes.Equal(EncodeMVCCKey(e.Key, e.TS), k) {
			t.Fatalf("entry key %x does not round trip", k)
		}
	})
}

func FuzzNextFrame(f *testing.F) {
	f.Add(AppendFrame(AppendFrame(nil, []byte("k"), []byte("v")), nil, nil))
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		var again []byte
		rest := b
		for len(rest) > 0 {
			k, v, next, err := NextFrame(rest)
			if err != nil {
				return
			}
			again = AppendFrame(again, k, v)
			rest = next
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("frames of %x re-encode to %x", b, again)
		}
		if _, err := crcXorFrames(b); err != nil {
			t.Fatalf("crc of whole frames: %v", err)
		}
	})
}
