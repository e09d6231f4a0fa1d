package simcluster

import (
	"bytes"
	"fmt"
	"sort"
)

// bulkSpace is the ledger's record of one BulkWriter's key range: for every
// key it wrote (per shard, by sequence number) the key's versions and
// whether the open batch locks it. It takes the place of the ledger's key
// set, lock table and version map for those keys, which would cost a B-tree
// insert and two hash updates per row; and it keeps no pointer per version
// and no key bytes (keys are made again from shard and sequence number,
// values are offsets into the writer's value pool), so a ledger of millions
// of rows stays small and cheap for the garbage collector to mark.
//
// Order: a shard's keys ascend with their sequence numbers and shards
// follow each other in key order (both key layouts put the shard before
// the sequence number). Guarded by Cluster.mu.
type bulkSpace struct {
	start, end []byte      // raw range
	shards     []bulkShard // by shard number
	// open is the batch between its prewrite and its commit, if any.
	open *BulkBatch

	keyOf     func(dst []byte, shard int, seq int64) []byte
	values    []byte // the writer's value pool
	valueSize int
}

// bulkShard holds a shard's keys by sequence number, in fixed-size chunks
// so that growing never copies what is there.
type bulkShard struct {
	chunks [][]bulkKey
	n      int
}

const bulkChunk = 1024

type bulkKey struct {
	open     int32         // 1 + the key's row in the open batch; 0: not locked
	versions []bulkVersion // ascending commit ts
}

type bulkVersion struct {
	startTS, commitTS uint64
	value             uint32 // offset in the value pool
}

func (sh *bulkShard) at(i int) *bulkKey { return &sh.chunks[i/bulkChunk][i%bulkChunk] }

// key returns a shard's seq-th key, adding it when it is the next new one.
func (sp *bulkSpace) key(shard int32, seq int64) *bulkKey {
	sh := &sp.shards[shard]
	if int(seq) == sh.n {
		if sh.n%bulkChunk == 0 {
			sh.chunks = append(sh.chunks, make([]bulkKey, bulkChunk))
		}
		sh.n++
	}
	return sh.at(int(seq))
}

func (sp *bulkSpace) owns(raw []byte) bool {
	return bytes.Compare(raw, sp.start) >= 0 && bytes.Compare(raw, sp.end) < 0
}

func (sp *bulkSpace) lock(k *bulkKey) *Lock {
	if k.open == 0 || sp.open == nil {
		return nil
	}
	return sp.open.lock(int(k.open - 1))
}

func (sp *bulkSpace) versions(raw []byte, k *bulkKey) []Version {
	if len(k.versions) == 0 {
		return nil
	}
	out := make([]Version, len(k.versions))
	for i, v := range k.versions {
		out[i] = Version{Key: raw, StartTS: v.startTS, CommitTS: v.commitTS,
			Value: sp.values[v.value : int(v.value)+sp.valueSize : int(v.value)+sp.valueSize]}
	}
	return out
}

// ascend calls fn with the keys in raw [from, to), ascending, with their
// lock (or nil) and versions, until fn returns false; it reports whether fn
// never did.
func (sp *bulkSpace) ascend(from, to string, fn func(raw string, lk *Lock, vs []Version) bool) bool {
	var buf []byte
	for s := range sp.shards {
		sh := &sp.shards[s]
		keyAt := func(i int) []byte {
			buf = sp.keyOf(buf[:0], s, int64(i))
			return buf
		}
		if sh.n == 0 || string(keyAt(sh.n-1)) < from {
			continue
		}
		if string(keyAt(0)) >= to {
			return true
		}
		for i := sort.Search(sh.n, func(i int) bool { return string(keyAt(i)) >= from }); i < sh.n; i++ {
			raw := bytes.Clone(keyAt(i))
			if string(raw) >= to {
				break
			}
			k := sh.at(i)
			if !fn(string(raw), sp.lock(k), sp.versions(raw, k)) {
				return false
			}
		}
	}
	return true
}

func (sp *bulkSpace) versionsOf(raw string) []Version {
	var out []Version
	sp.ascend(raw, raw+"\x00", func(_ string, _ *Lock, vs []Version) bool {
		out = vs
		return false
	})
	return out
}

func (sp *bulkSpace) eachVersion(fn func(*Version)) {
	for s := range sp.shards {
		sh := &sp.shards[s]
		for i := 0; i < sh.n; i++ {
			if k := sh.at(i); len(k.versions) > 0 {
				vs := sp.versions(sp.keyOf(nil, s, int64(i)), k)
				for j := range vs {
					fn(&vs[j])
				}
			}
		}
	}
}

// claim adds a bulk writer's space: it may not overlap another, and the
// ledger may hold no key in it yet.
func (l *ledger) claim(sp *bulkSpace) error {
	for _, o := range l.bulk {
		if bytes.Compare(sp.start, o.end) < 0 && bytes.Compare(o.start, sp.end) < 0 {
			return fmt.Errorf("range %q..%q overlaps another writer's %q..%q", sp.start, sp.end, o.start, o.end)
		}
	}
	held := false
	l.keys.AscendRange(string(sp.start), string(sp.end), func(string) bool { held = true; return false })
	if held {
		return fmt.Errorf("range %q..%q already holds keys", sp.start, sp.end)
	}
	l.bulk = append(l.bulk, sp)
	sort.Slice(l.bulk, func(i, j int) bool { return bytes.Compare(l.bulk[i].start, l.bulk[j].start) < 0 })
	return nil
}

// bulkSpaceOf returns the bulk space holding a raw key, or nil.
func (l *ledger) bulkSpaceOf(raw []byte) *bulkSpace {
	for _, sp := range l.bulk {
		if sp.owns(raw) {
			return sp
		}
	}
	return nil
}
