package tidbschema_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math"
	"strings"
	"testing"

	"logbackup/br/tidbschema"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ToLower(s))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Keys seen on real clusters pin the encoding byte for byte: a TiKV log's
// "Key is locked" primary lock of a CREATE DATABASE (field DB:97 of hash
// DBs) and its record key in mysql.tidb_ddl_job (table id 2^48-2, handle
// 102); TiDB's write-conflict message for the auto-id field TID:108 of
// hash DB:56; a TiDB prewrite log's lock on TID:102741 of DB:77 (a field
// longer than one 8-byte group).
func TestKeysMatchRealClusters(t *testing.T) {
	cases := []struct {
		name string
		got  []byte
		want string
	}{
		{"DBs/DB:97", tidbschema.HashDataKey(tidbschema.DatabasesKey(), tidbschema.DatabaseKey(97)),
			"6D4442730000000000FA000000000000006844423A3937000000FC"},
		{"DB:56/TID:108", tidbschema.HashDataKey(tidbschema.DatabaseKey(56), tidbschema.AutoTableIDField(108)),
			"6d44423a3536000000fc00000000000000685449443a31303800fe"},
		{"DB:77/TID:102741", tidbschema.HashDataKey(tidbschema.DatabaseKey(77), tidbschema.AutoTableIDField(102741)),
			"6d44423a3737000000fc00000000000000685449443a31303237ff3431000000000000f9"},
		{"row 102 of table 2^48-2", tidbschema.RowKey(1<<48-2, 102),
			"748000FFFFFFFFFFFE5F728000000000000066"},
	}
	for _, c := range cases {
		if want := unhex(t, c.want); !bytes.Equal(c.got, want) {
			t.Errorf("%s: got %x, want %x", c.name, c.got, want)
		}
	}
}

// Keys derived by hand from TiDB's structure and tablecodec layout.
func TestKeysFromLayout(t *testing.T) {
	cases := []struct {
		name string
		got  []byte
		want string
	}{
		// "m" + EncodeBytes("NextGlobalID") + EncodeUint('s'): two groups,
		// the second "alID" with four pad bytes (marker 0xff-4).
		{"string NextGlobalID", tidbschema.StringKey([]byte("NextGlobalID")),
			"6d" + "4e657874476c6f62ff" + "616c494400000000fb" + "0000000000000073"},
		{"DB:1/Table:2", tidbschema.HashDataKey(tidbschema.DatabaseKey(1), tidbschema.TableField(2)),
			"6d" + "44423a3100000000fb" + "0000000000000068" + "5461626c653a3200fe"},
		{"hash prefix DB:1", tidbschema.HashDataPrefix(tidbschema.DatabaseKey(1)),
			"6d" + "44423a3100000000fb" + "0000000000000068"},
		{"table prefix 5", tidbschema.TablePrefix(5), "74" + "8000000000000005"},
		{"record prefix 5", tidbschema.RecordPrefix(5), "74" + "8000000000000005" + "5f72"},
		{"row -1 of 5", tidbschema.RowKey(5, -1), "74" + "8000000000000005" + "5f72" + "7fffffffffffffff"},
		{"index 2 of 5", tidbschema.IndexPrefix(5, 2), "74" + "8000000000000005" + "5f69" + "8000000000000002"},
		{"index 2 of 5, value 7, handle 9", tidbschema.IndexKeyInt(5, 2, 7, 9),
			"74" + "8000000000000005" + "5f69" + "8000000000000002" + "03" + "8000000000000007" + "03" + "8000000000000009"},
	}
	for _, c := range cases {
		if want := unhex(t, c.want); !bytes.Equal(c.got, want) {
			t.Errorf("%s: got %x, want %x", c.name, c.got, want)
		}
	}
}

func TestDecodeHashDataKey(t *testing.T) {
	for _, c := range []struct{ key, field string }{
		{"DBs", "DB:1"}, {"DB:12345678901", "Table:98765432109"}, {"", ""}, {"k\x00\xff", "f\xff\x00"},
	} {
		k, f, err := tidbschema.DecodeHashDataKey(tidbschema.HashDataKey([]byte(c.key), []byte(c.field)))
		if err != nil || string(k) != c.key || string(f) != c.field {
			t.Errorf("decode (%q, %q): got (%q, %q, %v)", c.key, c.field, k, f, err)
		}
	}
	if _, _, err := tidbschema.DecodeHashDataKey(tidbschema.StringKey([]byte("NextGlobalID"))); !errors.Is(err, tidbschema.ErrNotHashData) {
		t.Errorf("string key: got %v, want ErrNotHashData", err)
	}
	good := tidbschema.HashDataKey([]byte("DBs"), []byte("DB:1"))
	for name, bad := range map[string][]byte{
		"empty":            nil,
		"table key":        tidbschema.RowKey(1, 1),
		"truncated key":    good[:5],
		"truncated flag":   good[:1+9+4],
		"truncated field":  good[:len(good)-1],
		"trailing bytes":   append(bytes.Clone(good), 0),
		"bad group marker": append(bytes.Clone(good[:len(good)-1]), 0x00),
	} {
		if _, _, err := tidbschema.DecodeHashDataKey(bad); err == nil || errors.Is(err, tidbschema.ErrNotHashData) {
			t.Errorf("%s (%x): got %v, want a malformed-key error", name, bad, err)
		}
	}
}

func FuzzDecodeHashDataKey(f *testing.F) {
	f.Add(tidbschema.HashDataKey([]byte("DBs"), []byte("DB:1")))
	f.Add(tidbschema.StringKey([]byte("SchemaVersionKey")))
	f.Add([]byte("m"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		k, field, err := tidbschema.DecodeHashDataKey(raw)
		if err != nil {
			return
		}
		if again := tidbschema.HashDataKey(k, field); !bytes.Equal(again, raw) {
			t.Fatalf("decoded %x to (%q, %q), which encodes to %x", raw, k, field, again)
		}
	})
}

func TestPrefixNext(t *testing.T) {
	cases := []struct{ in, want []byte }{
		{[]byte("m"), []byte("n")},
		{[]byte("t"), []byte("u")},
		{[]byte("a\xff"), []byte("b\x00")},
		{[]byte("\xff\xff"), []byte("\xff\xff\x00")},
		{tidbschema.RecordPrefix(5), append(tidbschema.TablePrefix(5), '_', 's')},
		{tidbschema.TablePrefix(5), tidbschema.TablePrefix(6)},
		{tidbschema.TablePrefix(math.MaxInt64), []byte("u\x00\x00\x00\x00\x00\x00\x00\x00")},
	}
	for _, c := range cases {
		if got := tidbschema.PrefixNext(c.in); !bytes.Equal(got, c.want) {
			t.Errorf("PrefixNext(%x) = %x, want %x", c.in, got, c.want)
		}
	}
	in := []byte("ab")
	tidbschema.PrefixNext(in)
	if string(in) != "ab" {
		t.Errorf("PrefixNext changed its input to %q", in)
	}
}

func TestPhysicalIDs(t *testing.T) {
	plain := tidbschema.Table{ID: 7}
	if got := plain.PhysicalIDs(); len(got) != 1 || got[0] != 7 {
		t.Errorf("plain table: %v", got)
	}
	if got := plain.AllIDs(); len(got) != 1 || got[0] != 7 {
		t.Errorf("plain table, all ids: %v", got)
	}
	part := tidbschema.Table{
		ID: 7, Partitioned: true,
		Partitions:         []tidbschema.Partition{{ID: 8}, {ID: 9}},
		AddingPartitions:   []tidbschema.Partition{{ID: 11}},
		DroppingPartitions: []tidbschema.Partition{{ID: 10}},
	}
	if got := part.PhysicalIDs(); len(got) != 2 || got[0] != 8 || got[1] != 9 {
		t.Errorf("partitioned: %v", got)
	}
	if got := part.AllIDs(); len(got) != 5 || got[0] != 7 || got[3] != 11 || got[4] != 10 {
		t.Errorf("partitioned, all ids: %v", got)
	}
}
