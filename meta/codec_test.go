package meta

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
)

func TestTSCodec(t *testing.T) {
	for _, ts := range []uint64{0, 1, 1 << 40, ^uint64(0)} {
		got, err := DecodeTS("k", EncodeTS(ts))
		if err != nil || got != ts {
			t.Fatalf("round trip %d: %d %v", ts, got, err)
		}
	}
	if b := EncodeTS(0x0102030405060708); string(b) != "\x01\x02\x03\x04\x05\x06\x07\x08" {
		t.Fatalf("not big-endian: %x", b)
	}
	for _, bad := range [][]byte{nil, {1}, make([]byte, 9)} {
		_, err := DecodeTS("/tidb/br-stream/x", bad)
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "/tidb/br-stream/x") {
			t.Fatalf("DecodeTS(%x) = %v", bad, err)
		}
	}
}

func TestPauseCodec(t *testing.T) {
	at := time.Date(2025, 3, 14, 14, 35, 6, 0, time.FixedZone("", 8*3600))
	manual := NewManualPause("host1", 42, at, "maintenance")
	e := &brpb.StreamBackupError{HappenAt: 1, ErrorCode: "KV:LogBackup:Io", ErrorMessage: "disk", StoreId: 3}
	errPause := NewErrorPause("tikv-3", 7, at, e)
	for _, p := range []*PauseV2{manual, errPause} {
		raw, err := EncodePause(p)
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodePause("k", raw)
		if err != nil {
			t.Fatal(err)
		}
		if back.Severity != p.Severity || back.OperationHostname != p.OperationHostname || back.OperationPID != p.OperationPID ||
			!back.OperationTime.Equal(p.OperationTime) || back.PayloadType != p.PayloadType || string(back.Payload) != string(p.Payload) {
			t.Fatalf("round trip: %+v vs %+v", back, p)
		}
	}
	if text, ok := manual.Text(); !ok || text != "maintenance" || manual.IsError() {
		t.Fatalf("manual pause: %q %v", text, ok)
	}
	got, err := errPause.ErrorPayload()
	if err != nil || got.ErrorCode != e.ErrorCode || got.StoreId != 3 || !errPause.IsError() {
		t.Fatalf("error payload: %+v %v", got, err)
	}
	if p, err := DecodePause("k", nil); p != nil || err != nil {
		t.Fatalf("legacy empty pause: %v %v", p, err)
	}
}

// TiKV writes "messageType" with a capital T and fractional-second RFC 3339
// times; BR must read both.
func TestPauseFromTiKV(t *testing.T) {
	e := &brpb.StreamBackupError{ErrorCode: "KV:LogBackup:Unknown", ErrorMessage: "[store = 1] boom", StoreId: 1}
	raw, _ := e.Marshal()
	p := NewErrorPause("tikv", 1, time.Now(), e)
	js := `{"severity":"ERROR","operation_hostname":"tikv-0","operation_pid":123,` +
		`"operation_time":"2025-03-14T14:35:06.123456789+08:00",` +
		`"payload_type":"application/x-protobuf;messageType=brpb.StreamBackupError","payload":"` +
		encodeB64(raw) + `"}`
	got, err := DecodePause("k", []byte(js))
	if err != nil {
		t.Fatal(err)
	}
	pe, err := got.ErrorPayload()
	if err != nil || pe.ErrorMessage != "[store = 1] boom" || !got.IsError() {
		t.Fatalf("TiKV pause: %+v %v", pe, err)
	}
	if want := time.Date(2025, 3, 14, 6, 35, 6, 123456789, time.UTC); !got.OperationTime.Equal(want) || got.OperationPID != 123 {
		t.Fatalf("TiKV time/pid: %v %d", got.OperationTime, got.OperationPID)
	}
	if _, ok := got.Text(); ok {
		t.Fatal("a protobuf payload read as text")
	}
	// Ours says "messagetype"; the payload is the same protobuf.
	if pe2, err := p.ErrorPayload(); err != nil || !sameProto(pe2, e) {
		t.Fatalf("our error pause: %v %v", pe2, err)
	}
	unknown := &PauseV2{Severity: "REGULAR_OPERATION", PayloadType: "application/json", Payload: []byte("{}")}
	if unknown.IsError() {
		t.Fatal("REGULAR_OPERATION is a manual pause")
	}
	if _, err := unknown.ErrorPayload(); err == nil {
		t.Fatal("unknown payload type accepted")
	}
}

func TestCorruptValues(t *testing.T) {
	for _, v := range [][]byte{[]byte("\xff\xff\xff"), []byte("{not json"), []byte(`{"severity":""}`)} {
		if _, err := DecodePause("/k/pause", v); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "/k/pause") {
			t.Errorf("DecodePause(%q) = %v", v, err)
		}
	}
	for _, v := range [][]byte{[]byte("\xff\x00garbage\x01"), []byte("\x0a\x05ab")} {
		if _, err := DecodeTaskInfo("/k/info", v); !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeTaskInfo(%q) = %v", v, err)
		}
		if _, err := DecodeLastError("/k/err", v); !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeLastError(%q) = %v", v, err)
		}
	}
}

func TestTaskInfoCodec(t *testing.T) {
	infos := []*brpb.StreamBackupTaskInfo{
		{Name: "pitr", StartTs: 1, EndTs: ^uint64(0), TableFilter: []string{"*.*", "!mysql.*"},
			CompressionType: brpb.CompressionType_ZSTD,
			Storage: &brpb.StorageBackend{Backend: &brpb.StorageBackend_S3{S3: &brpb.S3{
				Bucket: "b", Prefix: "p", AccessKey: "AKIA", SecretAccessKey: "secret"}}}},
		{Name: "x"},
	}
	for _, info := range infos {
		raw, err := EncodeTaskInfo(info)
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeTaskInfo(InfoKey(info.Name), raw)
		if err != nil {
			t.Fatal(err)
		}
		if !sameProto(back, info) {
			t.Fatalf("round trip:\n got %v\nwant %v", back, info)
		}
		if _, err := decodeTaskInfoAt(InfoKey(info.Name), raw); err != nil {
			t.Fatalf("at its own key: %v", err)
		}
		if _, err := decodeTaskInfoAt(InfoKey("other"), raw); !errors.Is(err, ErrMalformed) {
			t.Fatalf("info of %q under the key of another task: %v", info.Name, err)
		}
	}
	if _, err := EncodeTaskInfo(nil); err == nil {
		t.Fatal("nil task info encoded")
	}
}

func TestLastErrorCodec(t *testing.T) {
	for _, e := range []*brpb.StreamBackupError{
		{HappenAt: 1720461606631, ErrorCode: "KV:LogBackup:Io", ErrorMessage: "[store = 21] disk full", StoreId: 21},
		{},
	} {
		raw, err := EncodeLastError(e)
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeLastError(LastErrorKey("pitr", e.StoreId), raw)
		if err != nil || !sameProto(back, e) {
			t.Fatalf("round trip: %v %v, want %v", back, err, e)
		}
	}
	if _, err := EncodeLastError(nil); err == nil {
		t.Fatal("nil error encoded")
	}
	// Field numbers as kvproto defines them: happen_at=1, error_code=2,
	// error_message=3, store_id=4 (a BR/TiKV reader depends on them).
	raw, _ := EncodeLastError(&brpb.StreamBackupError{HappenAt: 5, ErrorCode: "c", ErrorMessage: "m", StoreId: 7})
	if want := "\x08\x05\x12\x01c\x1a\x01m\x20\x07"; string(raw) != want {
		t.Fatalf("wire bytes %x, want %x", raw, want)
	}
}

func TestMalformedError(t *testing.T) {
	_, err := DecodeTS("/tidb/br-stream/checkpoint/pitr/central_global", []byte{1, 2})
	var me *MalformedError
	if !errors.As(err, &me) || me.Key != "/tidb/br-stream/checkpoint/pitr/central_global" {
		t.Fatalf("not a MalformedError naming the key: %v", err)
	}
	if !errors.Is(err, ErrMalformed) || errors.Is(err, ErrTaskNotFound) {
		t.Fatalf("errors.Is: %v", err)
	}
	wrapped := fmt.Errorf("status: %w", err)
	if !errors.Is(wrapped, ErrMalformed) || !strings.Contains(wrapped.Error(), "central_global") {
		t.Fatalf("wrapped: %v", wrapped)
	}
}

// A nil StreamBackupError still gives an ERROR pause, never a panic.
func TestNewErrorPauseNil(t *testing.T) {
	p := NewErrorPause("h", 1, time.Now(), nil)
	if !p.IsError() {
		t.Fatalf("severity %q", p.Severity)
	}
	if _, err := EncodePause(p); err != nil {
		t.Fatal(err)
	}
}

// BR writes second-precision RFC 3339 with the local offset.
func TestPauseFromBR(t *testing.T) {
	js := `{"severity":"MANUAL","operation_hostname":"br-host","operation_pid":9,` +
		`"operation_time":"2025-03-14T14:35:06+08:00","payload_type":"text/plain;charset=UTF-8","payload":"` +
		encodeB64([]byte("maintenance window")) + `"}`
	p, err := DecodePause(PauseKey("pitr"), []byte(js))
	if err != nil {
		t.Fatal(err)
	}
	want := time.Date(2025, 3, 14, 6, 35, 6, 0, time.UTC)
	if text, ok := p.Text(); !ok || text != "maintenance window" || p.IsError() || !p.OperationTime.Equal(want) || p.OperationPID != 9 {
		t.Fatalf("BR pause: %+v", p)
	}
	// And ours reads back as BR would write it: second precision.
	raw, _ := EncodePause(NewManualPause("h", 1, time.Date(2025, 3, 14, 14, 35, 6, 999, time.FixedZone("", 8*3600)), "m"))
	if !strings.Contains(string(raw), `"operation_time":"2025-03-14T14:35:06+08:00"`) {
		t.Fatalf("manual pause time not RFC 3339 seconds: %s", raw)
	}
}

func FuzzDecodePause(f *testing.F) {
	raw, _ := EncodePause(NewManualPause("h", 1, time.Unix(0, 0), "m"))
	f.Add(raw)
	raw, _ = EncodePause(NewErrorPause("h", 1, time.Unix(5, 7), &brpb.StreamBackupError{ErrorCode: "c", StoreId: 1}))
	f.Add(raw)
	f.Add([]byte(`{"severity":"ERROR","payload_type":"application/x-protobuf;messagetype=brpb.StreamBackupError","payload":"AAEC"}`))
	f.Add([]byte(`{"severity":"ERROR","operation_time":"2025-03-14T14:35:06.123+08:00","payload_type":"application/x-protobuf;messageType=brpb.StreamBackupError","payload":"CAE="}`))
	f.Add([]byte(`{"severity":"REGULAR_OPERATION","payload_type":"text/plain","payload":null}`))
	// As TiKV writes an error pause (TestPauseFromTiKV).
	tikv, _ := (&brpb.StreamBackupError{ErrorCode: "KV:LogBackup:Unknown", ErrorMessage: "[store = 1] boom", StoreId: 1}).Marshal()
	f.Add([]byte(`{"severity":"ERROR","operation_hostname":"tikv-0","operation_pid":123,` +
		`"operation_time":"2025-03-14T14:35:06.123456789+08:00",` +
		`"payload_type":"application/x-protobuf;messageType=brpb.StreamBackupError","payload":"` + encodeB64(tikv) + `"}`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, v []byte) {
		p, err := DecodePause("k", v)
		if err != nil {
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), `"k"`) {
				t.Fatalf("error does not name the key: %v", err)
			}
			return
		}
		if p == nil {
			if len(v) != 0 {
				t.Fatalf("non-empty value %q decoded as a legacy pause", v)
			}
			return
		}
		p.Text()
		p.ErrorPayload()
		// Whatever decodes, re-encodes to a value that decodes the same.
		raw, err := EncodePause(p)
		if err != nil {
			return // e.g. a year beyond 9999 that json.Marshal refuses
		}
		back, err := DecodePause("k", raw)
		if err != nil || back.Severity != p.Severity || back.PayloadType != p.PayloadType ||
			string(back.Payload) != string(p.Payload) || !back.OperationTime.Equal(p.OperationTime) ||
			back.OperationHostname != p.OperationHostname || back.OperationPID != p.OperationPID {
			t.Fatalf("re-encode of %q: %+v %v", v, back, err)
		}
	})
}

func FuzzDecodeTaskInfo(f *testing.F) {
	info := &brpb.StreamBackupTaskInfo{Name: "pitr", StartTs: 1, EndTs: 2, TableFilter: []string{"*.*"}}
	raw, _ := info.Marshal()
	f.Add(raw)
	// As `br stream start` writes it: S3 backend, ZSTD, BR's end ts.
	raw, _ = EncodeTaskInfo(&brpb.StreamBackupTaskInfo{Name: "pitr", StartTs: 450591562137600000, EndTs: ^uint64(0),
		TableFilter: []string{"*.*"}, CompressionType: brpb.CompressionType_ZSTD,
		Storage: &brpb.StorageBackend{Backend: &brpb.StorageBackend_S3{S3: &brpb.S3{
			Endpoint: "http://127.0.0.1:9000", Region: "us-east-1", Bucket: "b", Prefix: "p", ForcePathStyle: true}}}})
	f.Add(raw)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, v []byte) {
		got, err := DecodeTaskInfo("k", v)
		if err != nil {
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), `"k"`) {
				t.Fatalf("error does not name the key: %v", err)
			}
			return
		}
		if got.Name == "" {
			t.Fatal("decoded a task without a name")
		}
		again, err := EncodeTaskInfo(got)
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeTaskInfo("k", again)
		if err != nil || !sameProto(back, got) {
			t.Fatalf("re-encode: %v %v", back, err)
		}
	})
}

func FuzzDecodeLastError(f *testing.F) {
	raw, _ := EncodeLastError(&brpb.StreamBackupError{HappenAt: 1, ErrorCode: "KV:LogBackup:Io", ErrorMessage: "m", StoreId: 3})
	f.Add(raw)
	f.Add([]byte{0x08})
	f.Fuzz(func(t *testing.T, v []byte) {
		got, err := DecodeLastError("k", v)
		if err != nil {
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), `"k"`) {
				t.Fatalf("error does not name the key: %v", err)
			}
			return
		}
		again, err := EncodeLastError(got)
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeLastError("k", again)
		if err != nil || !sameProto(back, got) {
			t.Fatalf("re-encode: %v %v", back, err)
		}
	})
}

func FuzzDecodeTS(f *testing.F) {
	f.Add(EncodeTS(42))
	f.Fuzz(func(t *testing.T, v []byte) {
		ts, err := DecodeTS("k", v)
		if err == nil && string(EncodeTS(ts)) != string(v) {
			t.Fatalf("not a round trip: %x", v)
		}
	})
}

func encodeB64(b []byte) string {
	return base64.StdEncoding.EncodeToString(b)
}

// sameProto compares two gogo messages by their encoding, which is
// deterministic for these map-free messages.
func sameProto(a, b interface{ Marshal() ([]byte, error) }) bool {
	ra, errA := a.Marshal()
	rb, errB := b.Marshal()
	return errA == nil && errB == nil && string(ra) == string(rb)
}
