package simcluster

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/tikv/client-go/v2/util/codec"
)

// BulkKeys is the key layout of a BulkWriter.
type BulkKeys int

const (
	// KeysPrefix: Prefix + 4-byte big-endian shard + 8-byte big-endian
	// sequence number.
	KeysPrefix BulkKeys = iota
	// KeysTiDBRow: TiDB record keys t{TableID}_r{handle} (tablecodec's
	// layout, memcomparable int64s), the shard in the handle's top bits.
	KeysTiDBRow
)

// BulkConfig shapes a BulkWriter. Zero values take the defaults.
type BulkConfig struct {
	Keys BulkKeys
	// Prefix is the raw key prefix of KeysPrefix (default "bulk/").
	Prefix []byte
	// TableID is the table of KeysTiDBRow (default 100).
	TableID int64
	// Regions is how many shards the keys spread over (default 1, at most
	// 1<<20); with Split each shard is a region of its own.
	Regions int
	// Split splits the cluster at the start of the writer's key range, at
	// every other shard's first key and at the range's end, so the range is
	// exactly Regions regions, one per shard (led by the store that led the
	// range before).
	Split bool
	// Run is how many consecutive rows go to one shard before the next
	// (default BatchSize/Regions, at least 1): 1 scatters a transaction's
	// rows over every region, BatchSize puts each in one region.
	Run int
	// KeysPerShard bounds the distinct keys of a shard: past it the writer
	// wraps and writes new versions of the same keys (0 = always new keys).
	KeysPerShard int64
	// KeepVersions keeps only each key's newest n versions (0 = all). The
	// ledger holds every row otherwise (~60 bytes each: values are offsets
	// into a shared pool), which bounds how long a full-speed run can last; with
	// KeysPerShard it bounds the memory. Dropped versions are gone as after
	// TiKV's GC: an initial scan from a checkpoint before them misses them,
	// and Committed no longer lists them.
	KeepVersions int
	// ValueSize is the size of every value (default 100). Values past 255
	// bytes are long values: their COMMIT rows carry none, as in TiKV.
	ValueSize int
	// BatchSize is the rows of one transaction (default 256).
	BatchSize int
	// Rate is the target rows per second; 0 writes as fast as possible —
	// faster than most clients read: a stream whose queue passes
	// Config.StreamQueueLimit events loses its subscriptions with
	// `congested`, as TiKV's memory quota would.
	Rate int
	// Seed drives the values' contents (0 = from the clock).
	Seed int64
}

// BulkWriter commits transactions straight into the simulated cluster's
// ledger and CDC streams, without client-go or mocktikv: it is the fast
// source for finding how many rows per second a CDC client keeps up with.
//
// Each batch is one transaction of BatchSize Put rows: a start ts and a
// commit ts from the cluster's TSO (the clock ResolveOnce uses), prewritten
// and then committed each under the cluster's write mutex exactly as the
// 2PC hook records client-go's writes, so a subscriber sees the same rows
// (PREWRITE with the value, then COMMIT with a short value or none), the
// same initial scans, and resolved ts that never pass an open batch.
//
// The writer owns its key range (the whole key space of its layout and
// prefix or table) for the cluster's lifetime: client-go prewrites into it
// are refused, because mocktikv never sees the writer's data and could not
// report conflicts with it, and CheckLedger skips it. A BulkWriter is for
// one goroutine at a time; run several (with distinct prefixes or tables)
// for parallel load.
type BulkWriter struct {
	c      *Cluster
	cfg    BulkConfig
	start  []byte // raw range [start, end) the writer owns
	end    []byte
	space  *bulkSpace
	open   *BulkBatch // held open by Prewrite
	values []byte     // shared random pool the values are cut from
	next   []int64    // per shard: rows written to it
	row    int64      // rows written so far, which picks shard and value
}

// BulkStats are the totals of a Write.
type BulkStats struct {
	Rows, Batches int64
	// Bytes are the key and value bytes of the committed rows.
	Bytes   int64
	Elapsed time.Duration
}

const (
	bulkMaxRegions = 1 << 20
	bulkMaxValue   = 8 << 20 // TiKV's default raft entry limit
	shardBits      = 43      // KeysTiDBRow: handle = shard<<shardBits | seq
)

// NewBulkWriter claims the writer's key range and, with cfg.Split, splits
// the cluster there. The range must hold no keys yet and must not overlap
// another writer's.
func (c *Cluster) NewBulkWriter(cfg BulkConfig) (*BulkWriter, error) {
	if cfg.Regions == 0 {
		cfg.Regions = 1
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 256
	}
	if cfg.ValueSize == 0 {
		cfg.ValueSize = 100
	}
	if cfg.Run == 0 {
		cfg.Run = max(1, cfg.BatchSize/cfg.Regions)
	}
	if cfg.Seed == 0 {
		cfg.Seed = time.Now().UnixNano()
	}
	switch {
	case cfg.Regions < 0 || cfg.Regions > bulkMaxRegions:
		return nil, fmt.Errorf("bulk writer: regions %d not in [1, %d]", cfg.Regions, bulkMaxRegions)
	case cfg.BatchSize < 0 || cfg.ValueSize < 0 || cfg.Run < 0 || cfg.Rate < 0 || cfg.KeysPerShard < 0 || cfg.KeepVersions < 0:
		return nil, errors.New("bulk writer: negative batch size, value size, run, rate, keys per shard or versions kept")
	case cfg.ValueSize > bulkMaxValue:
		return nil, fmt.Errorf("bulk writer: value size %d past %d", cfg.ValueSize, bulkMaxValue)
	case cfg.KeysPerShard > 0 && cfg.KeysPerShard < int64(cfg.BatchSize):
		// A transaction writes each key once; fewer keys than rows could
		// put one key twice in a batch.
		return nil, fmt.Errorf("bulk writer: keys per shard %d below the batch size %d", cfg.KeysPerShard, cfg.BatchSize)
	}
	w := &BulkWriter{c: c, cfg: cfg, next: make([]int64, cfg.Regions)}
	switch cfg.Keys {
	case KeysPrefix:
		if cfg.Prefix == nil {
			cfg.Prefix = []byte("bulk/")
		}
		if len(cfg.Prefix) == 0 {
			return nil, errors.New("bulk writer: empty prefix")
		}
		w.start = clone(cfg.Prefix)
		w.end = prefixEnd(cfg.Prefix)
		if w.end == nil {
			return nil, fmt.Errorf("bulk writer: prefix %x has no end", cfg.Prefix)
		}
	case KeysTiDBRow:
		if cfg.TableID == 0 {
			cfg.TableID = 100
		}
		w.start = tidbRowPrefix(cfg.TableID)
		w.end = prefixEnd(w.start)
	default:
		return nil, fmt.Errorf("bulk writer: unknown key layout %d", cfg.Keys)
	}
	w.cfg = cfg
	rng := rand.New(rand.NewSource(cfg.Seed))
	// 64 KiB of offsets: rows differ, and the pool stays in the cache.
	w.values = make([]byte, 64<<10+cfg.ValueSize)
	rng.Read(w.values)

	w.space = &bulkSpace{start: w.start, end: w.end, shards: make([]bulkShard, cfg.Regions),
		keyOf: w.key, values: w.values, valueSize: cfg.ValueSize}
	c.mu.Lock()
	err := c.ledger.claim(w.space)
	c.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("bulk writer: %w", err)
	}
	if cfg.Split {
		for s := 0; s <= cfg.Regions; s++ {
			at := w.end
			switch {
			case s == 0:
				at = w.start
			case s < cfg.Regions:
				at = w.key(nil, s, 0)
			}
			if r := c.RegionByKey(at); r.Meta != nil && bytes.Equal(r.Meta.StartKey, EncodeKey(at)) {
				continue // already a boundary
			}
			if _, err := c.Split(at); err != nil {
				return nil, fmt.Errorf("bulk writer: %w", err)
			}
		}
	}
	return w, nil
}

// Range is the raw key range [start, end) the writer owns.
func (w *BulkWriter) Range() (start, end []byte) { return clone(w.start), clone(w.end) }

// key appends the raw key of a shard's seq-th key to b.
func (w *BulkWriter) key(b []byte, shard int, seq int64) []byte {
	switch w.cfg.Keys {
	case KeysTiDBRow:
		b = append(b, w.start...)
		return codec.EncodeInt(b, int64(shard)<<shardBits|seq)
	default:
		b = append(b, w.start...)
		b = binary.BigEndian.AppendUint32(b, uint32(shard))
		return binary.BigEndian.AppendUint64(b, uint64(seq))
	}
}

// Write writes n rows (n ≤ 0: until ctx ends) in transactions of BatchSize
// rows at the configured rate, and returns what it wrote. Ending by ctx is
// not an error.
func (w *BulkWriter) Write(ctx context.Context, n int64) (st BulkStats, err error) {
	began := time.Now()
	defer func() { st.Elapsed = time.Since(began) }()
	for n <= 0 || st.Rows < n {
		if ctx.Err() != nil {
			return st, nil
		}
		rows := w.cfg.BatchSize
		if n > 0 && int64(rows) > n-st.Rows {
			rows = int(n - st.Rows)
		}
		if w.cfg.Rate > 0 {
			due := began.Add(time.Duration(float64(st.Rows) / float64(w.cfg.Rate) * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-ctx.Done():
					t.Stop()
					return st, nil
				case <-t.C:
				}
			}
		}
		b, err := w.batch(ctx, rows)
		if err != nil {
			if ctx.Err() != nil {
				return st, nil
			}
			return st, fmt.Errorf("bulk writer: %w", err)
		}
		st.Rows += int64(rows)
		st.Batches++
		st.Bytes += b
	}
	return st, nil
}

// bulkLockTTL is the TTL of the writer's locks (TiDB's default for small
// transactions); nothing here resolves them.
const bulkLockTTL = 3000

// batch writes one transaction of n rows and returns its key and value
// bytes. If it cannot commit (its context ended) it rolls back, so no lock
// of the writer outlives a Write.
func (w *BulkWriter) batch(ctx context.Context, n int) (int64, error) {
	b, err := w.prewrite(ctx, n)
	if err != nil {
		return 0, err
	}
	if _, err := b.Commit(ctx); err != nil {
		b.Rollback()
		return 0, err
	}
	return b.size, nil
}

// BulkBatch is one transaction of a BulkWriter between its prewrite and its
// commit. Prewrite holds one open, like OpenTxn: until Commit or Rollback
// its locks hold the resolved ts of their regions at or below its start ts.
// It is not among OpenTxns: ResolveTxn speaks client-go's protocol, which
// never reaches a writer's keys.
type BulkBatch struct {
	w       *BulkWriter
	startTS uint64
	keys    []string // for the ledger's lock index
	kbs     [][]byte // the same keys, backing rows and locks
	shards  []int32
	seqs    []int64
	first   int64             // the writer's row number of the first row
	rows    []cdcpb.Event_Row // PREWRITE rows (which hold the values), then COMMIT rows
	ptrs    []*cdcpb.Event_Row
	size    int64
	done    bool
}

// Prewrite prewrites the writer's next BatchSize rows and holds them open.
// The writer writes nothing else until the batch is committed or rolled
// back.
func (w *BulkWriter) Prewrite(ctx context.Context) (*BulkBatch, error) {
	b, err := w.prewrite(ctx, w.cfg.BatchSize)
	if err != nil {
		return nil, fmt.Errorf("bulk writer: %w", err)
	}
	return b, nil
}

// StartTS is the batch's start ts.
func (b *BulkBatch) StartTS() uint64 { return b.startTS }

// prewrite records a batch's locks and routes its PREWRITE rows, as the
// hook does for client-go's prewrites, with the per-row work cut down: the
// keys of a batch share one buffer and one string; locks, versions of new
// keys and rows come from per-batch slabs; and keys, locks and versions
// live in the writer's bulkSpace, indexed by shard and sequence number
// rather than hashed and sorted. The keys are the writer's own, so no
// conflict can occur.
func (w *BulkWriter) prewrite(ctx context.Context, n int) (*BulkBatch, error) {
	if w.open != nil {
		return nil, errors.New("a batch is open")
	}
	// The ts comes first: nothing may fail once the writer's counters
	// move, or its space would miss keys it numbered.
	startTS, err := w.c.TSO(ctx)
	if err != nil {
		return nil, err
	}
	b := &BulkBatch{w: w, startTS: startTS, first: w.row, shards: make([]int32, n), seqs: make([]int64, n),
		keys: make([]string, n), kbs: make([][]byte, n)}
	keyBuf := make([]byte, 0, n*(len(w.start)+12))
	ends := make([]int, n)
	b.rows = make([]cdcpb.Event_Row, 2*n)
	for i := 0; i < n; i++ {
		shard := int((w.row / int64(w.cfg.Run)) % int64(w.cfg.Regions))
		seq := w.next[shard]
		w.next[shard]++
		if w.cfg.KeysPerShard > 0 {
			seq %= w.cfg.KeysPerShard
		}
		b.shards[i], b.seqs[i] = int32(shard), seq
		off := int(w.valueOff(w.row))
		b.rows[i].Value = w.values[off : off+w.cfg.ValueSize : off+w.cfg.ValueSize]
		w.row++
		keyBuf = w.key(keyBuf, shard, seq)
		ends[i] = len(keyBuf)
	}
	b.size = int64(len(keyBuf) + n*w.cfg.ValueSize)
	keyStr := string(keyBuf)
	for i, from := 0, 0; i < n; i++ {
		b.keys[i], b.kbs[i] = keyStr[from:ends[i]], keyBuf[from:ends[i]:ends[i]]
		from = ends[i]
	}
	b.ptrs = make([]*cdcpb.Event_Row, 2*n)
	for i := range b.ptrs {
		b.ptrs[i] = &b.rows[i]
	}
	sp := w.space
	w.c.mu.Lock()
	for i := 0; i < n; i++ {
		sp.key(b.shards[i], b.seqs[i]).open = int32(i + 1)
		r := &b.rows[i]
		r.Type, r.StartTs, r.Key, r.OpType = cdcpb.Event_PREWRITE, b.startTS, b.kbs[i], cdcpb.Event_Row_PUT
	}
	sp.open = b
	w.c.ledger.lockIdx = nil
	w.c.routeLocked(b.ptrs[:n])
	w.c.mu.Unlock()
	w.open = b
	return b, nil
}

// Commit commits the batch at a fresh ts from the cluster's TSO, taken
// after the prewrite was recorded (so above any resolved ts sent while the
// locks were held), and returns it.
func (b *BulkBatch) Commit(ctx context.Context) (uint64, error) {
	if b.done {
		return 0, errors.New("bulk writer: batch already finished")
	}
	commitTS, err := b.w.c.TSO(ctx)
	if err != nil {
		return 0, fmt.Errorf("bulk writer: commit: %w", err)
	}
	n := len(b.keys)
	fresh := make([]bulkVersion, n) // the versions of keys written for the first time
	c := b.w.c
	c.mu.Lock()
	for i := 0; i < n; i++ {
		bk := b.w.space.key(b.shards[i], b.seqs[i])
		bk.open = 0
		v := bulkVersion{startTS: b.startTS, commitTS: commitTS, value: b.w.valueOff(b.first + int64(i))}
		if len(bk.versions) == 0 {
			fresh[i] = v
			bk.versions = fresh[i : i+1 : i+1]
		} else {
			bk.versions = append(bk.versions, v) // commit ts only grow: one writer, one TSO
			if keep := b.w.cfg.KeepVersions; keep > 0 && len(bk.versions) > keep {
				bk.versions = bk.versions[len(bk.versions)-keep:]
			}
		}
		value := b.rows[i].Value
		r := &b.rows[n+i]
		r.Type, r.StartTs, r.CommitTs, r.Key, r.OpType = cdcpb.Event_COMMIT, b.startTS, commitTS, b.kbs[i], cdcpb.Event_Row_PUT
		if len(value) <= shortValueMaxLen { // as ledger.commit
			r.Value = value
		}
	}
	b.finishLocked()
	c.routeLocked(b.ptrs[n:])
	c.mu.Unlock()
	return commitTS, nil
}

// Rollback rolls the batch back. TiKV sends a ROLLBACK row for each
// rollback record.
func (b *BulkBatch) Rollback() {
	if b.done {
		return
	}
	rows := make([]*cdcpb.Event_Row, len(b.keys))
	c := b.w.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range b.keys {
		b.w.space.key(b.shards[i], b.seqs[i]).open = 0
		rows[i] = &cdcpb.Event_Row{Type: cdcpb.Event_ROLLBACK, StartTs: b.startTS, Key: b.kbs[i], OpType: cdcpb.Event_Row_UNKNOWN}
	}
	b.finishLocked()
	c.routeLocked(rows)
}

// valueOff is where a row's value starts in the pool: a stride through it,
// so rows differ.
func (w *BulkWriter) valueOff(row int64) uint32 {
	return uint32(uint64(row) * 7919 % uint64(len(w.values)-w.cfg.ValueSize+1))
}

// lock is the i-th lock of the open batch, made when a scan asks: the
// batch's rows hold all it says.
func (b *BulkBatch) lock(i int) *Lock {
	return &Lock{Key: b.kbs[i], Primary: b.kbs[0], StartTS: b.startTS, Op: kvrpcpb.Op_Put, Value: b.rows[i].Value, TTL: bulkLockTTL}
}

func (b *BulkBatch) finishLocked() {
	b.done = true
	b.w.space.open = nil
	b.w.c.ledger.lockIdx = nil
	b.w.open = nil
}

// tidbRowPrefix is tablecodec's record prefix t{tableID}_r.
func tidbRowPrefix(table int64) []byte {
	b := codec.EncodeInt([]byte{'t'}, table)
	return append(b, '_', 'r')
}

// prefixEnd is the smallest key greater than every key with prefix p, or
// nil when there is none (p is all 0xff).
func prefixEnd(p []byte) []byte {
	end := clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}
