package meta

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/tikv/client-go/v2/util/codec"
	"google.golang.org/protobuf/proto"

	"logbackup/proto/lbpb"
)

// realSpanCheckpoints is a record as the agent writes it: memcomparable
// span keys over BR's `*.*` ranges, sorted and disjoint, the last one
// unbounded.
func realSpanCheckpoints(store uint64) *lbpb.SpanCheckpoints {
	enc := func(s string) []byte { return codec.EncodeBytes(nil, []byte(s)) }
	return &lbpb.SpanCheckpoints{StoreId: store, FlushTs: 450591562137600123, Spans: []*lbpb.SpanCheckpoints_Span{
		{StartKey: enc("m"), EndKey: enc("n"), Ts: 450591562137600100},
		{StartKey: enc("t"), EndKey: enc("t\x80\x00\x00\x00\x00\x00\x00\x47"), Ts: 450591562137600101},
		{StartKey: enc("t\x80\x00\x00\x00\x00\x00\x00\x47"), Ts: 450591562137600099},
	}}
}

func TestDecodeSpanCheckpoints(t *testing.T) {
	key := SpanCheckpointKey("pitr", 7, 3)
	good := realSpanCheckpoints(3)
	raw, _ := proto.Marshal(good)
	got, err := DecodeSpanCheckpoints(key, raw)
	if err != nil || !proto.Equal(got, good) {
		t.Fatalf("real record: %v %v", got, err)
	}
	bad := map[string]*lbpb.SpanCheckpoints{}
	other := realSpanCheckpoints(4)
	bad["another store's record"] = other
	empty := realSpanCheckpoints(3)
	empty.Spans[0].EndKey = empty.Spans[0].StartKey
	bad["empty span"] = empty
	overlap := realSpanCheckpoints(3)
	overlap.Spans[1].StartKey = codec.EncodeBytes(nil, []byte("m\x01"))
	bad["overlapping spans"] = overlap
	unbounded := realSpanCheckpoints(3)
	unbounded.Spans[0].EndKey = nil
	bad["unbounded span before another"] = unbounded
	for what, sc := range bad {
		raw, _ := proto.Marshal(sc)
		if _, err := DecodeSpanCheckpoints(key, raw); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), key) {
			t.Errorf("%s: %v", what, err)
		}
	}
	if _, err := DecodeSpanCheckpoints("/no/store/here", raw); !errors.Is(err, ErrMalformed) {
		t.Errorf("key without a store: %v", err)
	}
}

func TestDecodeAgentRegistration(t *testing.T) {
	raw, _ := proto.Marshal(&lbpb.AgentRegistration{StoreId: 2, StoreAddress: "127.0.0.1:20160"})
	if reg, err := DecodeAgentRegistration(AgentKey(2), raw); err != nil || reg.StoreAddress != "127.0.0.1:20160" {
		t.Fatalf("own key: %v %v", reg, err)
	}
	if _, err := DecodeAgentRegistration(AgentKey(1), raw); !errors.Is(err, ErrMalformed) {
		t.Fatalf("store 2's registration under store 1's key: %v", err)
	}
}

// checkMalformed fails unless err is ErrMalformed naming key.
func checkMalformed(t *testing.T, key string, err error) {
	t.Helper()
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), `"`+key+`"`) {
		t.Fatalf("error does not name the key: %v", err)
	}
}

func FuzzDecodeSpanCheckpoints(f *testing.F) {
	raw, _ := proto.Marshal(realSpanCheckpoints(3))
	f.Add(raw)
	raw, _ = proto.Marshal(&lbpb.SpanCheckpoints{StoreId: 3})
	f.Add(raw)
	f.Add([]byte{})
	key := SpanCheckpointKey("pitr", 7, 3)
	f.Fuzz(func(t *testing.T, v []byte) {
		sc, err := DecodeSpanCheckpoints(key, v)
		if err != nil {
			checkMalformed(t, key, err)
			return
		}
		if sc.StoreId != 3 {
			t.Fatalf("store %d decoded under store 3's key", sc.StoreId)
		}
		for i, s := range sc.Spans {
			if len(s.EndKey) > 0 && bytes.Compare(s.StartKey, s.EndKey) >= 0 {
				t.Fatalf("span %d empty", i)
			}
			if i > 0 && (len(sc.Spans[i-1].EndKey) == 0 || bytes.Compare(sc.Spans[i-1].EndKey, s.StartKey) > 0) {
				t.Fatalf("span %d overlaps span %d", i, i-1)
			}
		}
		again, err := proto.Marshal(sc)
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeSpanCheckpoints(key, again)
		if err != nil || !proto.Equal(back, sc) {
			t.Fatalf("re-encode: %v %v", back, err)
		}
	})
}

func FuzzDecodeAgentRegistration(f *testing.F) {
	raw, _ := proto.Marshal(&lbpb.AgentRegistration{StoreId: 1, StoreAddress: "tikv-0:20160", StatusAddress: "127.0.0.1:9780",
		Version: "logbackup", StartedAtUnixMs: 1720461606631, Hostname: "tikv-0", Pid: 4242})
	f.Add(raw)
	f.Add([]byte{0x08, 0x01})
	key := AgentKey(1)
	f.Fuzz(func(t *testing.T, v []byte) {
		reg, err := DecodeAgentRegistration(key, v)
		if err != nil {
			checkMalformed(t, key, err)
			return
		}
		if reg.StoreId != 1 {
			t.Fatalf("store %d decoded under store 1's key", reg.StoreId)
		}
		again, _ := proto.Marshal(reg)
		if back, err := DecodeAgentRegistration(key, again); err != nil || !proto.Equal(back, reg) {
			t.Fatalf("re-encode: %v %v", back, err)
		}
	})
}

func FuzzDecodeRecoveryEvent(f *testing.F) {
	raw, _ := proto.Marshal(&lbpb.RecoveryEvent{Kind: lbpb.RecoveryEvent_ERROR_REPORTED, Actor: lbpb.RecoveryEvent_AGENT,
		HappenAtUnixMs: 1720461606631, StoreId: 3, ErrorCode: "KV:LogBackup:Io", Message: "[store = 3] disk full"})
	f.Add(raw)
	raw, _ = proto.Marshal(&lbpb.RecoveryEvent{Kind: lbpb.RecoveryEvent_AUTO_RESUME_ATTEMPT, Actor: lbpb.RecoveryEvent_COORDINATOR, Attempt: 2})
	f.Add(raw)
	key := HistoryPrefix("pitr", 7) + "1"
	f.Fuzz(func(t *testing.T, v []byte) {
		ev, err := DecodeRecoveryEvent(key, v)
		if err != nil {
			checkMalformed(t, key, err)
			return
		}
		again, _ := proto.Marshal(ev)
		if back, err := DecodeRecoveryEvent(key, again); err != nil || !proto.Equal(back, ev) {
			t.Fatalf("re-encode: %v %v", back, err)
		}
	})
}
