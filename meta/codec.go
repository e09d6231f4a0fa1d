package meta

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strconv"
	"strings"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"google.golang.org/protobuf/proto"

	"logbackup/proto/lbpb"
)

// ErrMalformed marks a value in etcd that cannot be decoded.
var ErrMalformed = errors.New("malformed metadata")

// MalformedError names the key whose value could not be decoded.
type MalformedError struct {
	Key string
	Err error
}

func (e *MalformedError) Error() string {
	return fmt.Sprintf("malformed metadata at key %q: %v", e.Key, e.Err)
}

func (e *MalformedError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrMalformed) true.
func (e *MalformedError) Is(target error) bool { return target == ErrMalformed }

func malformed(key string, err error) error { return &MalformedError{Key: key, Err: err} }

// EncodeTS encodes a timestamp as BR and TiKV store it: 8 bytes, big-endian.
func EncodeTS(ts uint64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), ts)
}

// DecodeTS decodes an 8-byte big-endian timestamp stored at key.
func DecodeTS(key string, v []byte) (uint64, error) {
	if len(v) != 8 {
		return 0, malformed(key, fmt.Errorf("timestamp is %d bytes, want 8", len(v)))
	}
	return binary.BigEndian.Uint64(v), nil
}

// EncodeTaskInfo encodes a task info as BR writes it: gogo protobuf.
func EncodeTaskInfo(info *brpb.StreamBackupTaskInfo) ([]byte, error) {
	if info == nil {
		return nil, errors.New("encode task info: nil")
	}
	raw, err := info.Marshal()
	if err != nil {
		return nil, fmt.Errorf("encode task info %q: %w", info.Name, err)
	}
	return raw, nil
}

// EncodeLastError encodes a StreamBackupError as TiKV writes it.
func EncodeLastError(e *brpb.StreamBackupError) ([]byte, error) {
	if e == nil {
		return nil, errors.New("encode last error: nil")
	}
	raw, err := e.Marshal()
	if err != nil {
		return nil, fmt.Errorf("encode last error: %w", err)
	}
	return raw, nil
}

// DecodeTaskInfo decodes the protobuf task info stored at key.
func DecodeTaskInfo(key string, v []byte) (*brpb.StreamBackupTaskInfo, error) {
	info := &brpb.StreamBackupTaskInfo{}
	if err := unmarshalSafely(v, info.Unmarshal); err != nil {
		return nil, malformed(key, fmt.Errorf("task info: %w", err))
	}
	if info.Name == "" {
		return nil, malformed(key, errors.New("task info has no name"))
	}
	return info, nil
}

// decodeTaskInfoAt decodes the value of info/<task> and checks that the
// info names the same task as its key: the key is what every other key of
// the task hangs off, so a mismatch would mix two tasks' metadata.
func decodeTaskInfoAt(key string, v []byte) (*brpb.StreamBackupTaskInfo, error) {
	info, err := DecodeTaskInfo(key, v)
	if err != nil {
		return nil, err
	}
	if name := taskFromKey(infoDir, key); info.Name != name {
		return nil, malformed(key, fmt.Errorf("task info names task %q, the key task %q", info.Name, name))
	}
	return info, nil
}

// DecodeLastError decodes the protobuf StreamBackupError stored at key.
func DecodeLastError(key string, v []byte) (*brpb.StreamBackupError, error) {
	e := &brpb.StreamBackupError{}
	if err := unmarshalSafely(v, e.Unmarshal); err != nil {
		return nil, malformed(key, fmt.Errorf("last error: %w", err))
	}
	return e, nil
}

// unmarshalSafely guards against decoders that panic on hostile input:
// a corrupt value must give an error, never crash the agent or the CLI.
func unmarshalSafely(v []byte, unmarshal func([]byte) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("decoder panicked: %v", r)
		}
	}()
	return unmarshal(v)
}

// Pause severities. BR and TiKV write MANUAL for operators and ERROR for
// fatal errors; anything that is not ERROR is treated as manual (an early
// BR wrote REGULAR_OPERATION).
const (
	SeverityManual = "MANUAL"
	SeverityError  = "ERROR"
)

// Payload MIME types of PauseV2.
const (
	PayloadText  = "text/plain;charset=UTF-8"
	PayloadError = "application/x-protobuf;messagetype=brpb.StreamBackupError"
)

// PauseV2 is the JSON value of pause/<task> written by BR (manual pauses)
// and TiKV (error pauses). An empty value is a legacy V1 pause.
type PauseV2 struct {
	Severity          string    `json:"severity"`
	OperationHostname string    `json:"operation_hostname"`
	OperationPID      int       `json:"operation_pid"`
	OperationTime     time.Time `json:"operation_time"`
	PayloadType       string    `json:"payload_type"`
	Payload           []byte    `json:"payload"`
	// RecoveryGaveUp marks the error pause the agents' coordinator wrote
	// when automatic recovery gave up on the incident: the task is a
	// person's to resume. A field of its own, so the agent tells this
	// pause apart by type rather than by its message's text; TiDB's and
	// TiKV's readers ignore a field they do not know.
	RecoveryGaveUp bool `json:"recovery_gave_up,omitempty"`
}

// NewManualPause records an operator's pause with an optional message.
func NewManualPause(host string, pid int, at time.Time, message string) *PauseV2 {
	return &PauseV2{
		Severity: SeverityManual, OperationHostname: host, OperationPID: pid,
		OperationTime: at.Truncate(time.Second), PayloadType: PayloadText, Payload: []byte(message),
	}
}

// NewErrorPause records a pause caused by a fatal error.
// A nil error still gives an ERROR pause (with a text payload saying so):
// the task must stop either way.
func NewErrorPause(host string, pid int, at time.Time, e *brpb.StreamBackupError) *PauseV2 {
	raw, err := EncodeLastError(e)
	if err != nil {
		// A StreamBackupError of strings and ints always marshals; keep the
		// text so the pause still says why.
		return &PauseV2{Severity: SeverityError, OperationHostname: host, OperationPID: pid,
			OperationTime: at, PayloadType: PayloadText, Payload: []byte(e.GetErrorCode() + ": " + e.GetErrorMessage())}
	}
	return &PauseV2{Severity: SeverityError, OperationHostname: host, OperationPID: pid,
		OperationTime: at, PayloadType: PayloadError, Payload: raw}
}

// IsError reports whether the pause was caused by an error.
func (p *PauseV2) IsError() bool { return p != nil && p.Severity == SeverityError }

func (p *PauseV2) mediaType() (string, map[string]string, error) {
	mt, params, err := mime.ParseMediaType(p.PayloadType)
	if err != nil {
		return "", nil, fmt.Errorf("payload type %q: %w", p.PayloadType, err)
	}
	return mt, params, nil
}

// Text returns a text payload.
func (p *PauseV2) Text() (string, bool) {
	if p == nil {
		return "", false
	}
	mt, _, err := p.mediaType()
	if err != nil || mt != "text/plain" {
		return "", false
	}
	return string(p.Payload), true
}

// ErrorPayload decodes a protobuf StreamBackupError payload. It returns
// (nil, nil) for a text payload and an error for an unknown or corrupt one.
// Parameter names are case-folded by mime, which matters because TiKV
// writes "messageType".
func (p *PauseV2) ErrorPayload() (*brpb.StreamBackupError, error) {
	if p == nil {
		return nil, nil
	}
	mt, params, err := p.mediaType()
	if err != nil {
		return nil, err
	}
	switch mt {
	case "text/plain":
		return nil, nil
	case "application/x-protobuf":
		if params["messagetype"] != "brpb.StreamBackupError" {
			return nil, fmt.Errorf("unknown protobuf payload %q", params["messagetype"])
		}
		e := &brpb.StreamBackupError{}
		if err := unmarshalSafely(p.Payload, e.Unmarshal); err != nil {
			return nil, fmt.Errorf("decode payload: %w", err)
		}
		return e, nil
	default:
		return nil, fmt.Errorf("unknown payload type %q", p.PayloadType)
	}
}

// EncodePause encodes a pause record; nil gives the legacy empty value.
func EncodePause(p *PauseV2) ([]byte, error) {
	if p == nil {
		return []byte{}, nil
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encode pause: %w", err)
	}
	return b, nil
}

// DecodePause decodes the value of pause/<task> stored at key. An empty
// value is a legacy pause and gives (nil, nil).
func DecodePause(key string, v []byte) (*PauseV2, error) {
	if len(v) == 0 {
		return nil, nil
	}
	p := &PauseV2{}
	if err := json.Unmarshal(v, p); err != nil {
		return nil, malformed(key, fmt.Errorf("pause record: %w", err))
	}
	if p.Severity == "" {
		return nil, malformed(key, errors.New("pause record has no severity"))
	}
	return p, nil
}

// lastKeyID is the decimal id that ends key (…/<id>): the store a
// per-store record is filed under.
func lastKeyID(key string) (uint64, error) {
	i := strings.LastIndexByte(key, '/')
	id, err := strconv.ParseUint(key[i+1:], 10, 64)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("key does not end with a store id")
	}
	return id, nil
}

// DecodeSpanCheckpoints decodes the span-checkpoint record stored at key
// (…/span-checkpoint/<task>/<store>). The record must name the store of
// its key (readers file it by that store: a record naming another would
// replace that store's), and its spans must be what toRecord writes: each
// non-empty, sorted and disjoint, with an unbounded end only last.
func DecodeSpanCheckpoints(key string, v []byte) (*lbpb.SpanCheckpoints, error) {
	store, err := lastKeyID(key)
	if err != nil {
		return nil, malformed(key, err)
	}
	sc := &lbpb.SpanCheckpoints{}
	if err := unmarshalSafely(v, func(b []byte) error { return proto.Unmarshal(b, sc) }); err != nil {
		return nil, malformed(key, fmt.Errorf("span checkpoints: %w", err))
	}
	if sc.StoreId != store {
		return nil, malformed(key, fmt.Errorf("span checkpoints of store %d under the key of store %d", sc.StoreId, store))
	}
	for i, s := range sc.Spans {
		if len(s.EndKey) > 0 && bytes.Compare(s.StartKey, s.EndKey) >= 0 {
			return nil, malformed(key, fmt.Errorf("span %d [%x, %x) is empty", i, s.StartKey, s.EndKey))
		}
		if i == 0 {
			continue
		}
		prev := sc.Spans[i-1]
		if len(prev.EndKey) == 0 || bytes.Compare(prev.EndKey, s.StartKey) > 0 {
			return nil, malformed(key, fmt.Errorf("span %d [%x, %x) overlaps or precedes span %d", i, s.StartKey, s.EndKey, i-1))
		}
	}
	return sc, nil
}

// DecodeAgentRegistration decodes the registration stored at key
// (…/agents/<store>); it must name the store of its key.
func DecodeAgentRegistration(key string, v []byte) (*lbpb.AgentRegistration, error) {
	store, err := lastKeyID(key)
	if err != nil {
		return nil, malformed(key, err)
	}
	reg := &lbpb.AgentRegistration{}
	if err := unmarshalSafely(v, func(b []byte) error { return proto.Unmarshal(b, reg) }); err != nil {
		return nil, malformed(key, fmt.Errorf("agent registration: %w", err))
	}
	if reg.StoreId != store {
		return nil, malformed(key, fmt.Errorf("registration of store %d under the key of store %d", reg.StoreId, store))
	}
	return reg, nil
}

// DecodeRecoveryEvent decodes one recovery-history event stored at key.
// Unknown kinds and actors decode (a newer writer may add some); the
// reader shows their numbers.
func DecodeRecoveryEvent(key string, v []byte) (*lbpb.RecoveryEvent, error) {
	ev := &lbpb.RecoveryEvent{}
	if err := unmarshalSafely(v, func(b []byte) error { return proto.Unmarshal(b, ev) }); err != nil {
		return nil, malformed(key, fmt.Errorf("recovery event: %w", err))
	}
	return ev, nil
}
