// Package feedcodec is the gRPC codec of the agent's EventFeed connection:
// it decodes TiKV's ChangeDataEvent with rows that refer to the received
// message's buffer instead of copies.
package feedcodec

import (
	"errors"
	"fmt"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// Codec is the gRPC codec of the agent's EventFeed connection. It
// decodes a ChangeDataEvent's rows in place: their keys and values are
// slices of the received message's buffer rather than copies, and a
// message's rows share one allocation. kvproto's decoder (reached through
// protobuf-go's legacy wrapper) allocated three times per row and copied
// every key and value out of a pooled buffer that then went back to the
// pool, ~1.3 bytes allocated per byte received (issue 19). The buffer here
// is the garbage collector's: it lives while a row refers to it, and the
// matcher copies the prewrites it keeps past a message (Matcher.Own), so a
// long transaction pins its own bytes, not a whole message. Other messages
// (the request, the health service's) go to gRPC's codec as before.
type Codec struct{ fallback encoding.CodecV2 }

// New makes the codec; other messages go to gRPC's proto codec.
func New() Codec { return Codec{fallback: encoding.GetCodecV2(proto.Name)} }

func (c Codec) Name() string { return proto.Name }

func (c Codec) Marshal(v any) (mem.BufferSlice, error) { return c.fallback.Marshal(v) }

// Received is a ChangeDataEvent with the bytes it took on the wire, for a
// receiver that calls RecvMsg(&Received{}) instead of Recv: the intake
// window is charged the wire length, which the codec knows for free,
// where ChangeDataEvent.Size() walked every row again (5–7% of the
// agent's CPU on the live path, issue 19).
type Received struct {
	Event   *cdcpb.ChangeDataEvent
	WireLen int
}

func (c Codec) Unmarshal(data mem.BufferSlice, v any) error {
	if r, ok := v.(*Received); ok {
		r.WireLen = data.Len()
		r.Event = new(cdcpb.ChangeDataEvent)
		v = r.Event
	}
	ev, ok := v.(*cdcpb.ChangeDataEvent)
	if !ok {
		return c.fallback.Unmarshal(data, v)
	}
	// Materialize copies into a buffer of its own: gRPC frees data's
	// buffers to its pool once this returns.
	if err := decodeChangeDataEvent(data.Materialize(), ev); err != nil {
		return fmt.Errorf("unmarshal %T: %w", v, err)
	}
	return nil
}

var (
	errTruncated = errors.New("truncated protobuf message")
	errOverflow  = errors.New("protobuf varint overflows 64 bits")
	errWireType  = errors.New("protobuf field of an unexpected wire type")
)

const (
	wireVarint     = 0
	wireFixed64    = 1
	wireBytes      = 2
	wireStartGroup = 3
	wireEndGroup   = 4
	wireFixed32    = 5
)

// pbReader walks one message's fields.
type pbReader struct {
	b []byte
	i int
}

func (r *pbReader) varint() (uint64, error) {
	var v uint64
	for shift := uint(0); ; shift += 7 {
		if shift >= 64 {
			return 0, errOverflow
		}
		if r.i >= len(r.b) {
			return 0, errTruncated
		}
		c := r.b[r.i]
		r.i++
		v |= uint64(c&0x7f) << shift
		if c < 0x80 {
			return v, nil
		}
	}
}

// field reads the next field's number and wire type.
func (r *pbReader) field() (num int32, wire int, err error) {
	k, err := r.varint()
	if err != nil {
		return 0, 0, err
	}
	num, wire = int32(k>>3), int(k&7)
	if num <= 0 {
		return 0, 0, fmt.Errorf("illegal protobuf field number %d", num)
	}
	return num, wire, nil
}

// bytes reads a length-delimited field's contents, capped so that an
// append to them cannot write into what follows.
func (r *pbReader) bytes() ([]byte, error) {
	n, err := r.varint()
	if err != nil {
		return nil, err
	}
	if n > uint64(len(r.b)-r.i) {
		return nil, errTruncated
	}
	end := r.i + int(n)
	p := r.b[r.i:end:end]
	r.i = end
	return p, nil
}

// skip passes over a field of another number, as kvproto's decoder keeps
// them only as unrecognized bytes the agent never reads.
func (r *pbReader) skip(wire int) error {
	switch wire {
	case wireVarint:
		_, err := r.varint()
		return err
	case wireFixed64, wireFixed32:
		n := 8
		if wire == wireFixed32 {
			n = 4
		}
		if len(r.b)-r.i < n {
			return errTruncated
		}
		r.i += n
		return nil
	case wireBytes:
		_, err := r.bytes()
		return err
	case wireStartGroup: // deprecated; skipped to its end as kvproto does
		for depth := 1; depth > 0; {
			k, err := r.varint()
			if err != nil {
				return err
			}
			switch w := int(k & 7); w {
			case wireStartGroup:
				depth++
			case wireEndGroup:
				depth--
			default:
				if err := r.skip(w); err != nil {
					return err
				}
			}
		}
		return nil
	default:
		return fmt.Errorf("%w: %d", errWireType, wire)
	}
}

func (r *pbReader) more() bool { return r.i < len(r.b) }

// count is how many fields numbered num the message holds (a first pass,
// so the repeated ones get one allocation).
func count(b []byte, num int32) (int, error) {
	r := pbReader{b: b}
	n := 0
	for r.more() {
		f, wire, err := r.field()
		if err != nil {
			return 0, err
		}
		if f == num {
			n++
		}
		if err := r.skip(wire); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// varintField reads a varint field's value, refusing another wire type.
func (r *pbReader) varintField(wire int) (uint64, error) {
	if err := expect(wire, wireVarint); err != nil {
		return 0, err
	}
	return r.varint()
}

// bytesField reads a length-delimited field's bytes, refusing another wire
// type.
func (r *pbReader) bytesField(wire int) ([]byte, error) {
	if err := expect(wire, wireBytes); err != nil {
		return nil, err
	}
	return r.bytes()
}

func expect(wire, want int) error {
	if wire != want {
		return fmt.Errorf("%w: %d, want %d", errWireType, wire, want)
	}
	return nil
}

// decodeChangeDataEvent sets m to the message in b, referring to b for
// every row's bytes.
func decodeChangeDataEvent(b []byte, m *cdcpb.ChangeDataEvent) error {
	*m = cdcpb.ChangeDataEvent{}
	n, err := count(b, 1)
	if err != nil {
		return err
	}
	var events []cdcpb.Event
	if n > 0 {
		events = make([]cdcpb.Event, 0, n)
		m.Events = make([]*cdcpb.Event, 0, n)
	}
	r := pbReader{b: b}
	for r.more() {
		f, wire, err := r.field()
		if err != nil {
			return err
		}
		switch f {
		case 1:
			p, err := r.bytesField(wire)
			if err != nil {
				return err
			}
			events = append(events, cdcpb.Event{})
			e := &events[len(events)-1]
			if err := decodeEvent(p, e); err != nil {
				return err
			}
			m.Events = append(m.Events, e)
		case 2:
			p, err := r.bytesField(wire)
			if err != nil {
				return err
			}
			if m.ResolvedTs == nil {
				m.ResolvedTs = &cdcpb.ResolvedTs{}
			}
			if err := m.ResolvedTs.Unmarshal(p); err != nil {
				return err
			}
		default:
			if err := r.skip(wire); err != nil {
				return err
			}
		}
	}
	return nil
}

func decodeEvent(b []byte, e *cdcpb.Event) error {
	r := pbReader{b: b}
	for r.more() {
		f, wire, err := r.field()
		if err != nil {
			return err
		}
		switch f {
		case 1, 2, 6, 7:
			v, err := r.varintField(wire)
			if err != nil {
				return err
			}
			switch f {
			case 1:
				e.RegionId = v
			case 2:
				e.Index = v
			case 6:
				e.Event = &cdcpb.Event_ResolvedTs{ResolvedTs: v}
			case 7:
				e.RequestId = v
			}
		case 3, 4, 5, 8:
			p, err := r.bytesField(wire)
			if err != nil {
				return err
			}
			switch f {
			case 3:
				entries := &cdcpb.Event_Entries{}
				if err := decodeEntries(p, entries); err != nil {
					return err
				}
				e.Event = &cdcpb.Event_Entries_{Entries: entries}
			case 4: // rare: kvproto's decoder, over a copy
				x := &cdcpb.Event_Admin{}
				if err := x.Unmarshal(p); err != nil {
					return err
				}
				e.Event = &cdcpb.Event_Admin_{Admin: x}
			case 5:
				x := &cdcpb.Error{}
				if err := x.Unmarshal(p); err != nil {
					return err
				}
				e.Event = &cdcpb.Event_Error{Error: x}
			case 8:
				x := &cdcpb.Event_LongTxn{}
				if err := x.Unmarshal(p); err != nil {
					return err
				}
				e.Event = &cdcpb.Event_LongTxn_{LongTxn: x}
			}
		default:
			if err := r.skip(wire); err != nil {
				return err
			}
		}
	}
	return nil
}

func decodeEntries(b []byte, m *cdcpb.Event_Entries) error {
	n, err := count(b, 1)
	if err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	rows := make([]cdcpb.Event_Row, n)
	m.Entries = make([]*cdcpb.Event_Row, n)
	r := pbReader{b: b}
	i := 0
	for r.more() {
		f, wire, err := r.field()
		if err != nil {
			return err
		}
		if f != 1 {
			if err := r.skip(wire); err != nil {
				return err
			}
			continue
		}
		p, err := r.bytesField(wire)
		if err != nil {
			return err
		}
		if err := decodeRow(p, &rows[i]); err != nil {
			return err
		}
		m.Entries[i] = &rows[i]
		i++
	}
	return nil
}

func decodeRow(b []byte, row *cdcpb.Event_Row) error {
	r := pbReader{b: b}
	for r.more() {
		f, wire, err := r.field()
		if err != nil {
			return err
		}
		switch f {
		case 1, 2, 3, 4, 8, 9, 10:
			v, err := r.varintField(wire)
			if err != nil {
				return err
			}
			switch f {
			case 1:
				row.StartTs = v
			case 2:
				row.CommitTs = v
			case 3:
				row.Type = cdcpb.Event_LogType(v)
			case 4:
				row.OpType = cdcpb.Event_Row_OpType(v)
			case 8:
				row.ExpireTsUnixSecs = v
			case 9:
				row.TxnSource = v
			case 10:
				row.Generation = v
			}
		case 5, 6, 7:
			p, err := r.bytesField(wire)
			if err != nil {
				return err
			}
			switch f {
			case 5:
				row.Key = p
			case 6:
				row.Value = p
			case 7:
				row.OldValue = p
			}
		default:
			if err := r.skip(wire); err != nil {
				return err
			}
		}
	}
	return nil
}
