package br

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/storage"
	"logbackup/streamagent/logfile"
)

// readRoot reads the root backupmeta (start ts, cluster id) and the
// truncate safepoint.
func (v *verifier) readRoot(ctx context.Context) error {
	raw, err := v.st.ReadFile(ctx, BackupMetaFile)
	switch {
	case errors.Is(err, storage.ErrNotExist):
		v.fail(BackupMetaFile, "missing: this is not the root of a log backup (br stream start writes it)")
	case err != nil:
		return fmt.Errorf("read %s: %w", BackupMetaFile, err)
	default:
		var bm brpb.BackupMeta
		switch err := bm.Unmarshal(raw); {
		case err != nil:
			v.fail(BackupMetaFile, "cannot be decoded: %v", err)
		case bm.EndVersion > 0:
			v.fail(BackupMetaFile, "belongs to a full (snapshot) backup, not a log backup")
		case bm.StartVersion == 0:
			v.fail(BackupMetaFile, "has no start ts")
		case bm.StartVersion > v.latest:
			v.fail(BackupMetaFile, "start ts %d is in the future", bm.StartVersion)
		default:
			v.rep.StartTS, v.rep.ClusterID = bm.StartVersion, bm.ClusterId
		}
	}
	switch rec, err := logfile.ReadOwner(ctx, v.st); {
	case errors.Is(err, storage.ErrNotExist):
	case errors.Is(err, logfile.ErrOwnerCorrupt):
		v.fail(logfile.OwnerFile, "%v", err)
	case err != nil:
		return err
	default:
		v.owner = rec
		if rec.ClusterID != 0 && v.rep.ClusterID != 0 && rec.ClusterID != v.rep.ClusterID {
			v.warn(logfile.OwnerFile, "names cluster %d, the root %s cluster %d: a takeover was interrupted; run br stream start --take-over again",
				rec.ClusterID, BackupMetaFile, v.rep.ClusterID)
		}
	}
	switch ok, err := v.st.Exists(ctx, LockFile); {
	case err != nil:
		return fmt.Errorf("check %s: %w", LockFile, err)
	case !ok:
		v.warn(LockFile, "missing: br stream start writes it to mark the storage as a log backup's")
	}
	sp, err := v.st.ReadFile(ctx, TruncateSafepointFile)
	switch {
	case errors.Is(err, storage.ErrNotExist):
	case err != nil:
		return fmt.Errorf("read %s: %w", TruncateSafepointFile, err)
	default:
		ts, perr := strconv.ParseUint(strings.TrimSpace(string(sp)), 10, 64)
		if perr != nil {
			v.fail(TruncateSafepointFile, "cannot be decoded: %v", perr)
		} else {
			v.rep.TruncatedUntil = ts
		}
	}
	return nil
}

// storeOf is the store a meta file belongs to: its name's, or for a
// legacy name its content's.
func storeOf(mf *logfile.MetaFile) uint64 {
	if mf.Name.Legacy && mf.Metadata != nil {
		return uint64(mf.Metadata.StoreId)
	}
	return mf.Name.StoreID
}

func (v *verifier) store(id uint64) *StoreFlushes {
	s := v.stores[id]
	if s == nil {
		s = &StoreFlushes{StoreID: id}
		v.stores[id] = s
	}
	return s
}

func (v *verifier) summariseStores() {
	v.stores = map[uint64]*StoreFlushes{}
	for _, mf := range v.res.Metas {
		s := v.store(storeOf(mf))
		s.MetaFiles++
		s.LastFlushTS = max(s.LastFlushTS, mf.Name.FlushTS)
		if mf.Metadata != nil {
			s.MaxResolvedTS = max(s.MaxResolvedTS, mf.Metadata.ResolvedTs)
		}
		if mf.Name.Linked {
			s.Linked++
		}
	}
}

// checkOrigin checks that every meta file comes from this storage's
// cluster and task: the root backupmeta's cluster id and start ts against
// the lineage tags, flush ts against the task start and the clock.
func (v *verifier) checkOrigin() {
	rep := v.rep
	clusters := map[uint64][]string{}
	history := map[logfile.PreviousOwner][]string{}
	var unknownCluster []string
	for _, mf := range v.res.Metas {
		n := mf.Name
		if !n.Legacy {
			if n.FlushTS > v.latest {
				v.fail(mf.Path, "flush ts %d is in the future (after %s)", n.FlushTS, FormatTS(v.latest, v.cfg.Now().Location()))
			}
			if rep.StartTS > 0 && n.FlushTS < rep.StartTS {
				v.fail(mf.Path, "flushed at %d, before this storage's task started (%d): another task's file", n.FlushTS, rep.StartTS)
			}
		}
		if !n.Linked {
			continue
		}
		if rep.StartTS > 0 && n.TaskStartTS < rep.StartTS {
			v.fail(mf.Path, "written by a task that started at %d, before this storage's task (%d): another task's file", n.TaskStartTS, rep.StartTS)
		}
		if n.ClusterID == 0 {
			unknownCluster = append(unknownCluster, mf.Path)
			continue
		}
		if p, ok := v.previousOwner(n); ok {
			history[p] = append(history[p], mf.Path)
			continue
		}
		clusters[n.ClusterID] = append(clusters[n.ClusterID], mf.Path)
	}
	for _, p := range v.ownerHistory() {
		paths := history[p]
		if len(paths) == 0 {
			continue
		}
		v.warn(paths[0], "%d meta files (this one first) are cluster %d's, flushed before the storage was taken over by cluster %d at %s: the previous owner's history, not a second writer",
			len(paths), p.ClusterID, p.TakenOverBy, FormatTS(p.TakenOverTS, v.cfg.Now().Location()))
	}
	// The first task on this storage wrote the root backupmeta; a task
	// started again on it (br's restart path) starts later. So unless the
	// truncate safepoint removed the first task's files, or another writer
	// (TiKV, an older agent) wrote some, the earliest task start among the
	// meta files is the root's.
	var earliest uint64
	var earliestPath string
	allLinked := true
	for _, mf := range v.res.Metas {
		allLinked = allLinked && mf.Name.Linked
		if mf.Name.Linked && (earliest == 0 || mf.Name.TaskStartTS < earliest) {
			earliest, earliestPath = mf.Name.TaskStartTS, mf.Path
		}
	}
	if allLinked && earliest != 0 && rep.StartTS != 0 && rep.TruncatedUntil == 0 && earliest != rep.StartTS {
		v.fail(BackupMetaFile, "start ts %d, but the earliest task of the meta files started at %d (%s)", rep.StartTS, earliest, earliestPath)
	}
	if len(unknownCluster) > 0 {
		v.warn(unknownCluster[0], "%d meta files (this one first) do not know their cluster id: another cluster's files among them cannot be told apart", len(unknownCluster))
	}
	want := rep.ClusterID
	if want != 0 && len(clusters) > 0 && clusters[want] == nil {
		named := make([]string, 0, len(clusters))
		for c := range clusters {
			named = append(named, strconv.FormatUint(c, 10))
		}
		sort.Strings(named)
		v.fail(BackupMetaFile, "cluster id %d, but no meta file is of that cluster (they name %s)", want, strings.Join(named, ", "))
		want = 0 // then judge the meta files among themselves
	}
	if want == 0 {
		// No root cluster id (a storage started without PD's id): the
		// cluster most meta files name is taken as this storage's.
		for c, paths := range clusters {
			if want == 0 || len(paths) > len(clusters[want]) || len(paths) == len(clusters[want]) && c < want {
				want = c
			}
		}
		if want != 0 && rep.ClusterID == 0 {
			v.warn(BackupMetaFile, "has no cluster id; the meta files name cluster %d", want)
		}
	}
	for c, paths := range clusters {
		if c == want {
			continue
		}
		for _, p := range paths {
			v.fail(p, "written by cluster %d, but this storage belongs to cluster %d: two clusters write to one storage", c, want)
		}
	}
}

// checkChains follows each store's flushes back through their lineage
// tags: every flush names the store's previous durable flush in the task
// (tag b), which must be in storage unless the truncate safepoint allows
// its removal. So a deleted meta file is found by the flush after it.
func (v *verifier) checkChains() {
	type flushID struct{ store, flushTS uint64 }
	byFlush := map[flushID]*logfile.MetaFile{}
	for _, mf := range v.res.Metas {
		if !mf.Name.Legacy {
			byFlush[flushID{mf.Name.StoreID, mf.Name.FlushTS}] = mf
		}
	}
	followers := map[flushID]int{}
	unlinked := map[uint64][]string{}
	loc := v.cfg.Now().Location()
	for _, mf := range v.res.Metas {
		n := mf.Name
		if !n.Linked {
			unlinked[storeOf(mf)] = append(unlinked[storeOf(mf)], mf.Path)
			continue
		}
		if n.PrevFlushTS == 0 {
			continue // the store's first flush of the task
		}
		id := flushID{n.StoreID, n.PrevFlushTS}
		followers[id]++
		prev, ok := byFlush[id]
		switch {
		case !ok && v.rep.TruncatedUntil > 0 && n.PrevFlushTS < v.rep.TruncatedUntil:
			// Wholly below the truncate safepoint: br log truncate may
			// have removed it.
		case !ok:
			v.fail(fmt.Sprintf("%s%016X%016X-*.meta", logfile.MetaDir, n.PrevFlushTS, n.StoreID),
				"missing: store %d's flush of %s (%s) follows it, so the changes it listed are lost to restore", n.StoreID, FormatTS(n.FlushTS, loc), mf.Path)
		case prev.Name.Linked && (prev.Name.TaskStartTS != n.TaskStartTS || prev.Name.ClusterID != n.ClusterID):
			v.fail(mf.Path, "follows %s, which belongs to another task or cluster", prev.Path)
		}
	}
	for id, n := range followers {
		if n > 1 {
			v.store(id.store).Forks += n - 1
		}
	}
	for store, paths := range unlinked {
		v.warn(paths[0], "store %d: %d meta files (this one first) carry no lineage tags (written by TiKV or an older agent): a missing flush among them cannot be detected", store, len(paths))
	}
}

// globalRead is one store's global checkpoint object as read.
type globalRead struct {
	name  string
	store uint64
	ts    uint64
}

// readGlobalCheckpoints reads every v1/global_checkpoint/<store>.ts. It
// runs before the meta files are listed: a store writes its global
// checkpoint only after the meta files covering it, so what is read first
// is covered by what is listed next, even while agents keep flushing (read
// the other way round, a checkpoint written during the listing would look
// uncovered).
func (v *verifier) readGlobalCheckpoints(ctx context.Context) ([]globalRead, error) {
	var out []globalRead
	err := v.st.List(ctx, logfile.GlobalCheckpointDir, func(o storage.ObjectInfo) error {
		store, err := logfile.ParseGlobalCheckpointName(o.Name)
		if err != nil {
			if strings.HasSuffix(o.Name, ".ts") {
				v.fail(o.Name, "not a store's global checkpoint, yet restore reads every .ts here: %v", err)
			} else {
				v.warn(o.Name, "not a global checkpoint; restore ignores it")
			}
			return nil
		}
		raw, err := v.st.ReadFile(ctx, o.Name)
		switch {
		case errors.Is(err, storage.ErrNotExist):
			v.fail(o.Name, "listed, then gone: deleted while verifying?")
			return nil
		case err != nil:
			return fmt.Errorf("read %s: %w", o.Name, err)
		}
		ts, err := logfile.DecodeGlobalCheckpoint(raw)
		if err != nil {
			v.fail(o.Name, "%v", err)
			return nil
		}
		out = append(out, globalRead{name: o.Name, store: store, ts: ts})
		return nil
	})
	return out, err
}

// checkGlobalCheckpoints judges the global checkpoints read first: each
// must be no earlier than the task start, not in the future, and not
// beyond the newest flush in storage (a store publishes its global
// checkpoint only after meta files cover it).
func (v *verifier) checkGlobalCheckpoints(ctx context.Context, globals []globalRead) error {
	var maxFlush, maxResolved uint64
	linked := false
	for _, mf := range v.res.Metas {
		maxFlush = max(maxFlush, mf.Name.FlushTS)
		linked = linked || mf.Name.Linked
		if mf.Metadata != nil {
			maxResolved = max(maxResolved, mf.Metadata.ResolvedTs)
		}
	}
	loc := v.cfg.Now().Location()
	read := map[string]uint64{}
	for _, gr := range globals {
		name, store, ts := gr.name, gr.store, gr.ts
		read[name] = ts
		s := v.store(store)
		s.GlobalCheckpoint = ts
		v.rep.GlobalCheckpoint = max(v.rep.GlobalCheckpoint, ts)
		switch {
		case ts > v.latest:
			v.fail(name, "global checkpoint %s is in the future (the clock says %s)", FormatTS(ts, loc), FormatTS(ComposeTS(v.cfg.Now()), loc))
		case v.rep.StartTS > 0 && ts < v.rep.StartTS:
			v.fail(name, "global checkpoint %s is before the task start %s", FormatTS(ts, loc), FormatTS(v.rep.StartTS, loc))
		case ts > max(maxFlush, v.rep.StartTS):
			v.fail(name, "global checkpoint %s is beyond every flush in storage (the newest at %s): the meta files that cover it are missing",
				FormatTS(ts, loc), FormatTS(maxFlush, loc))
		case ts > max(maxResolved, v.rep.StartTS):
			// A flush's resolved ts is the minimum of its regions', so the
			// global checkpoint can pass them all when stores share ranges
			// after leader moves; rare, and not provable from storage.
			v.warn(name, "global checkpoint %s is beyond every flush's resolved ts (the highest %s): storage alone cannot show the meta files cover it",
				FormatTS(ts, loc), FormatTS(maxResolved, loc))
		}
		if s.MetaFiles == 0 && (v.rep.TruncatedUntil == 0 || ts > v.rep.TruncatedUntil) {
			// Below the truncate safepoint a store's meta files may all be
			// gone: a store scaled in keeps its last .ts for good, and a
			// truncate past its last flush removes every one of its files.
			if linked {
				v.fail(name, "store %d published a global checkpoint but none of its meta files is in storage", store)
			} else {
				v.warn(name, "store %d published a global checkpoint but has no meta file", store)
			}
		}
	}
	if v.cfg.EtcdGlobal == nil || len(read) == 0 {
		return nil
	}
	etcd, err := v.cfg.EtcdGlobal(ctx)
	if err != nil {
		return err
	}
	names := make([]string, 0, len(read))
	for name := range read {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if ts := read[name]; ts > etcd {
			v.fail(name, "global checkpoint %s is beyond task %q's in etcd (%s), which only grows", FormatTS(ts, loc), v.cfg.Task, FormatTS(etcd, loc))
		}
	}
	return nil
}

// checkUnlisted warns of objects under v1/ that no meta file lists: a
// flush interrupted between its data and its meta file leaves them.
// Restore never reads them, so they are no loss.
func (v *verifier) checkUnlisted(ctx context.Context) error {
	return v.st.List(ctx, "v1/", func(o storage.ObjectInfo) error {
		if prefixed(o.Name, logfile.MetaDir, logfile.GlobalCheckpointDir) || v.res.Listed[o.Name] {
			return nil
		}
		if _, err := logfile.ParseDataName(o.Name); err == nil {
			v.warn(o.Name, "no meta file lists it (left by an interrupted flush?): restore ignores it")
		} else {
			v.warn(o.Name, "not a log backup object: restore ignores it")
		}
		return nil
	})
}

// checkRecorded proves each store's newest recorded flush is in storage:
// the chain check proves everything before it. Without the records, what
// no later flush names cannot be told from a flush never made.
func (v *verifier) checkRecorded() {
	if v.cfg.Recorded == nil {
		for _, s := range v.stores {
			if s.Linked > 0 {
				v.warn(logfile.MetaDir, "without the task's records in etcd (--task-name, -u) the newest flush of each store cannot be proven present: a deleted newest meta file looks like a flush not yet made")
				return
			}
		}
		return
	}
	have := map[[2]uint64]bool{}
	for _, mf := range v.res.Metas {
		have[[2]uint64{mf.Name.StoreID, mf.Name.FlushTS}] = true
	}
	loc := v.cfg.Now().Location()
	for store, flushTS := range v.cfg.Recorded {
		if flushTS == 0 || have[[2]uint64{store, flushTS}] || v.rep.TruncatedUntil > 0 && flushTS < v.rep.TruncatedUntil {
			continue
		}
		v.fail(fmt.Sprintf("%s%016X%016X-*.meta", logfile.MetaDir, flushTS, store),
			"missing: task %q's etcd records store %d's flush of %s as durable, and its published checkpoints rest on it", v.cfg.Task, store, FormatTS(flushTS, loc))
	}
}

// previousOwner is the owner record's previous owner a meta file belongs
// to: one of another cluster than the current owner, flushed before that
// cluster's storage was taken over (its agents read the record before
// each meta file, so what they wrote after it is a second writer's).
func (v *verifier) previousOwner(n logfile.MetaName) (logfile.PreviousOwner, bool) {
	if v.owner == nil || n.ClusterID == v.owner.ClusterID {
		return logfile.PreviousOwner{}, false
	}
	return v.owner.TakenOverBefore(n.ClusterID, n.FlushTS)
}

// ownerHistory is the owner record's previous owners, oldest first.
func (v *verifier) ownerHistory() []logfile.PreviousOwner {
	if v.owner == nil {
		return nil
	}
	return v.owner.Previous
}
