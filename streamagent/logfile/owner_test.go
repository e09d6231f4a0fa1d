package logfile

import (
	"errors"
	"reflect"
	"testing"
)

// FuzzDecodeOwner: any bytes decode to a record or ErrOwnerCorrupt, never
// a panic; a decoded record encodes to bytes that decode to it again.
func FuzzDecodeOwner(f *testing.F) {
	good, err := EncodeOwner(&Owner{Version: OwnerVersion, ClusterID: 7, Task: "pitr", TaskStartTS: 9, SinceTS: 10, Since: "2026-01-01T00:00:00.000Z",
		Previous: []PreviousOwner{{ClusterID: 8, Task: "old", TaskStartTS: 1, TakenOverTS: 10, TakenOverAt: "2026-01-01T00:00:00.000Z", TakenOverBy: 7}}})
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{string(good), "", "{", "null", "[]", `{"version":1}`, `{"version":1,"task":"x","previous":[{}]}`, `{"version":"1"}`, `{"version":1,"task":"x","previous":[]}`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		o, err := DecodeOwner(raw)
		if err != nil {
			if !errors.Is(err, ErrOwnerCorrupt) {
				t.Fatalf("%q: %v is not ErrOwnerCorrupt", raw, err)
			}
			return
		}
		again, err := EncodeOwner(o)
		if err != nil {
			t.Fatal(err)
		}
		o2, err := DecodeOwner(again)
		if err != nil || !reflect.DeepEqual(o, o2) {
			t.Fatalf("%q decodes to %+v, which re-decodes to %+v (%v)", raw, o, o2, err)
		}
	})
}

// TestTakenOverBefore: the latest takeover from a cluster decides.
func TestTakenOverBefore(t *testing.T) {
	o := &Owner{ClusterID: 3, Previous: []PreviousOwner{{ClusterID: 1, TakenOverTS: 100}, {ClusterID: 2, TakenOverTS: 200}, {ClusterID: 1, TakenOverTS: 300}}}
	for _, c := range []struct {
		cluster, ts uint64
		want        bool
		at          uint64
	}{{1, 50, true, 300}, {1, 250, true, 300}, {1, 300, false, 0}, {2, 199, true, 200}, {2, 200, false, 0}, {3, 1, false, 0}, {4, 1, false, 0}} {
		p, ok := o.TakenOverBefore(c.cluster, c.ts)
		if ok != c.want || ok && p.TakenOverTS != c.at {
			t.Errorf("cluster %d at %d: %+v %v", c.cluster, c.ts, p, ok)
		}
	}
}
