package lbpb_test

import (
	"testing"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"logbackup/proto/lbpb"
)

// TestRecoveryEventWireFormat pins field numbers: history entries written by
// one version must decode in the next, so renumbering a field is a bug.
func TestRecoveryEventWireFormat(t *testing.T) {
	ev := &lbpb.RecoveryEvent{
		Kind:           lbpb.RecoveryEvent_AUTO_RESUME_FAILED,
		Actor:          lbpb.RecoveryEvent_COORDINATOR,
		HappenAtUnixMs: 1700000000123,
		StoreId:        4,
		ErrorCode:      "KV:LogBackup:StorageUnavailable",
		Message:        "storage unavailable",
		Attempt:        3,
	}
	b, err := proto.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[protowire.Number]bool{}
	for rest := b; len(rest) > 0; {
		num, typ, n := protowire.ConsumeTag(rest)
		if n < 0 {
			t.Fatalf("bad tag in %x", b)
		}
		rest = rest[n:]
		m := protowire.ConsumeFieldValue(num, typ, rest)
		if m < 0 {
			t.Fatalf("bad value in %x", b)
		}
		rest = rest[m:]
		seen[num] = true
	}
	for _, want := range []protowire.Number{1, 2, 3, 4, 5, 6, 9} {
		if !seen[want] {
			t.Errorf("field %d missing from encoding %x", want, b)
		}
	}
	var back lbpb.RecoveryEvent
	if err := proto.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(ev, &back) {
		t.Fatalf("round trip: got %v want %v", &back, ev)
	}
}

// TestCoexistsWithKvproto guards against protobuf registration conflicts
// between our generated code and kvproto's gogo-generated messages, which
// share one binary.
func TestCoexistsWithKvproto(t *testing.T) {
	reg := &lbpb.AgentRegistration{StoreId: 1, StoreAddress: "127.0.0.1:20160", Version: "v0"}
	b, err := proto.Marshal(reg)
	if err != nil {
		t.Fatal(err)
	}
	e := &brpb.StreamBackupError{StoreId: 1, ErrorCode: "KV:LogBackup:Io"}
	eb, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var back lbpb.AgentRegistration
	if err := proto.Unmarshal(b, &back); err != nil || back.GetStoreAddress() != "127.0.0.1:20160" {
		t.Fatalf("registration round trip: %v %v", &back, err)
	}
	var eback brpb.StreamBackupError
	if err := eback.Unmarshal(eb); err != nil || eback.ErrorCode != e.ErrorCode {
		t.Fatalf("kvproto round trip: %v %v", &eback, err)
	}
}
