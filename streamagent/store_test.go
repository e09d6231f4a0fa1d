package streamagent

import (
	"errors"
	"strings"
	"testing"

	"github.com/pingcap/kvproto/pkg/metapb"
)

// pickByAddress passes over removed and physically destroyed stores and
// refuses two live ones. Real PD refuses to register a second live store
// at a live store's address (tests/realpd cases in streamagent/agentrun cover the
// states it does produce), so the refusal is checked on PD's answer as
// data here.
func TestPickByAddress(t *testing.T) {
	const addr = "10.0.0.1:20160"
	up := func(id uint64) *metapb.Store {
		return &metapb.Store{Id: id, Address: addr, State: metapb.StoreState_Up}
	}
	tomb := &metapb.Store{Id: 2, Address: addr, State: metapb.StoreState_Tombstone, NodeState: metapb.NodeState_Removed}
	destroyed := &metapb.Store{Id: 3, Address: addr, State: metapb.StoreState_Offline, NodeState: metapb.NodeState_Removing, PhysicallyDestroyed: true}
	other := &metapb.Store{Id: 9, Address: "10.0.0.9:20160", State: metapb.StoreState_Up}
	cases := []struct {
		name   string
		stores []*metapb.Store
		want   uint64
		errHas []string
	}{
		{"tombstone then live", []*metapb.Store{tomb, up(5), other}, 5, nil},
		{"live then tombstone", []*metapb.Store{up(5), tomb}, 5, nil},
		{"destroyed and live", []*metapb.Store{destroyed, up(5)}, 5, nil},
		{"two live", []*metapb.Store{up(4), tomb, up(7)}, 0, []string{"2 live stores have the address " + addr, "4 at " + addr + " Up", "7 at", "--store-id"}},
		{"removed only", []*metapb.Store{tomb, destroyed, other}, 0, []string{"no live store has the address", "2 at " + addr + " Tombstone", "physically destroyed"}},
		{"none", []*metapb.Store{other}, 0, []string{"no store has the address " + addr}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := pickByAddress(c.stores, addr)
			if c.errHas == nil {
				if err != nil || s.GetId() != c.want {
					t.Fatalf("picked %v, %v; want store %d", s, err, c.want)
				}
				return
			}
			var ae *AddressError
			if !errors.As(err, &ae) {
				t.Fatalf("picked %v, %v; want an AddressError", s, err)
			}
			for _, w := range c.errHas {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}
