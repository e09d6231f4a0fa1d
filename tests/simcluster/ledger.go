package simcluster

import (
	"bytes"
	"sort"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
)

// shortValueMaxLen is TiKV's SHORT_VALUE_MAX_LEN: values up to this size
// live in the lock and the write record (and so ride on live COMMIT rows);
// longer ones live in the default CF only.
const shortValueMaxLen = 255

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
	Primary []byte // raw
	StartTS uint64
	Op      kvrpcpb.Op // Put, Del or Lock (a SELECT FOR UPDATE lock: no CDC rows)
	Value   []byte
	TTL     uint64
	// MinCommitTS is kept on the primary lock, as mocktikv keeps it, so a
	// min_commit_ts push can be mirrored exactly.
	MinCommitTS uint64
}

// Delete reports whether the lock deletes its key.
func (l *Lock) Delete() bool { return l.Op == kvrpcpb.Op_Del }

// emits reports whether TiKV's CDC reports this lock (Put and Delete locks
// only; Lock-type locks carry no data and the resolver ignores them).
func (l *Lock) emits() bool { return l.Op == kvrpcpb.Op_Put || l.Op == kvrpcpb.Op_Del }

type txnKey struct {
	key     string
	startTS uint64
}

// ledger holds what the stores acknowledged. It mirrors mocktikv's MVCC
// rules (checked by Cluster.CheckLedger) and produces the CDC rows TiKV
// would produce for each change. It is guarded by Cluster.mu.
type ledger struct {
	keys       [][]byte             // encoded keys that ever had a version or lock, sorted
	versions   map[string][]Version // by raw key, ascending commit_ts
	committed  map[txnKey]uint64    // (key, start_ts) → commit_ts, including Lock-type commits
	rolledBack map[txnKey]bool
	locks      map[string]*Lock // by raw key
}

func newLedger() *ledger {
	return &ledger{versions: map[string][]Version{}, committed: map[txnKey]uint64{},
		rolledBack: map[txnKey]bool{}, locks: map[string]*Lock{}}
}

func (l *ledger) noteKey(raw []byte) {
	ek := EncodeKey(raw)
	n := len(l.keys)
	if n == 0 || bytes.Compare(l.keys[n-1], ek) < 0 { // the common, ascending case
		l.keys = append(l.keys, ek)
		return
	}
	i := sort.Search(n, func(i int) bool { return bytes.Compare(l.keys[i], ek) >= 0 })
	if i < n && bytes.Equal(l.keys[i], ek) {
		return
	}
	l.keys = append(l.keys, nil)
	copy(l.keys[i+1:], l.keys[i:])
	l.keys[i] = ek
}

// prewrite applies one mutation of an acknowledged prewrite, as mocktikv's
// prewriteMutation does, and returns the PREWRITE row TiKV would send, or
// nil. A prewrite that finds its own lock writes nothing (a retry).
func (l *ledger) prewrite(m *kvrpcpb.Mutation, primary []byte, startTS, ttl, minCommitTS uint64) *cdcpb.Event_Row {
	op := m.Op
	switch op {
	case kvrpcpb.Op_Insert:
		op = kvrpcpb.Op_Put
	case kvrpcpb.Op_Put, kvrpcpb.Op_Del, kvrpcpb.Op_Lock:
	default: // CheckNotExists and pessimistic ops write nothing here
		return nil
	}
	k := string(m.Key)
	if cur, ok := l.locks[k]; ok && cur.StartTS == startTS {
		return nil
	}
	lk := &Lock{Key: clone(m.Key), Primary: clone(primary), StartTS: startTS, Op: op, Value: clone(m.Value), TTL: ttl}
	if bytes.Equal(primary, m.Key) {
		lk.MinCommitTS = minCommitTS
	}
	l.locks[k] = lk
	l.noteKey(m.Key)
	if !lk.emits() {
		return nil
	}
	return lk.prewriteRow()
}

func (lk *Lock) prewriteRow() *cdcpb.Event_Row {
	return &cdcpb.Event_Row{Type: cdcpb.Event_PREWRITE, StartTs: lk.StartTS, Key: clone(lk.Key),
		Value: clone(lk.Value), OpType: opType(lk.Delete())}
}

// rewriteRow is the row TiKV sends when a lock is rewritten in place (TTL
// heartbeat, min_commit_ts push): only the lock CF is written, so the row
// carries the value only if it is short; a Put lock without one is skipped
// as an incomplete prewrite (delegate.rs RowsBuilder::finish_build).
func (lk *Lock) rewriteRow() *cdcpb.Event_Row {
	if !lk.emits() {
		return nil
	}
	if lk.Op == kvrpcpb.Op_Put && len(lk.Value) > shortValueMaxLen {
		return nil
	}
	return lk.prewriteRow()
}

// commit turns the key's lock of startTS into a version (mocktikv commitKey)
// and returns the COMMIT row, or nil when nothing was written (a retried
// commit of a committed key) or TiKV reports nothing (a Lock-type lock).
func (l *ledger) commit(key []byte, startTS, commitTS uint64) *cdcpb.Event_Row {
	k := string(key)
	lk, ok := l.locks[k]
	if !ok || lk.StartTS != startTS {
		return nil
	}
	delete(l.locks, k)
	l.committed[txnKey{k, startTS}] = commitTS
	if !lk.emits() {
		return nil
	}
	v := Version{Key: lk.Key, StartTS: startTS, CommitTS: commitTS, Delete: lk.Delete(), Value: lk.Value}
	vs := append(l.versions[k], v)
	sort.SliceStable(vs, func(i, j int) bool { return vs[i].CommitTS < vs[j].CommitTS })
	l.versions[k] = vs
	row := &cdcpb.Event_Row{Type: cdcpb.Event_COMMIT, StartTs: startTS, CommitTs: commitTS, Key: clone(key), OpType: opType(lk.Delete())}
	// The write record keeps a short value, and TiKV's decode_write copies
	// it onto the live COMMIT row; long values are only in the prewrite.
	if !lk.Delete() && len(lk.Value) <= shortValueMaxLen {
		row.Value = clone(lk.Value)
	}
	return row
}

// rollback writes a rollback record for (key, startTS), removing the lock
// of that transaction if there is one (mocktikv rollbackKey), and returns
// the ROLLBACK row TiKV sends for the record — also when no lock existed.
// It returns nil when the record already existed or the transaction
// committed on this key (mocktikv refuses that request as a whole, so the
// caller never gets here with a success).
func (l *ledger) rollback(key []byte, startTS uint64) *cdcpb.Event_Row {
	k := string(key)
	tk := txnKey{k, startTS}
	if _, ok := l.committed[tk]; ok || l.rolledBack[tk] {
		return nil
	}
	if lk, ok := l.locks[k]; ok && lk.StartTS == startTS {
		delete(l.locks, k)
	}
	l.rolledBack[tk] = true
	return &cdcpb.Event_Row{Type: cdcpb.Event_ROLLBACK, StartTs: startTS, Key: clone(key), OpType: cdcpb.Event_Row_UNKNOWN}
}

// scan returns the initial-scan rows for encoded range [start, end) in the
// order TiKV's delta scanner yields them: keys ascending; for each key its
// lock first (as PREWRITE) and then its versions with commit_ts > checkpoint,
// newest first (as COMMITTED, self-contained with the value).
func (l *ledger) scan(start, end []byte, checkpoint uint64) []*cdcpb.Event_Row {
	i := sort.Search(len(l.keys), func(i int) bool { return bytes.Compare(l.keys[i], start) >= 0 })
	var rows []*cdcpb.Event_Row
	for ; i < len(l.keys) && (len(end) == 0 || bytes.Compare(l.keys[i], end) < 0); i++ {
		raw, err := DecodeKey(l.keys[i])
		if err != nil {
			continue
		}
		if lk, ok := l.locks[string(raw)]; ok && lk.emits() {
			rows = append(rows, lk.prewriteRow())
		}
		vs := l.versions[string(raw)]
		for j := len(vs) - 1; j >= 0 && vs[j].CommitTS > checkpoint; j-- {
			v := vs[j]
			rows = append(rows, &cdcpb.Event_Row{Type: cdcpb.Event_COMMITTED, StartTs: v.StartTS, CommitTs: v.CommitTS,
				Key: clone(v.Key), Value: clone(v.Value), OpType: opType(v.Delete)})
		}
	}
	return rows
}

// locksIn returns the locks of transaction startTS in encoded [start, end),
// or every lock in it when startTS is 0.
func (l *ledger) locksIn(start, end []byte, startTS uint64) []*Lock {
	var out []*Lock
	for _, lk := range l.locks {
		if (startTS == 0 || lk.StartTS == startTS) && inRange(EncodeKey(lk.Key), start, end) {
			out = append(out, lk)
		}
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i].Key, out[j].Key) < 0 })
	return out
}

// minLockIn returns the smallest start_ts of a Put/Delete lock in encoded
// [start, end): what TiKV's resolver holds a downstream's resolved ts at.
func (l *ledger) minLockIn(start, end []byte) (uint64, bool) {
	var min uint64
	found := false
	for _, lk := range l.locks {
		if !lk.emits() || !inRange(EncodeKey(lk.Key), start, end) {
			continue
		}
		if !found || lk.StartTS < min {
			min, found = lk.StartTS, true
		}
	}
	return min, found
}

// inRange reports whether encoded key ek is in [start, end); an empty end
// is unbounded.
func inRange(ek, start, end []byte) bool {
	return bytes.Compare(ek, start) >= 0 && (len(end) == 0 || bytes.Compare(ek, end) < 0)
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
