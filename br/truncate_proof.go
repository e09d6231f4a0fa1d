package br

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent/logfile"
)

// TruncateFlushSlack is how far apart two records of a task's progress
// may be and still be explained by one flush: stores publish the global
// checkpoint each after its own flush (every 3 minutes by default, TiKV's
// and the agent's), so two stores' copies can lag each other by a flush
// interval and the time to publish it. Stores that flush less often get
// more (flushSlack).
const TruncateFlushSlack = 5 * time.Minute

// checkpointProof is what proveCheckpoints read and found sound.
type checkpointProof struct {
	// metas holds every meta file's body read for the proof, by path, so
	// planning does not read them again.
	metas map[string]*brpb.Metadata
	// etcdAsked says whether etcd answered for the storage's tasks.
	etcdAsked bool
}

// etcdRecord is one checkpoint etcd holds for a task writing to the storage.
type etcdRecord struct {
	key  string
	kind string // "central_global", "store checkpoint", "storage checkpoint"
	ts   uint64
}

// etcdView is what etcd says of the tasks writing to one storage.
type etcdView struct {
	tasks   []string
	records []etcdRecord
	// global is the lowest of the tasks' global checkpoints (central_global,
	// else the highest storage checkpoint, floored at the task start);
	// hasGlobal is false when no task writes to the storage.
	global    uint64
	hasGlobal bool
	taskStart uint64 // the highest start of those tasks
}

// proveCheckpoints runs verify's checks over everything truncate reads to
// decide how far it may go, and refuses (naming the object) when one is
// impossible or when they disagree by more than one flush explains. The
// sources: the root backupmeta and truncate safepoint, every store's
// v1/global_checkpoint/<store>.ts, every meta file's name and body, and,
// with env.Meta, etcd's storage, store and central_global checkpoints of the
// tasks writing to st. Read in that order (the .ts files, then etcd, then
// the meta files), each is published after the next one's data is durable,
// so a running task cannot make a sound storage look broken:
// a .ts is written after the central_global it copies, and central_global
// after the meta files that cover it. "The future" is PD's TSO when PD is
// known, else this machine's clock, plus DefaultMaxClockSkew.
func proveCheckpoints(ctx context.Context, env *Env, st storage.Storage, opts TruncateOptions, w io.Writer) (*checkpointProof, error) {
	now := clusterNow(ctx, env, w)
	loc := env.loc()
	v := newVerifier(st, VerifyConfig{Now: func() time.Time { return now.In(loc) }})
	if err := v.readRoot(ctx); err != nil {
		return nil, err
	}
	globals, err := v.readGlobalCheckpoints(ctx)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", logfile.GlobalCheckpointDir, err)
	}
	proof := &checkpointProof{}
	var ev *etcdView
	if env.Meta != nil {
		ev, err = readEtcdView(ctx, env, st, v)
		switch {
		case err != nil && !opts.TaskStopped:
			return nil, userError("check that etcd answers at -u/--pd and run truncate again; if you know no task writes to this storage any more, "+
				"rerun with --task-stopped to check --until against the storage alone", err,
				"etcd did not answer, so the task's checkpoint cannot be checked; nothing was changed")
		case err != nil:
			fmt.Fprintf(w, "Note: etcd did not answer (%s); --task-stopped: checking against the storage alone.\n", storage.Redact(err.Error()))
		default:
			proof.etcdAsked = true
			if ev.hasGlobal {
				global := ev.global
				v.cfg.Task = strings.Join(ev.tasks, ",")
				v.cfg.EtcdGlobal = func(context.Context) (uint64, error) { return global, nil }
			}
		}
	}
	metas, err := readAllMetas(ctx, st, v, w)
	if err != nil {
		return nil, err
	}
	proof.metas = map[string]*brpb.Metadata{}
	for _, mf := range metas {
		if mf.Metadata != nil {
			proof.metas[mf.Path] = mf.Metadata
		}
	}
	v.res = &logfile.AuditResult{Metas: metas, Listed: map[string]bool{}}
	v.summariseStores()
	v.checkOrigin()
	if err := v.checkGlobalCheckpoints(ctx, globals); err != nil {
		return nil, err
	}
	if ev != nil && proof.etcdAsked {
		v.checkEtcd(ev)
	}
	v.checkAgreement(globals, ev)
	if len(v.rep.Problems) > 0 {
		return nil, refuseUnproven(v.rep.Problems, st)
	}
	return proof, nil
}

// refuseUnproven is the refusal of a storage whose checkpoints cannot be
// trusted; every problem is listed, the first in the message.
func refuseUnproven(problems []string, st storage.Storage) error {
	more := ""
	if len(problems) > 1 {
		more = fmt.Sprintf(" (and %d more: %s)", len(problems)-1, strings.Join(problems[1:], "; "))
	}
	return userError(fmt.Sprintf("nothing was changed. Run `br stream verify -s %s` for the full report; repair or remove the object named "+
		"(a store rewrites its global checkpoint at its next flush), then truncate again", st), nil,
		"refusing to truncate: the storage's checkpoint cannot be proven: %s%s", problems[0], more)
}

// clusterNow is PD's time when PD is configured and answers, else this
// machine's clock (said on w).
func clusterNow(ctx context.Context, env *Env, w io.Writer) time.Time {
	if env.PD == nil && env.OpenPD == nil {
		return env.now()
	}
	ts, err := env.tso(ctx)
	if err != nil {
		fmt.Fprintf(w, "Note: PD did not give a timestamp (%s); judging \"in the future\" by this machine's clock.\n", storage.Redact(err.Error()))
		return env.now()
	}
	return PhysicalTime(ts)
}

// readEtcdView reads the checkpoints of every task writing to st: the
// storage checkpoints, the store checkpoints, then central_global (each
// storage checkpoint copies a central_global published before it). A value
// etcd holds but that cannot be a checkpoint is a problem of v naming its
// key; err is etcd not answering.
func readEtcdView(ctx context.Context, env *Env, st storage.Storage, v *verifier) (*etcdView, error) {
	tasks, _, err := env.Meta.ListTasks(ctx)
	if err != nil {
		return nil, fmt.Errorf("list tasks: %w", err)
	}
	ev := &etcdView{}
	// broken records a value that cannot be a checkpoint; other errors are
	// etcd's.
	broken := func(what string, err error) error {
		var me *meta.MalformedError
		if errors.As(err, &me) {
			v.fail("etcd "+me.Key, "%s is no possible checkpoint: %v", what, me.Err)
			return nil
		}
		return err
	}
	for _, t := range tasks {
		if !sameStorage(t.Info.GetStorage(), st.String()) {
			continue
		}
		name, start := t.Info.Name, t.Info.StartTs
		ev.tasks = append(ev.tasks, name)
		ev.taskStart = max(ev.taskStart, start)
		global := start
		scs, err := env.Meta.StorageCheckpoints(ctx, name)
		if err != nil {
			if err := broken("a storage checkpoint", err); err != nil {
				return nil, fmt.Errorf("read the storage checkpoints of %q: %w", name, err)
			}
		}
		for store, ts := range scs {
			ev.records = append(ev.records, etcdRecord{key: meta.StorageCheckpointKey(name, store), kind: "storage checkpoint", ts: ts})
		}
		cps, err := env.Meta.CheckpointsExceptRegions(ctx, name)
		if err != nil {
			if err := broken("a checkpoint", err); err != nil {
				return nil, fmt.Errorf("read the checkpoints of %q: %w", name, err)
			}
		}
		for _, cp := range cps {
			if cp.Kind == meta.CheckpointStore {
				ev.records = append(ev.records, etcdRecord{key: meta.StoreCheckpointKey(name, cp.StoreID), kind: "store checkpoint", ts: cp.TS})
			}
		}
		g, ok, err := env.Meta.GlobalCheckpoint(ctx, name)
		switch {
		case err != nil:
			if err := broken("central_global", err); err != nil {
				return nil, fmt.Errorf("read the global checkpoint of %q: %w", name, err)
			}
		case ok:
			global = max(global, g)
			ev.records = append(ev.records, etcdRecord{key: meta.GlobalCheckpointKey(name), kind: "central_global", ts: g})
		default:
			for _, ts := range scs {
				global = max(global, ts)
			}
		}
		if !ev.hasGlobal || global < ev.global {
			ev.global, ev.hasGlobal = global, true
		}
	}
	sort.Slice(ev.records, func(i, j int) bool { return ev.records[i].key < ev.records[j].key })
	return ev, nil
}

// readAllMetas lists and reads every meta file (bodies only, not the data
// they list). A name that does not parse or a body that does not decode is
// a problem naming it.
func readAllMetas(ctx context.Context, st storage.Storage, v *verifier, w io.Writer) ([]*logfile.MetaFile, error) {
	var metas []*logfile.MetaFile
	err := st.List(ctx, logfile.MetaDir, func(o storage.ObjectInfo) error {
		if !strings.HasSuffix(o.Name, ".meta") {
			return nil
		}
		name, err := logfile.ParseMetaName(o.Name)
		if err != nil {
			v.fail(o.Name, "unreadable meta file name: %v", err)
			return nil
		}
		metas = append(metas, &logfile.MetaFile{Path: o.Name, Name: name})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", logfile.MetaDir, err)
	}
	var mu sync.Mutex
	p := newProgress(w, "Checking meta files", len(metas))
	err = forEach(ctx, len(metas), func(ctx context.Context, i int) error {
		defer p.add(1)
		mf := metas[i]
		raw, err := st.ReadFile(ctx, mf.Path)
		switch {
		case errors.Is(err, storage.ErrNotExist):
			return nil // removed since the listing (a truncate, BR's): nothing to judge
		case err != nil:
			return fmt.Errorf("read %s: %w", mf.Path, err)
		}
		md, err := logfile.DecodeMetadata(raw)
		if err != nil {
			mu.Lock()
			v.fail(mf.Path, "cannot be decoded: %v", err)
			mu.Unlock()
			return nil
		}
		mf.Metadata = md
		return nil
	})
	if err != nil {
		return nil, err
	}
	return metas, nil
}

// coverage is the highest ts the meta files in storage can vouch for:
// the newest flush, or what a task start or an earlier truncate already
// vouches for.
func (v *verifier) coverage(taskStart uint64) uint64 {
	c := max(v.rep.StartTS, v.rep.TruncatedUntil, taskStart)
	for _, mf := range v.res.Metas {
		c = max(c, mf.Name.FlushTS)
	}
	return c
}

// checkEtcd judges etcd's checkpoints as verify judges the storage's: none
// in the future, none beyond the meta files in storage (an agent publishes
// only after its meta file is durable, and etcd was read before the meta
// files were listed), no storage checkpoint above the central_global it
// copies.
func (v *verifier) checkEtcd(ev *etcdView) {
	loc := v.cfg.Now().Location()
	for _, r := range ev.records {
		name := "etcd " + r.key
		switch {
		case r.ts > v.latest:
			v.fail(name, "%s %s is in the future (the clock says %s)", r.kind, FormatTS(r.ts, loc), FormatTS(ComposeTS(v.cfg.Now()), loc))
		case r.ts > v.coverage(ev.taskStart):
			// Judged against every store's flushes, not its own: a store's
			// checkpoints are floored at central_global, which other
			// stores' later flushes may have moved past its last one.
			v.fail(name, "%s %s is beyond every flush in storage (the newest at %s): the meta files that cover it are missing, or etcd belongs to another storage",
				r.kind, FormatTS(r.ts, loc), FormatTS(v.coverage(0), loc))
		case r.kind == "storage checkpoint" && ev.hasGlobal && r.ts > ev.global:
			v.fail(name, "storage checkpoint %s is beyond the task's global checkpoint %s, which it copies", FormatTS(r.ts, loc), FormatTS(ev.global, loc))
		}
	}
}

// checkAgreement: truncate goes as far as the highest global checkpoint
// a store wrote (BR's log-max-ts), so that value must not stand alone.
// Each .ts, and etcd's central_global, may lead its peers (the other
// records of the same global checkpoint: the .ts of stores still flushing
// at that point, etcd's central_global and storage checkpoints) by no more
// than one flush explains. A value alone far ahead of the rest is damaged
// or foreign, however plausible. A store that stopped flushing before it
// (scaled in) keeps its old .ts for good: no peer. With no peer at all (one
// store, no etcd) the meta files' resolved ts stand in.
func (v *verifier) checkAgreement(globals []globalRead, ev *etcdView) {
	type source struct {
		name  string
		ts    uint64
		store uint64 // the .ts's store; 0 for etcd's records
		led   bool   // a value truncate relies on: judged against its peers
	}
	var all []source
	for _, g := range globals {
		all = append(all, source{name: g.name, ts: g.ts, store: g.store, led: true})
	}
	if ev != nil {
		for _, r := range ev.records {
			if r.kind != "store checkpoint" { // a store's own progress, not the global one
				all = append(all, source{name: "etcd " + r.key, ts: r.ts, led: r.kind == "central_global"})
			}
		}
	}
	lastFlush := map[uint64]uint64{}
	var maxResolved uint64
	for _, mf := range v.res.Metas {
		s := storeOf(mf)
		lastFlush[s] = max(lastFlush[s], mf.Name.FlushTS)
		if mf.Metadata != nil {
			maxResolved = max(maxResolved, mf.Metadata.ResolvedTs)
		}
	}
	oneFlush := flushSlack(v.res.Metas)
	slack := uint64(oneFlush.Milliseconds()) << 18 // a TSO's physical part: milliseconds above 18 logical bits
	loc := v.cfg.Now().Location()
	for i, s := range all {
		if !s.led || s.ts > v.latest {
			continue // the future is already a problem of its own
		}
		var peer uint64
		var nearest string
		for j, o := range all {
			if j == i || o.ts > v.latest || o.store != 0 && lastFlush[o.store] < s.ts {
				continue
			}
			if nearest == "" || o.ts >= peer {
				peer, nearest = o.ts, o.name
			}
		}
		if nearest == "" && maxResolved > 0 {
			peer, nearest = maxResolved, "the meta files' highest resolved ts"
		}
		if nearest == "" || s.ts <= peer+slack {
			continue
		}
		v.fail(s.name, "global checkpoint %s is %s ahead of the other records of it (the nearest, %s, says %s): more than one flush (%s) explains, so one of them is damaged",
			FormatTS(s.ts, loc), PhysicalTime(s.ts).Sub(PhysicalTime(peer)).Round(time.Second), nearest, FormatTS(peer, loc), oneFlush)
	}
}

// checkAfterTruncate proves, once the deletions are done, what the summary
// claims: the meta files left still verify (every name, each store's
// chain back to the safepoint, the global checkpoints covered) and the
// storage restores from at least until. It returns where it restores
// from. The data objects are not read: their meta files were not touched
// but for the groups removed (br stream verify reads them all).
func checkAfterTruncate(ctx context.Context, env *Env, st storage.Storage, until uint64) (uint64, error) {
	loc := env.loc()
	v := newVerifier(st, VerifyConfig{Now: func() time.Time { return env.now().In(loc) }})
	if err := v.readRoot(ctx); err != nil {
		return 0, err
	}
	globals, err := v.readGlobalCheckpoints(ctx)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", logfile.GlobalCheckpointDir, err)
	}
	metas, err := readAllMetas(ctx, st, v, io.Discard)
	if err != nil {
		return 0, err
	}
	v.res = &logfile.AuditResult{Metas: metas, Listed: map[string]bool{}}
	v.summariseStores()
	v.checkOrigin()
	v.checkChains()
	if err := v.checkGlobalCheckpoints(ctx, globals); err != nil {
		return 0, err
	}
	from := v.restorableFrom()
	if from < until {
		v.fail(TruncateSafepointFile, "the storage restores from %s, before --until %s", FormatTS(from, loc), FormatTS(until, loc))
	}
	if len(v.rep.Problems) > 0 {
		return from, userError(fmt.Sprintf("nothing a restore from --until needs was removed, but check the storage: run `br stream verify -s %s`", st), nil,
			"truncated, but the storage does not verify: %s", strings.Join(v.rep.Problems, "; "))
	}
	return from, nil
}

// flushSlack is how far one flush lets two records of the global
// checkpoint drift apart: TruncateFlushSlack, or, where the stores flush
// less often (a longer flush interval), one and a half times the longest
// of their median gaps between flushes.
func flushSlack(metas []*logfile.MetaFile) time.Duration {
	flushes := map[uint64][]uint64{}
	for _, mf := range metas {
		if mf.Name.FlushTS != 0 {
			s := storeOf(mf)
			flushes[s] = append(flushes[s], mf.Name.FlushTS)
		}
	}
	slack := TruncateFlushSlack
	for _, ts := range flushes {
		if len(ts) < 2 {
			continue
		}
		sort.Slice(ts, func(i, j int) bool { return ts[i] < ts[j] })
		gaps := make([]time.Duration, 0, len(ts)-1)
		for i := 1; i < len(ts); i++ {
			gaps = append(gaps, PhysicalTime(ts[i]).Sub(PhysicalTime(ts[i-1])))
		}
		sort.Slice(gaps, func(i, j int) bool { return gaps[i] < gaps[j] })
		slack = max(slack, gaps[len(gaps)/2]*3/2)
	}
	return slack
}
