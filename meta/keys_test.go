package meta

import (
	"encoding/binary"
	"strings"
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
		{CheckpointPrefix("pitr") + "store/1/2", Checkpoint{}, false},
		{CheckpointPrefix("pitr") + "store/", Checkpoint{}, false},
		{CheckpointPrefix("pitr") + "store/-1", Checkpoint{}, false},
		{CheckpointPrefix("pitr") + "region/1/2/3", Checkpoint{}, false},
		{CheckpointPrefix("pitr") + "central_global/x", Checkpoint{}, false},
		{CheckpointPrefix("pitr"), Checkpoint{}, false},
		{CheckpointPrefix("pitr") + "abcdefgh", Checkpoint{}, false}, // 8 printable bytes: not a binary store id
		{CheckpointPrefix("pitr") + "\x00\x00\x00\x00\x00\x00\x00", Checkpoint{}, false},
		// A legacy store id whose bytes hold '/' (0x2f) is still one id.
		{CheckpointPrefix("pitr") + "\x00\x00\x00\x00\x00\x00\x2f\x2f", Checkpoint{Kind: CheckpointStore, StoreID: 0x2f2f}, true},
		{CheckpointPrefix("pitr") + "store/18446744073709551615", Checkpoint{Kind: CheckpointStore, StoreID: ^uint64(0)}, true},
	}
	for _, c := range cases {
		got, err := ParseCheckpointKey("pitr", c.key)
		if (err == nil) != c.ok || (c.ok && got != c.want) {
			t.Errorf("ParseCheckpointKey(%q) = %+v, %v; want %+v ok=%v", c.key, got, err, c.want, c.ok)
		}
	}
}

// TestKeyPrefixIsolation checks every per-task prefix against every key of a
// task whose name extends it: "pitr"'s scans must never see "pitr2"'s keys.
func TestKeyPrefixIsolation(t *testing.T) {
	prefixes := map[string]func(string) string{
		"ranges":             RangesPrefix,
		"checkpoint":         CheckpointPrefix,
		"storage-checkpoint": StorageCheckpointPrefix,
		"last-error":         LastErrorPrefix,
		"span-checkpoint":    func(task string) string { return agentStatePrefix("span-checkpoint/", task) },
		"history":            func(task string) string { return agentStatePrefix("history/", task) },
		"span-checkpoint@7":  func(task string) string { return SpanCheckpointPrefix(task, 7) },
		"history@7":          func(task string) string { return HistoryPrefix(task, 7) },
	}
	for _, other := range []string{"pitr2", "pitr_", "pitrx"} {
		keys := []string{
			InfoKey(other), PauseKey(other), RangeKey(other, []byte("a")), RangeKey(other, nil),
			StoreCheckpointKey(other, 1), RegionCheckpointKey(other, 1, 2), GlobalCheckpointKey(other),
			StorageCheckpointKey(other, 1), LastErrorKey(other, 1), SpanCheckpointKey(other, 7, 1), HistoryPrefix(other, 7) + "x",
		}
		for name, prefix := range prefixes {
			for _, k := range keys {
				if strings.HasPrefix(k, prefix("pitr")) {
					t.Errorf("%s prefix of pitr %q covers %q of task %q", name, prefix("pitr"), k, other)
				}
			}
		}
		for _, k := range keys {
			if k == InfoKey("pitr") || k == PauseKey("pitr") {
				t.Errorf("key %q of %q equals a key of pitr", k, other)
			}
		}
	}
	// And each prefix does cover its own task's keys.
	own := map[string][]string{
		RangesPrefix("pitr"):                 {RangeKey("pitr", []byte("t\x00"))},
		CheckpointPrefix("pitr"):             {StoreCheckpointKey("pitr", 1), RegionCheckpointKey("pitr", 1, 2), GlobalCheckpointKey("pitr")},
		StorageCheckpointPrefix("pitr"):      {StorageCheckpointKey("pitr", 1)},
		LastErrorPrefix("pitr"):              {LastErrorKey("pitr", 1)},
		SpanCheckpointPrefix("pitr", 7):      {SpanCheckpointKey("pitr", 7, 1)},
		agentStatePrefix("history/", "pitr"): {HistoryPrefix("pitr", 7) + "x", HistoryPrefix("pitr", 8) + "x"},
		InfoPrefix():                         {InfoKey("pitr")},
		PausePrefix():                        {PauseKey("pitr")},
	}
	for prefix, keys := range own {
		for _, k := range keys {
			if !strings.HasPrefix(k, prefix) {
				t.Errorf("%q is not under %q", k, prefix)
			}
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
		// Whatever parses must be what the key functions build (or the
		// legacy binary form), so parse and build agree.
		if err != nil {
			return
		}
		var rebuilt string
		switch cp.Kind {
		case CheckpointGlobal:
			rebuilt = GlobalCheckpointKey("t")
		case CheckpointStore:
			rebuilt = StoreCheckpointKey("t", cp.StoreID)
		case CheckpointRegion:
			rebuilt = RegionCheckpointKey("t", cp.RegionID, cp.EpochVersion)
		}
		legacy := CheckpointPrefix("t") + string(binary.BigEndian.AppendUint64(nil, cp.StoreID))
		if key := CheckpointPrefix("t") + rest; key != rebuilt && key != legacy {
			// Decimal ids with leading zeros parse too; they name the same id.
			if again, err := ParseCheckpointKey("t", rebuilt); cp.Kind == CheckpointTask || err != nil || again != cp {
				t.Fatalf("%q parsed as %+v, which builds %q", key, cp, rebuilt)
			}
		}
	})
}
