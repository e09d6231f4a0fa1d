package meta

import (
	"encoding/binary"
	"testing"
)

func TestKeys(t *testing.T) {
	cases := map[string]string{
		InfoKey("pitr"):                     "/tidb/br-stream/info/pitr",
		RangesPrefix("pitr"):                "/tidb/br-stream/ranges/pitr/",
		RangeKey("pitr", []byte("t\x00//")): "/tidb/br-stream/ranges/pitr/t\x00//",
		PauseKey("pitr"):                    "/tidb/br-stream/pause/pitr",
		CheckpointPrefix("pitr"):            "/tidb/br-stream/checkpoint/pitr/",
		StoreCheckpointKey("pitr", 21):      "/tidb/br-stream/checkpoint/pitr/store/21",
		RegionCheckpointKey("pitr", 7, 3):   "/tidb/br-stream/checkpoint/pitr/region/7/3",
		GlobalCheckpointKey("pitr"):         "/tidb/br-stream/checkpoint/pitr/central_global",
		StorageCheckpointPrefix("pitr"):     "/tidb/br-stream/storage-checkpoint/pitr/",
		StorageCheckpointKey("pitr", 21):    "/tidb/br-stream/storage-checkpoint/pitr/21",
		LastErrorPrefix("pitr"):             "/tidb/br-stream/last-error/pitr/",
		LastErrorKey("pitr", 21):            "/tidb/br-stream/last-error/pitr/21",
		InfoPrefix():                        "/tidb/br-stream/info/",
		PausePrefix():                       "/tidb/br-stream/pause/",
	}
	for got, want := range cases {
		if got != want {
			t.Errorf("key %q, want %q", got, want)
		}
	}
}

func TestParseCheckpointKey(t *testing.T) {
	legacy := string(binary.BigEndian.AppendUint64(nil, 5))
	cases := []struct {
		key  string
		want Checkpoint
		ok   bool
	}{
		{GlobalCheckpointKey("pitr"), Checkpoint{Kind: CheckpointGlobal}, true},
		{StoreCheckpointKey("pitr", 21), Checkpoint{Kind: CheckpointStore, StoreID: 21}, true},
		{RegionCheckpointKey("pitr", 7, 3), Checkpoint{Kind: CheckpointRegion, RegionID: 7, EpochVersion: 3}, true},
		{CheckpointPrefix("pitr") + legacy, Checkpoint{Kind: CheckpointStore, StoreID: 5}, true},
		{CheckpointPrefix("pitr") + "\x00\x00\x00\x00\x00\x00\x00\x00", Checkpoint{Kind: CheckpointTask}, true},
		{CheckpointPrefix("pitr") + "store/x", Checkpoint{}, false},
		{CheckpointPrefix("pitr") + "region/7", Checkpoint{}, false},
		{CheckpointPrefix("pitr") + "region/a/1", Checkpoint{}, false},
		{CheckpointPrefix("pitr") + "whatever", Checkpoint{}, false},
		{StoreCheckpointKey("pitr2", 1), Checkpoint{}, false}, // another task's key
	}
	for _, c := range cases {
		got, err := ParseCheckpointKey("pitr", c.key)
		if (err == nil) != c.ok || (c.ok && got != c.want) {
			t.Errorf("ParseCheckpointKey(%q) = %+v, %v; want %+v ok=%v", c.key, got, err, c.want, c.ok)
		}
	}
}

func TestValidTaskName(t *testing.T) {
	for _, ok := range []string{"pitr", "PITR_2", "0"} {
		if err := ValidTaskName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a/b", "a-b", "a b", "é", "a\x00"} {
		if ValidTaskName(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzParseCheckpointKey(f *testing.F) {
	for _, s := range []string{"central_global", "store/1", "region/1/2", "\x00\x00\x00\x00\x00\x00\x00\x01", "region//"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, rest string) {
		cp, err := ParseCheckpointKey("t", CheckpointPrefix("t")+rest)
		if err == nil && cp.Kind == 0 {
			t.Fatalf("no kind for %q", rest)
		}
	})
}
