package simcluster

import (
	"bytes"
	"sort"

	"github.com/google/btree"
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
	// keys are the raw keys that ever had a version or lock, ordered, but
	// for those of bulk writers (see bulk, and entriesIn for both). The
	// memcomparable encoding preserves order, so raw order is the encoded
	// (region) order; a B-tree keeps inserts in any order cheap.
	keys       *btree.BTreeG[string]
	versions   map[string][]Version // by raw key, ascending commit_ts
	committed  map[txnKey]uint64    // (key, start_ts) → commit_ts, including Lock-type commits
	rolledBack map[txnKey]bool
	locks      map[string]*Lock // by raw key; change only through setLock and dropLock
	// lockIdx orders the Put/Delete locks by key for minLockIn; nil when
	// a lock changed since it was built.
	lockIdx []lockRef
	// bulk are the BulkWriters' key spaces, by start key: their keys,
	// locks and versions live there, not in keys, locks and versions.
	bulk []*bulkSpace
}

type lockRef struct {
	key     string // raw
	startTS uint64
}

func newLedger() *ledger {
	return &ledger{keys: btree.NewOrderedG[string](32), versions: map[string][]Version{}, committed: map[txnKey]uint64{},
		rolledBack: map[txnKey]bool{}, locks: map[string]*Lock{}}
}

func (l *ledger) setLock(k string, lk *Lock) {
	l.locks[k] = lk
	l.lockIdx = nil
}

func (l *ledger) dropLock(k string) {
	delete(l.locks, k)
	l.lockIdx = nil
}

// noteKey records a raw key in the ordered key set.
func (l *ledger) noteKey(raw string) { l.keys.ReplaceOrInsert(raw) }

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
	l.setLock(k, lk)
	l.noteKey(k)
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
	l.dropLock(k)
	l.committed[txnKey{k, startTS}] = commitTS
	if !lk.emits() {
		return nil
	}
	l.addVersion(k, Version{Key: lk.Key, StartTS: startTS, CommitTS: commitTS, Delete: lk.Delete(), Value: lk.Value})
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
		l.dropLock(k)
	}
	l.rolledBack[tk] = true
	return &cdcpb.Event_Row{Type: cdcpb.Event_ROLLBACK, StartTs: startTS, Key: clone(key), OpType: cdcpb.Event_Row_UNKNOWN}
}

// addVersion adds a committed version of raw key k, keeping its versions
// ascending by commit ts (stable: equal commit ts keep their order). The
// new one is almost always the newest, so it is placed from the back.
func (l *ledger) addVersion(k string, v Version) { l.versions[k] = addVersion(l.versions[k], v) }

func addVersion(vs []Version, v Version) []Version {
	vs = append(vs, v)
	i := len(vs) - 1
	for ; i > 0 && vs[i-1].CommitTS > v.CommitTS; i-- {
		vs[i] = vs[i-1]
	}
	vs[i] = v
	return vs
}

// rawRange turns an encoded range into raw bounds; an empty end is
// unbounded. ok is false when a bound is not a valid encoding (region
// boundaries and observed ranges always are).
func rawRange(start, end []byte) (lo, hi string, unbounded, ok bool) {
	s, err := DecodeKey(start)
	if err != nil {
		return "", "", false, false
	}
	if len(end) == 0 {
		return string(s), "", true, true
	}
	e, err := DecodeKey(end)
	if err != nil {
		return "", "", false, false
	}
	return string(s), string(e), false, true
}

// entriesIn calls fn with every key in encoded [start, end) that ever had
// a version or lock, ascending, with its lock (or nil) and its versions,
// until fn returns false: the keys of keys and of the bulk spaces, merged.
func (l *ledger) entriesIn(start, end []byte, fn func(raw string, lk *Lock, vs []Version) bool) {
	lo, hi, unbounded, ok := rawRange(start, end)
	if !ok { // not valid encodings (never from a region or an observed range)
		l.entriesIn(nil, nil, func(raw string, lk *Lock, vs []Version) bool {
			return !inRange(EncodeKey([]byte(raw)), start, end) || fn(raw, lk, vs)
		})
		return
	}
	more := true
	visit := func(k string) bool {
		more = fn(k, l.locks[k], l.versions[k])
		return more
	}
	pos := lo
	for _, sp := range l.bulk { // no key of keys lies in a bulk space
		if !unbounded && string(sp.start) >= hi {
			break
		}
		if string(sp.end) <= pos {
			continue
		}
		if string(sp.start) > pos {
			if l.keys.AscendRange(pos, string(sp.start), visit); !more {
				return
			}
			pos = string(sp.start)
		}
		to := string(sp.end)
		if !unbounded && hi < to {
			to = hi
		}
		if !sp.ascend(pos, to, fn) {
			return
		}
		pos = to
		if !unbounded && pos >= hi {
			return
		}
	}
	if unbounded {
		l.keys.AscendGreaterOrEqual(pos, visit)
	} else if pos < hi {
		l.keys.AscendRange(pos, hi, visit)
	}
}

// scan returns the initial-scan rows for encoded range [start, end) in the
// order TiKV's delta scanner yields them: keys ascending; for each key its
// lock first (as PREWRITE) and then its versions with commit_ts > checkpoint,
// newest first (as COMMITTED, self-contained with the value).
func (l *ledger) scan(start, end []byte, checkpoint uint64) []*cdcpb.Event_Row {
	var rows []*cdcpb.Event_Row
	l.entriesIn(start, end, func(_ string, lk *Lock, vs []Version) bool {
		if lk != nil && lk.emits() {
			rows = append(rows, lk.prewriteRow())
		}
		for j := len(vs) - 1; j >= 0 && vs[j].CommitTS > checkpoint; j-- {
			v := vs[j]
			// The value is shared, not copied: a version's value never
			// changes once committed (the ledger's come from the lock's own
			// copy, the bulk writer's from its fixed pool, which its live rows
			// share too), and a copy of every scanned value cost the process
			// as much memory as the scan (BenchmarkCatchUp). The key is
			// copied: a bulk space builds it in a reused buffer.
			rows = append(rows, &cdcpb.Event_Row{Type: cdcpb.Event_COMMITTED, StartTs: v.StartTS, CommitTs: v.CommitTS,
				Key: clone(v.Key), Value: v.Value, OpType: opType(v.Delete)})
		}
		return true
	})
	return rows
}

// versionsOf returns the versions of a raw key, oldest first.
func (l *ledger) versionsOf(raw []byte) []Version {
	if sp := l.bulkSpaceOf(raw); sp != nil {
		return sp.versionsOf(string(raw))
	}
	return l.versions[string(raw)]
}

// eachVersion calls fn with every committed version.
func (l *ledger) eachVersion(fn func(v *Version)) {
	for _, vs := range l.versions {
		for i := range vs {
			fn(&vs[i])
		}
	}
	for _, sp := range l.bulk {
		sp.eachVersion(fn)
	}
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
// The locks are indexed by key once per change of the lock table, so a
// resolved-ts round over many subscriptions stays cheap while a bulk
// writer holds thousands of locks.
func (l *ledger) minLockIn(start, end []byte) (uint64, bool) {
	lo, hi, unbounded, ok := rawRange(start, end)
	if !ok {
		return l.minLockScan(start, end)
	}
	return l.minLockInRaw(lo, hi, unbounded)
}

// minLockInRaw is minLockIn for a range already decoded to raw keys (hi
// ignored when unbounded): a resolved-ts round over 100,000 subscriptions
// decoded 200,000 keys before subscriptions kept theirs.
func (l *ledger) minLockInRaw(lo, hi string, unbounded bool) (uint64, bool) {
	if l.lockIdx == nil {
		l.lockIdx = make([]lockRef, 0, len(l.locks))
		for k, lk := range l.locks {
			if lk.emits() {
				l.lockIdx = append(l.lockIdx, lockRef{k, lk.StartTS})
			}
		}
		for _, sp := range l.bulk {
			if b := sp.open; b != nil {
				for _, k := range b.keys {
					l.lockIdx = append(l.lockIdx, lockRef{k, b.startTS})
				}
			}
		}
		sort.Slice(l.lockIdx, func(i, j int) bool { return l.lockIdx[i].key < l.lockIdx[j].key })
	}
	i := sort.Search(len(l.lockIdx), func(i int) bool { return l.lockIdx[i].key >= lo })
	var min uint64
	found := false
	for ; i < len(l.lockIdx) && (unbounded || l.lockIdx[i].key < hi); i++ {
		if ts := l.lockIdx[i].startTS; !found || ts < min {
			min, found = ts, true
		}
	}
	return min, found
}

// minLockScan is minLockIn without the index, for ranges whose bounds are
// not valid encodings.
func (l *ledger) minLockScan(start, end []byte) (uint64, bool) {
	var min uint64
	found := false
	l.entriesIn(start, end, func(_ string, lk *Lock, _ []Version) bool {
		if lk != nil && lk.emits() && (!found || lk.StartTS < min) {
			min, found = lk.StartTS, true
		}
		return true
	})
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
