package simcluster

import (
	"bytes"
	"testing"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// TestGogoCodecSameBytes: the stores' codec puts on the wire exactly what
// gRPC's proto codec would, for small and pooled (large) messages, reads
// them back, and hands other messages to gRPC's codec.
func TestGogoCodecSameBytes(t *testing.T) {
	grpcCodec := encoding.GetCodecV2(proto.Name)
	mine := newGogoCodec()
	rows := func(n, value int) []*cdcpb.Event_Row {
		var out []*cdcpb.Event_Row
		for i := 0; i < n; i++ {
			out = append(out, &cdcpb.Event_Row{Type: cdcpb.Event_PREWRITE, StartTs: uint64(i + 1), CommitTs: uint64(i + 2),
				Key: []byte{'k', byte(i)}, Value: bytes.Repeat([]byte{byte(i)}, value), OpType: cdcpb.Event_Row_PUT})
		}
		return out
	}
	for name, msg := range map[string]*cdcpb.ChangeDataEvent{
		"small": {Events: []*cdcpb.Event{{RegionId: 3, RequestId: 4, Event: &cdcpb.Event_Entries_{Entries: &cdcpb.Event_Entries{Entries: rows(3, 10)}}},
			errorEvent(5, 6, Congested(5))}},
		"resolved": {ResolvedTs: &cdcpb.ResolvedTs{Regions: []uint64{1, 2, 3}, Ts: 99}},
		"pooled":   {Events: []*cdcpb.Event{{RegionId: 1, Event: &cdcpb.Event_Entries_{Entries: &cdcpb.Event_Entries{Entries: rows(200, 1000)}}}}},
	} {
		want, err := grpcCodec.Marshal(msg)
		if err != nil {
			t.Fatal(err)
		}
		got, err := mine.Marshal(msg)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Materialize(), want.Materialize()) {
			t.Fatalf("%s: %d bytes differ from gRPC's codec's %d", name, got.Len(), want.Len())
		}
		var back cdcpb.ChangeDataEvent
		if err := mine.Unmarshal(got, &back); err != nil {
			t.Fatal(err)
		}
		if back.String() != msg.String() {
			t.Fatalf("%s: read back %v", name, back.String())
		}
		got.Free()
		want.Free()
	}
	h := &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}
	got, err := mine.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var back healthpb.HealthCheckResponse
	if err := mine.Unmarshal(got, &back); err != nil || back.Status != h.Status {
		t.Fatalf("health message through the fallback: %v, %v", back.Status, err)
	}
	if _, err := mine.Marshal("not a message"); err == nil {
		t.Fatal("a non-message marshalled")
	}
}
