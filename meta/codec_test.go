package meta

import (
	"encoding/base64"
	"errors"
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
	_ = p
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

func FuzzDecodePause(f *testing.F) {
	raw, _ := EncodePause(NewManualPause("h", 1, time.Unix(0, 0), "m"))
	f.Add(raw)
	f.Add([]byte(`{"severity":"ERROR","payload_type":"application/x-protobuf;messagetype=brpb.StreamBackupError","payload":"AAEC"}`))
	f.Fuzz(func(t *testing.T, v []byte) {
		p, err := DecodePause("k", v)
		if err != nil {
			return
		}
		if p != nil {
			p.Text()
			p.ErrorPayload()
		}
	})
}

func FuzzDecodeTaskInfo(f *testing.F) {
	info := &brpb.StreamBackupTaskInfo{Name: "pitr", StartTs: 1, EndTs: 2, TableFilter: []string{"*.*"}}
	raw, _ := info.Marshal()
	f.Add(raw)
	f.Fuzz(func(t *testing.T, v []byte) {
		got, err := DecodeTaskInfo("k", v)
		if err == nil && got.Name == "" {
			t.Fatal("decoded a task without a name")
		}
		DecodeLastError("k", v)
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
