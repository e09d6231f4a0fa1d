package simcluster

import (
	"bytes"
	"sort"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
)

// Version is one committed write of a key.
type Version struct {
	Key      []byte // raw
	StartTS  uint64
	CommitTS uint64
	Delete   bool
	Value    []byte
}

// Lock is a prewritten, not yet committed or rolled back write.
type Lock struct {
	Key     []byte // raw
	StartTS uint64
	Delete  bool
	Value   []byte
}

// ledger holds what the stores acknowledged. It is guarded by Cluster.mu.
type ledger struct {
	keys     [][]byte             // encoded keys with versions or locks, sorted
	versions map[string][]Version // by raw key, ascending commit_ts
	locks    map[string]Lock      // by raw key
}

func newLedger() *ledger {
	return &ledger{versions: map[string][]Version{}, locks: map[string]Lock{}}
}

func (l *ledger) noteKey(raw []byte) {
	ek := EncodeKey(raw)
	i := sort.Search(len(l.keys), func(i int) bool { return bytes.Compare(l.keys[i], ek) >= 0 })
	if i < len(l.keys) && bytes.Equal(l.keys[i], ek) {
		return
	}
	l.keys = append(l.keys, nil)
	copy(l.keys[i+1:], l.keys[i:])
	l.keys[i] = ek
}

// prewrite records a lock and returns the PREWRITE row, or nil for
// mutations TiKV's CDC does not report (Lock, CheckNotExists).
func (l *ledger) prewrite(m *kvrpcpb.Mutation, startTS uint64) *cdcpb.Event_Row {
	var del bool
	switch m.Op {
	case kvrpcpb.Op_Put, kvrpcpb.Op_Insert:
	case kvrpcpb.Op_Del:
		del = true
	default:
		return nil
	}
	k := string(m.Key)
	if cur, ok := l.locks[k]; ok && cur.StartTS == startTS && len(m.Value) == 0 && !del {
		return nil // a retried prewrite of the same lock
	}
	l.locks[k] = Lock{Key: clone(m.Key), StartTS: startTS, Delete: del, Value: clone(m.Value)}
	l.noteKey(m.Key)
	return &cdcpb.Event_Row{Type: cdcpb.Event_PREWRITE, StartTs: startTS, Key: clone(m.Key), Value: clone(m.Value), OpType: opType(del)}
}

// commit turns the key's lock of startTS into a version and returns the
// COMMIT row (no value, as TiKV sends it), or nil if there is no such lock
// (a retried commit).
func (l *ledger) commit(key []byte, startTS, commitTS uint64) *cdcpb.Event_Row {
	k := string(key)
	lk, ok := l.locks[k]
	if !ok || lk.StartTS != startTS {
		return nil
	}
	delete(l.locks, k)
	l.versions[k] = append(l.versions[k], Version{Key: lk.Key, StartTS: startTS, CommitTS: commitTS, Delete: lk.Delete, Value: lk.Value})
	vs := l.versions[k]
	sort.SliceStable(vs, func(i, j int) bool { return vs[i].CommitTS < vs[j].CommitTS })
	return &cdcpb.Event_Row{Type: cdcpb.Event_COMMIT, StartTs: startTS, CommitTs: commitTS, Key: clone(key), OpType: opType(lk.Delete)}
}

// rollback drops the key's lock of startTS and returns the ROLLBACK row.
func (l *ledger) rollback(key []byte, startTS uint64) *cdcpb.Event_Row {
	k := string(key)
	lk, ok := l.locks[k]
	if !ok || lk.StartTS != startTS {
		return nil
	}
	delete(l.locks, k)
	return &cdcpb.Event_Row{Type: cdcpb.Event_ROLLBACK, StartTs: startTS, Key: clone(key)}
}

// scan returns the initial-scan rows for encoded range [start, end): every
// version with commit_ts > checkpoint as COMMITTED, then held locks as
// PREWRITE, in key order.
func (l *ledger) scan(start, end []byte, checkpoint uint64) []*cdcpb.Event_Row {
	i := sort.Search(len(l.keys), func(i int) bool { return bytes.Compare(l.keys[i], start) >= 0 })
	var rows []*cdcpb.Event_Row
	for ; i < len(l.keys) && (len(end) == 0 || bytes.Compare(l.keys[i], end) < 0); i++ {
		raw, err := DecodeKey(l.keys[i])
		if err != nil {
			continue
		}
		for _, v := range l.versions[string(raw)] {
			if v.CommitTS > checkpoint {
				rows = append(rows, &cdcpb.Event_Row{Type: cdcpb.Event_COMMITTED, StartTs: v.StartTS, CommitTs: v.CommitTS,
					Key: clone(v.Key), Value: clone(v.Value), OpType: opType(v.Delete)})
			}
		}
		if lk, ok := l.locks[string(raw)]; ok {
			rows = append(rows, &cdcpb.Event_Row{Type: cdcpb.Event_PREWRITE, StartTs: lk.StartTS,
				Key: clone(lk.Key), Value: clone(lk.Value), OpType: opType(lk.Delete)})
		}
	}
	return rows
}

// minLockIn returns the smallest start_ts of a lock in encoded [start, end).
func (l *ledger) minLockIn(start, end []byte) (uint64, bool) {
	var min uint64
	found := false
	for _, lk := range l.locks {
		ek := EncodeKey(lk.Key)
		if bytes.Compare(ek, start) < 0 || (len(end) > 0 && bytes.Compare(ek, end) >= 0) {
			continue
		}
		if !found || lk.StartTS < min {
			min, found = lk.StartTS, true
		}
	}
	return min, found
}

func opType(del bool) cdcpb.Event_Row_OpType {
	if del {
		return cdcpb.Event_Row_DELETE
	}
	return cdcpb.Event_Row_PUT
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte{}, b...)
}
