package simcluster

import (
	"bytes"
	"fmt"
	"sort"
)

// bulkSpace is the ledger's record of one BulkWriter's key range: every key
// it wrote, per shard in key order (a shard's keys are its sequence numbers
// in order, and shards follow each other in key order), with the key's lock
// and versions. It takes the place of the ledger's key set, lock table and
// version map for those keys, which would cost a B-tree insert and two hash
// updates per row. Guarded by Cluster.mu.
type bulkSpace struct {
	start, end []byte      // raw range
	shards     []bulkShard // by shard number
	// open is the batch between its prewrite and its commit. Its locks
	// exist only within one BulkWriter.batch call.
	open *openBatch
}

// bulkShard holds a shard's keys by sequence number, in fixed-size chunks
// so that growing never copies what is there.
type bulkShard struct {
	chunks [][]bulkKey
	n      int
}

const bulkChunk = 1024

type bulkKey struct {
	raw      string
	lock     *Lock
	versions []Version // ascending commit ts
}

type openBatch struct {
	startTS uint64
	keys    []string
}

func (sh *bulkShard) at(i int) *bulkKey { return &sh.chunks[i/bulkChunk][i%bulkChunk] }

// key returns a shard's seq-th key, adding it when it is the next new one.
func (sp *bulkSpace) key(shard int32, seq int64, raw string) *bulkKey {
	sh := &sp.shards[shard]
	if int(seq) == sh.n {
		if sh.n%bulkChunk == 0 {
			sh.chunks = append(sh.chunks, make([]bulkKey, bulkChunk))
		}
		sh.at(sh.n).raw = raw
		sh.n++
	}
	return sh.at(int(seq))
}

func (sp *bulkSpace) owns(raw []byte) bool {
	return bytes.Compare(raw, sp.start) >= 0 && bytes.Compare(raw, sp.end) < 0
}

// ascend calls fn with the keys in raw [from, to), ascending, until fn
// returns false; it reports whether fn never did.
func (sp *bulkSpace) ascend(from, to string, fn func(raw string, lk *Lock, vs []Version) bool) bool {
	for s := range sp.shards {
		sh := &sp.shards[s]
		if sh.n == 0 || sh.at(sh.n-1).raw < from {
			continue
		}
		if sh.at(0).raw >= to {
			return true
		}
		for i := sort.Search(sh.n, func(i int) bool { return sh.at(i).raw >= from }); i < sh.n; i++ {
			k := sh.at(i)
			if k.raw >= to {
				break
			}
			if !fn(k.raw, k.lock, k.versions) {
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
			vs := sh.at(i).versions
			for j := range vs {
				fn(&vs[j])
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
