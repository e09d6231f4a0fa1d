package recovery

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/meta"
	"logbackup/streamagent/errs"
)

// TestRecoverableCodesDocumented: docs/ERRORS.md (generated from
// streamagent/errs) lists exactly the codes recovered automatically, each
// with what is probed for it.
func TestRecoverableCodesDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/ERRORS.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "## Recovered automatically")
	if !ok {
		t.Fatal("docs/ERRORS.md has no 'Recovered automatically' section")
	}
	rows := regexp.MustCompile("(?m)^\\| `([^`]+)` \\| ([^|]+) \\|").FindAllStringSubmatch(section, -1)
	documented := map[errs.Code]string{}
	for _, r := range rows {
		documented[errs.Code(r[1])] = strings.TrimSpace(r[2])
	}
	for code, deps := range recoverable {
		if got, want := documented[code], strings.Join(deps, " + "); got != want {
			t.Errorf("docs/ERRORS.md says %s probes %q; the coordinator probes %q", code, got, want)
		}
	}
	for code := range documented {
		if recoverable[code] == nil {
			t.Errorf("docs/ERRORS.md lists %s as recovered automatically; it is not", code)
		}
	}
}

// TestProbeGap: jittered ±20% around the interval, never past the cap.
func TestProbeGap(t *testing.T) {
	for _, interval := range []time.Duration{25 * time.Millisecond, 5 * time.Second, 9 * time.Second} {
		lo, hi := interval*4/5, min(interval*6/5, maxProbeGap)
		seen := map[bool]bool{}
		for range 2000 {
			g := probeGap(interval)
			if g < lo || g > hi {
				t.Fatalf("gap %s for interval %s, want within [%s, %s]", g, interval, lo, hi)
			}
			seen[g < interval] = true
		}
		if len(seen) != 2 {
			t.Fatalf("interval %s: no jitter on both sides", interval)
		}
	}
	if got := (AutoResume{ProbeInterval: time.Minute}).probeInterval(); got != maxProbeGap {
		t.Fatalf("a one-minute interval is used as %s; the cap is %s", got, maxProbeGap)
	}
	if got := (AutoResume{}).probeInterval(); got != 5*time.Second {
		t.Fatalf("default interval %s", got)
	}
}

// TestClassifyPause: a person's pause and a legacy empty one are never
// touched; an error pause is probed only for a recoverable code, and not
// once recovery gave up on it. A pause is told apart by its severity, its
// payload's error code and the gave-up flag; the message's text decides
// nothing (one that carries the gave-up marker, or names a recoverable
// code, does not change the class).
func TestClassifyPause(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	errPause := func(code errs.Code, msg string, gaveUp bool) *meta.PauseV2 {
		p := meta.NewErrorPause("h", 1, at, &brpb.StreamBackupError{ErrorCode: string(code), ErrorMessage: msg, StoreId: 1})
		p.RecoveryGaveUp = gaveUp
		return p
	}
	marker := meta.RecoveryGaveUpMarker + ": 5 automatic resumes failed again"
	cases := []struct {
		name   string
		paused bool
		p      *meta.PauseV2
		want   PauseClass
	}{
		{"running", false, nil, NotPaused},
		{"legacy empty pause", true, nil, ManualPause},
		{"a person's pause", true, meta.NewManualPause("h", 1, at, "maintenance"), ManualPause},
		{"a person's pause naming a recoverable code", true, meta.NewManualPause("h", 1, at, string(errs.CodeStorageUnavailable)), ManualPause},
		{"error pause with a text payload", true, &meta.PauseV2{Severity: meta.SeverityError, PayloadType: meta.PayloadText, Payload: []byte("KV:LogBackup:StorageUnavailable")}, FatalPause},
		{"error pause with a corrupt payload", true, &meta.PauseV2{Severity: meta.SeverityError, PayloadType: meta.PayloadError, Payload: []byte{0xff}}, FatalPause},
		{"fatal code", true, errPause(errs.CodeEncryption, "storage unavailable", false), FatalPause},
		{"fatal code, gave-up marker in the text", true, errPause(errs.CodeStorageAccessDenied, marker, false), FatalPause},
		{"TiKV's Io", true, errPause(errs.CodeIo, "io error: network unreachable", false), FatalPause},
		{"TiDB's lag pause", true, errPause(errs.CodeCheckpointLag, "the lag is too huge", false), FatalPause},
		{"an unknown code", true, errPause("KV:LogBackup:SomethingNew", "storage unavailable", false), FatalPause},
		{"recoverable code, gave-up marker in the text only", true, errPause(errs.CodeStorageUnavailable, marker, false), RecoverablePause},
		{"recoverable code, gave up", true, errPause(errs.CodeStorageUnavailable, "", true), GaveUpPause},
	}
	for code := range recoverable {
		cases = append(cases, struct {
			name   string
			paused bool
			p      *meta.PauseV2
			want   PauseClass
		}{"recoverable " + string(code), true, errPause(code, "", false), RecoverablePause})
	}
	for _, c := range cases {
		// Through the codec, as the coordinator reads it from etcd.
		var p *meta.PauseV2
		if c.p != nil {
			raw, err := meta.EncodePause(c.p)
			if err != nil {
				t.Fatal(err)
			}
			if p, err = meta.DecodePause("pause/x", raw); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
		}
		st := &meta.TaskStatus{Info: &brpb.StreamBackupTaskInfo{Name: "x"}, Pause: meta.PauseStatus{Paused: c.paused, V2: p}}
		got, e := ClassifyPause(st)
		if got != c.want {
			t.Errorf("%s: class %d, want %d", c.name, got, c.want)
		}
		if (got == RecoverablePause || got == GaveUpPause) && e == nil {
			t.Errorf("%s: no error payload returned", c.name)
		}
	}
}
