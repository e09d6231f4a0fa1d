package feedcodec

import (
	"bytes"
	"math/rand"
	"reflect"
	"testing"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/errorpb"
	"google.golang.org/grpc/mem"
)

// sampleFeedEvents are messages of every shape TiKV sends on EventFeed.
func sampleFeedEvents(rng *rand.Rand, rowCount, maxValue int) []*cdcpb.ChangeDataEvent {
	bytesOf := func(n int) []byte {
		b := make([]byte, n)
		rng.Read(b)
		return b
	}
	var rows []*cdcpb.Event_Row
	for i := 0; i < rowCount; i++ {
		r := &cdcpb.Event_Row{StartTs: rng.Uint64(), CommitTs: rng.Uint64() >> uint(rng.Intn(64)),
			Type: cdcpb.Event_LogType(rng.Intn(6)), OpType: cdcpb.Event_Row_OpType(rng.Intn(3)),
			Key: bytesOf(1 + rng.Intn(40)), Value: bytesOf(rng.Intn(maxValue)), TxnSource: uint64(rng.Intn(3)),
			Generation: uint64(rng.Intn(2)), ExpireTsUnixSecs: uint64(rng.Intn(2)) * rng.Uint64()}
		if i%7 == 0 {
			r.OldValue = bytesOf(rng.Intn(100))
		}
		if i%11 == 0 {
			r.Value = []byte{} // present but empty: kvproto gives a non-nil empty slice
		}
		rows = append(rows, r)
	}
	return []*cdcpb.ChangeDataEvent{
		{},
		{Events: []*cdcpb.Event{{RegionId: 7, RequestId: 3, Index: 9, Event: &cdcpb.Event_Entries_{Entries: &cdcpb.Event_Entries{Entries: rows}}}}},
		{Events: []*cdcpb.Event{
			{RegionId: 1, RequestId: 1, Event: &cdcpb.Event_Entries_{Entries: &cdcpb.Event_Entries{Entries: rows[:min(3, len(rows))]}}},
			{RegionId: 2, RequestId: 2, Event: &cdcpb.Event_Entries_{Entries: &cdcpb.Event_Entries{}}},
			{RegionId: 3, RequestId: 5, Event: &cdcpb.Event_Error{Error: &cdcpb.Error{NotLeader: &errorpb.NotLeader{RegionId: 3}}}},
			{RegionId: 4, RequestId: 6, Event: &cdcpb.Event_ResolvedTs{ResolvedTs: 12345}},
			{RegionId: 5, Event: &cdcpb.Event_LongTxn_{LongTxn: &cdcpb.Event_LongTxn{TxnInfo: []*cdcpb.TxnInfo{{StartTs: 4, Primary: []byte("p")}}}}},
			{RegionId: 6, Event: &cdcpb.Event_Admin_{Admin: &cdcpb.Event_Admin{}}},
			{RegionId: 8, RequestId: 9, Event: &cdcpb.Event_Entries_{Entries: &cdcpb.Event_Entries{Entries: rows[min(10, len(rows)):min(30, len(rows))]}}},
		}},
		{ResolvedTs: &cdcpb.ResolvedTs{Regions: []uint64{1, 2, 3}, Ts: 99, RequestId: 4}},
	}
}

// stripUnknown clears what kvproto keeps of fields it does not know; the
// agent never reads them and Codec does not keep them.
func stripUnknown(m *cdcpb.ChangeDataEvent) {
	m.XXX_unrecognized = nil
	for _, e := range m.Events {
		e.XXX_unrecognized = nil
		if x, ok := e.Event.(*cdcpb.Event_Entries_); ok && x.Entries != nil {
			x.Entries.XXX_unrecognized = nil
			for _, r := range x.Entries.Entries {
				r.XXX_unrecognized = nil
			}
		}
	}
}

func decodeBoth(t testing.TB, b []byte) (want, got *cdcpb.ChangeDataEvent, wantErr, gotErr error) {
	want, got = &cdcpb.ChangeDataEvent{}, &cdcpb.ChangeDataEvent{}
	wantErr = want.Unmarshal(append([]byte(nil), b...))
	gotErr = New().Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, got)
	return want, got, wantErr, gotErr
}

// TestFeedCodecMatchesKvproto: the in-place decoder gives the messages
// kvproto's decoder gives, field for field.
func TestFeedCodecMatchesKvproto(t *testing.T) {
	for i, ev := range sampleFeedEvents(rand.New(rand.NewSource(1)), 50, 2000) {
		b, err := ev.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		want, got, wantErr, gotErr := decodeBoth(t, b)
		if wantErr != nil || gotErr != nil {
			t.Fatalf("message %d: kvproto: %v, feedCodec: %v", i, wantErr, gotErr)
		}
		if !reflect.DeepEqual(want, got) {
			t.Fatalf("message %d differs:\nkvproto:   %v\nfeedCodec: %v", i, want, got)
		}
	}
}

// TestFeedCodecSkipsUnknownFields: fields a newer TiKV adds (here: numbers
// no message of ours has, of every wire type) are passed over.
func TestFeedCodecSkipsUnknownFields(t *testing.T) {
	row := &cdcpb.Event_Row{StartTs: 1, CommitTs: 2, Type: cdcpb.Event_COMMITTED, Key: []byte("k"), Value: []byte("v")}
	rb, _ := row.Marshal()
	unknown := []byte{
		15<<3 | 0, 0x96, 0x01, // varint
		14<<3 | 1, 1, 2, 3, 4, 5, 6, 7, 8, // fixed64
		13<<3 | 2, 2, 'x', 'y', // bytes
		12<<3 | 5, 1, 2, 3, 4, // fixed32
		11<<3 | 3, 15<<3 | 0, 1, 11<<3 | 4, // a group
	}
	rb = append(rb, unknown...)
	var entries []byte
	entries = append(append(append(entries, 1<<3|2), byte(len(rb))), rb...)
	entries = append(entries, unknown...)
	var event []byte
	event = append(event, 1<<3|0, 5) // region 5
	event = append(append(append(event, 3<<3|2), byte(len(entries))), entries...)
	event = append(event, unknown...)
	var msg []byte
	msg = append(append(append(msg, 1<<3|2), byte(len(event))), event...)
	msg = append(msg, unknown...)

	want, got, wantErr, gotErr := decodeBoth(t, msg)
	if wantErr != nil || gotErr != nil {
		t.Fatalf("kvproto: %v, feedCodec: %v", wantErr, gotErr)
	}
	stripUnknown(want)
	if !reflect.DeepEqual(want, got) {
		t.Fatalf("differs:\nkvproto:   %v\nfeedCodec: %v", want, got)
	}
	if r := got.Events[0].GetEntries().Entries[0]; string(r.Key) != "k" || string(r.Value) != "v" || got.Events[0].RegionId != 5 {
		t.Fatalf("decoded %v", got)
	}
}

// TestFeedCodecRejectsBadInput: truncations and wrong wire types are
// errors, never a panic.
func TestFeedCodecRejectsBadInput(t *testing.T) {
	ev := sampleFeedEvents(rand.New(rand.NewSource(2)), 50, 2000)[2]
	b, _ := ev.Marshal()
	for n := 0; n < len(b); n += 1 + n/50 {
		want, got, wantErr, gotErr := decodeBoth(t, b[:n])
		if wantErr == nil {
			if gotErr != nil {
				t.Fatalf("prefix %d: kvproto accepts it, feedCodec: %v", n, gotErr)
			}
			stripUnknown(want)
			if !reflect.DeepEqual(want, got) {
				t.Fatalf("prefix %d differs", n)
			}
		} else if gotErr == nil {
			t.Fatalf("prefix %d: kvproto: %v, feedCodec accepted it", n, wantErr)
		}
	}
	// A row's key as a varint.
	if _, _, _, err := decodeBoth(t, []byte{1<<3 | 2, 4, 3<<3 | 2, 2, 1<<3 | 2, 2}); err == nil {
		t.Fatal("a truncated entries field was accepted")
	}
	bad := []byte{5<<3 | 0, 1}
	ent := append([]byte{1<<3 | 2, byte(len(bad))}, bad...)
	evb := append([]byte{3<<3 | 2, byte(len(ent))}, ent...)
	msg := append([]byte{1<<3 | 2, byte(len(evb))}, evb...)
	if _, _, wantErr, gotErr := decodeBoth(t, msg); wantErr == nil || gotErr == nil {
		t.Fatalf("a key of the wrong wire type: kvproto %v, feedCodec %v", wantErr, gotErr)
	}
}

// TestFeedCodecRowsReferToTheMessage: the point of the codec — the rows'
// bytes are the message's, not copies.
func TestFeedCodecRowsReferToTheMessage(t *testing.T) {
	ev := sampleFeedEvents(rand.New(rand.NewSource(3)), 50, 2000)[1]
	b, _ := ev.Marshal()
	got := &cdcpb.ChangeDataEvent{}
	buf := append([]byte(nil), b...)
	if err := decodeChangeDataEvent(buf, got); err != nil {
		t.Fatal(err)
	}
	r := got.Events[0].GetEntries().Entries[1]
	at := bytes.Index(buf, r.Value)
	if len(r.Value) == 0 || at < 0 || &buf[at] != &r.Value[0] {
		t.Fatal("the row's value is not a slice of the message")
	}
	if cap(r.Value) != len(r.Value) {
		t.Fatalf("the value's capacity %d reaches past it (%d)", cap(r.Value), len(r.Value))
	}
}

func FuzzFeedCodec(f *testing.F) {
	// Small seeds: the fuzzer minimizes every new input, which for a
	// message of 50 KiB-sized rows takes minutes.
	for _, ev := range sampleFeedEvents(rand.New(rand.NewSource(4)), 12, 16) {
		b, _ := ev.Marshal()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		want, got, wantErr, gotErr := decodeBoth(t, b)
		if wantErr != nil {
			return // feedCodec may reject it or not; it must not panic
		}
		if gotErr != nil {
			t.Fatalf("kvproto accepts it, feedCodec: %v", gotErr)
		}
		stripUnknown(want)
		if !reflect.DeepEqual(want, got) {
			t.Fatalf("differs:\nkvproto:   %v\nfeedCodec: %v", want, got)
		}
	})
}

// TestFeedCodecReceivedWireLen: a Received carries the decoded event and
// the message's length on the wire, the intake window's charge, whatever
// buffers gRPC split it into.
func TestFeedCodecReceivedWireLen(t *testing.T) {
	for i, ev := range sampleFeedEvents(rand.New(rand.NewSource(3)), 20, 2000) {
		b, err := ev.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		var data mem.BufferSlice
		for rest := b; len(rest) > 0; {
			n := min(len(rest), 1+i*7) // frames of different sizes
			data = append(data, mem.SliceBuffer(rest[:n]))
			rest = rest[n:]
		}
		var got Received
		if err := New().Unmarshal(data, &got); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if got.WireLen != len(b) || got.WireLen != ev.Size() {
			t.Errorf("event %d: wire length %d, want %d", i, got.WireLen, len(b))
		}
		want := &cdcpb.ChangeDataEvent{}
		if err := want.Unmarshal(b); err != nil {
			t.Fatal(err)
		}
		stripUnknown(want)
		if got.Event == nil || !reflect.DeepEqual(want, got.Event) {
			t.Errorf("event %d decoded differently from kvproto", i)
		}
	}
}
