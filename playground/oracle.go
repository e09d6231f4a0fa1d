package playground

import (
	"context"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent/logfile"
	"logbackup/tests/simcluster"
)

// oracle checks the running system against the cluster's ledger, all the
// time: every version committed at or below the published global
// checkpoint is in storage with its value; no checkpoint (global, store,
// storage — in etcd and in storage) ever moves backwards; fatal faults
// surface as LastErrors; faults heal. Violations are data, printed at the
// end.
type oracle struct {
	c       *simcluster.Cluster
	m       *meta.Client
	raw     *clientv3.Client
	st      storage.Storage // the S3 server itself: no faults, no front
	task    string
	startTS uint64
	event   func(format string, args ...any)

	mu          sync.Mutex
	last        map[string]uint64 // every checkpoint: highest value seen
	global      uint64
	violations  []string
	checked     int // versions verified against storage while running
	lost        int
	checkedTo   uint64
	have        map[string]uint64 // version → hash of its value, from storage
	seenMetas   map[string]bool
	walkErr     string
	faults      []*faultRecord // every fault injected, for recovery tracking
	epochs      []*fatalEpoch
	lastErrors  []lastErrorSeen
	errorPauses []*errorPause
	// nemesisResume is when the nemesis last began a resume of its own.
	nemesisResume time.Time
	isPaused      bool
	stop          context.CancelFunc
	done          sync.WaitGroup
}

type lastErrorSeen struct {
	at    time.Time
	store uint64
	code  string
}

// errorPause is a pause with severity ERROR, from its write to its
// removal.
type errorPause struct {
	at, resumed time.Time
	code        string
	byNemesis   bool // resumed by the nemesis's `br stream resume --clear-error`
}

func newOracle(c *simcluster.Cluster, m *meta.Client, st storage.Storage, task string, startTS uint64, event func(string, ...any)) *oracle {
	return &oracle{c: c, m: m, raw: m.Raw(), st: st, task: task, startTS: startTS, event: event,
		last: map[string]uint64{}, checkedTo: startTS, have: map[string]uint64{}, seenMetas: map[string]bool{}}
}

// start begins the watch and the periodic storage check.
func (o *oracle) start(every time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	o.stop = cancel
	o.done.Add(2)
	go func() { defer o.done.Done(); o.watch(ctx) }()
	go func() {
		defer o.done.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				o.checkStorage(ctx)
			}
		}
	}()
}

func (o *oracle) close() {
	if o.stop != nil {
		o.stop()
		o.done.Wait()
	}
}

func (o *oracle) violate(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	o.mu.Lock()
	o.violations = append(o.violations, msg)
	o.mu.Unlock()
	o.event("ORACLE VIOLATION: %s", msg)
}

// watch follows every key of the task in etcd from the revision of a first
// read, so no write is missed, across etcd restarts.
func (o *oracle) watch(ctx context.Context) {
	var rev int64
	for rev == 0 && ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := o.raw.Get(rctx, meta.Prefix+"/", clientv3.WithPrefix())
		cancel()
		if err != nil {
			sleepCtx(ctx, 200*time.Millisecond)
			continue
		}
		for _, kv := range resp.Kvs {
			o.observe(clientv3.EventTypePut, string(kv.Key), kv.Value, time.Now())
		}
		rev = resp.Header.Revision
	}
	for ctx.Err() == nil {
		// A watch ends when etcd loses its leader (it restarts); the next
		// one starts after the last event seen, so none is missed.
		wctx, cancel := context.WithCancel(ctx)
		wch := o.raw.Watch(clientv3.WithRequireLeader(wctx), meta.Prefix+"/", clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		for resp := range wch {
			if resp.Err() != nil {
				break
			}
			now := time.Now()
			for _, ev := range resp.Events {
				o.observe(ev.Type, string(ev.Kv.Key), ev.Kv.Value, now)
				rev = max(rev, ev.Kv.ModRevision)
			}
		}
		cancel()
		sleepCtx(ctx, 100*time.Millisecond)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// observe judges one etcd event.
func (o *oracle) observe(typ mvccpb.Event_EventType, key string, value []byte, at time.Time) {
	switch {
	case strings.HasPrefix(key, meta.CheckpointPrefix(o.task)):
		cp, err := meta.ParseCheckpointKey(o.task, key)
		if err != nil || (cp.Kind != meta.CheckpointGlobal && cp.Kind != meta.CheckpointStore) {
			return
		}
		name := "global checkpoint"
		if cp.Kind == meta.CheckpointStore {
			name = fmt.Sprintf("store %d checkpoint", cp.StoreID)
		}
		o.checkpoint(typ, name, key, value, at, cp.Kind == meta.CheckpointGlobal)
	case strings.HasPrefix(key, meta.StorageCheckpointPrefix(o.task)):
		name := "storage checkpoint (etcd) of store " + strings.TrimPrefix(key, meta.StorageCheckpointPrefix(o.task))
		o.checkpoint(typ, name, key, value, at, false)
	case strings.HasPrefix(key, meta.LastErrorPrefix(o.task)) && typ == clientv3.EventTypePut:
		e, err := meta.DecodeLastError(key, value)
		if err != nil {
			o.violate("undecodable LastError at %s: %v", key, err)
			return
		}
		var store uint64
		fmt.Sscan(strings.TrimPrefix(key, meta.LastErrorPrefix(o.task)), &store)
		o.lastError(store, e.ErrorCode, at)
	case key == meta.PauseKey(o.task):
		o.pause(typ, key, value, at)
	}
}

func (o *oracle) checkpoint(typ mvccpb.Event_EventType, name, key string, value []byte, at time.Time, global bool) {
	if typ == clientv3.EventTypeDelete {
		o.violate("%s was deleted", name)
		return
	}
	ts, err := meta.DecodeTS(key, value)
	if err != nil {
		o.violate("%s is undecodable: %v", name, err)
		return
	}
	o.advance(name, key, ts, at, global)
}

// advance records a checkpoint value; lower than one seen before is a
// violation.
func (o *oracle) advance(name, key string, ts uint64, at time.Time, global bool) {
	o.mu.Lock()
	prev, seen := o.last[key]
	if !seen || ts > prev {
		o.last[key] = ts
	}
	if global && ts > o.global {
		o.global = ts
		for _, f := range o.faults {
			if f.recovered.IsZero() && !f.healed.IsZero() && f.healTS <= ts {
				f.recovered = at
			}
		}
	}
	o.mu.Unlock()
	if seen && ts < prev {
		o.violate("%s moved backwards: %d → %d (%s)", name, prev, ts, gapOf(prev, ts))
	}
}

// gapOf says how far apart two timestamps are in physical time.
func gapOf(a, b uint64) time.Duration {
	return time.Duration(int64(a>>18)-int64(b>>18)) * time.Millisecond
}

// storedObject follows the storage checkpoints the agents write into the
// storage itself (v1/global_checkpoint/<store>.ts), read back from the S3
// server after each write.
func (o *oracle) storedObject(kind objectKind, store uint64, name string) {
	if kind != objGlobalCheckpoint {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := o.st.ReadFile(ctx, name)
	if err != nil {
		return // overwritten or unreadable now; the next write is checked
	}
	ts, err := logfile.DecodeGlobalCheckpoint(b)
	if err != nil {
		o.violate("%s is undecodable: %v", name, err)
		return
	}
	o.advance(fmt.Sprintf("storage checkpoint (%s)", name), "storage:"+name, ts, time.Now(), false)
}

// checkStorage reads the global checkpoint, then the meta files that
// appeared since the last check, and requires every version the cluster
// committed up to that checkpoint to be in storage with its value.
func (o *oracle) checkStorage(ctx context.Context) {
	g, ok, err := o.m.GlobalCheckpoint(ctx, o.task)
	if err != nil || !ok {
		return // etcd away: next time
	}
	if err := o.readNewMetas(ctx); err != nil {
		o.mu.Lock()
		o.walkErr = err.Error()
		o.mu.Unlock()
		return
	}
	o.mu.Lock()
	from := o.checkedTo
	o.mu.Unlock()
	if g <= from {
		return
	}
	want := o.c.Committed(from, g)
	o.mu.Lock()
	var lost []string
	for _, v := range want {
		h, ok := o.have[versionKey(v.Key, v.CommitTS)]
		if !ok || (!v.Delete && h != hashOf(v.Value)) {
			o.lost++
			if len(lost) < 3 {
				lost = append(lost, fmt.Sprintf("%q@%d (in storage: %v)", v.Key, v.CommitTS, ok))
			}
		}
	}
	o.checked += len(want)
	o.checkedTo = g
	o.mu.Unlock()
	if len(lost) > 0 {
		o.violate("versions committed at or below the global checkpoint %d are not in storage: %s", g, strings.Join(lost, ", "))
	}
}

func hashOf(b []byte) uint64 {
	h := fnv.New64a()
	h.Write(b)
	return h.Sum64()
}

// readNewMetas decodes the meta files not read before and what they list.
func (o *oracle) readNewMetas(ctx context.Context) error {
	o.mu.Lock()
	seen := make(map[string]bool, len(o.seenMetas))
	for k := range o.seenMetas {
		seen[k] = true
	}
	o.mu.Unlock()
	r := &newMetasOnly{Storage: o.st, seen: seen}
	got := map[string]uint64{}
	if _, err := logfile.Walk(ctx, r, func(d logfile.Decoded) error {
		got[versionKey(d.Key, d.CommitTS)] = hashOf(d.Value)
		return nil
	}); err != nil {
		return fmt.Errorf("read the storage: %w", err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for k, h := range got {
		o.have[k] = h
	}
	for _, n := range r.fresh {
		o.seenMetas[n] = true
	}
	o.walkErr = ""
	return nil
}

// newMetasOnly lists only the meta files not seen before, so a walk
// decodes just what is new. (Values of long keys can sit in an earlier
// flush's default CF; the workload writes only short values, and the final
// check walks everything.)
type newMetasOnly struct {
	storage.Storage
	seen  map[string]bool
	fresh []string
}

func (n *newMetasOnly) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if prefix != logfile.MetaDir {
		return n.Storage.List(ctx, prefix, fn)
	}
	return n.Storage.List(ctx, prefix, func(oi storage.ObjectInfo) error {
		if n.seen[oi.Name] {
			return nil
		}
		n.fresh = append(n.fresh, oi.Name)
		return fn(oi)
	})
}

// track adds a fault whose recovery the oracle measures once it is
// healed.
func (o *oracle) track(f *faultRecord) {
	o.mu.Lock()
	o.faults = append(o.faults, f)
	o.mu.Unlock()
}

// healed marks f healed at the cluster's current time: it has recovered
// once the global checkpoint passes that time.
func (o *oracle) healed(f *faultRecord) {
	ts, err := o.c.TSO(context.Background())
	o.mu.Lock()
	defer o.mu.Unlock()
	f.healed = time.Now()
	if err != nil {
		f.healTS = ^uint64(0) >> 1
		return
	}
	f.healTS = ts
	if o.global >= ts {
		f.recovered = f.healed
	}
}

// globalCheckpoint is the highest global checkpoint seen.
func (o *oracle) globalCheckpoint() uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.global
}

// progress is a one-line view for the progress output.
func (o *oracle) progress() (checked, lost int, global uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.checked, o.lost, o.global
}
