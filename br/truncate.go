package br

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strconv"
	"strings"

	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent/logfile"
)

// TruncateOptions are the flags of `br stream truncate`.
type TruncateOptions struct {
	Storage string
	// Until is the TSO or datetime before which the log may go: afterwards
	// the storage restores to any point at or after it, and to no earlier.
	Until  string
	DryRun bool
	// Yes skips the confirmation prompt, which is otherwise read from In.
	Yes bool
	In  io.Reader
	// TaskStopped lets truncate go on when etcd (env.Meta) does not answer:
	// the operator vouches that no task writes to the storage, so the
	// storage's own checkpoints are all there is to check.
	TaskStopped bool
}

// TruncateResult says what a truncate removed (or, dry, would remove).
type TruncateResult struct {
	Until uint64
	// ShiftUntil is BR's shifted until: data groups whose newest entry is
	// older than it go. It is below Until when a write record committed at
	// or after Until has its value (default CF) written before Until.
	ShiftUntil uint64
	MetaFiles  int // meta files listed
	// DataFiles are the data objects (BR's "files": one per file group)
	// removed, DataBytes their size and KVs their entries.
	DataFiles int
	DataBytes uint64
	KVs       int64
	// MetasDeleted list nothing any more; MetasRewritten still list some
	// data and were written back without the removed groups.
	MetasDeleted, MetasRewritten int
	// Leftover are data objects an interrupted truncate had already
	// unlisted but not deleted; this run deleted them.
	Leftover  int
	DryRun    bool
	Cancelled bool
}

// metaEntry is one meta file of the storage and what truncate does to it.
type metaEntry struct {
	path string
	name logfile.MetaName
	md   *brpb.Metadata // nil when the name proves it cannot matter
	del  []int          // indexes of the file groups to remove
	gone bool           // every group goes (or none existed): delete the file
}

// truncateWorkers bounds the storage requests in flight.
const truncateWorkers = 16

// RunTruncate opens the storage and truncates it.
func RunTruncate(ctx context.Context, env *Env, opts TruncateOptions, w io.Writer) (*TruncateResult, error) {
	if opts.Storage == "" {
		return nil, userError("pass --storage (-s), the URL of the log backup storage", nil, "missing --storage")
	}
	if opts.Until == "" {
		return nil, userError("pass --until with a TSO or a datetime like \"2006-01-02 15:04:05+0800\"", nil, "missing --until")
	}
	st, err := storage.OpenURL(ctx, opts.Storage)
	if err != nil {
		return nil, userError("check the --storage URL", err, "cannot open storage")
	}
	defer st.Close()
	return TruncateStorage(ctx, env, st, opts, w)
}

// TruncateStorage removes from st what a restore to any point at or after
// the until ts never needs, as `br log truncate` does: the data file groups
// whose every entry is older than BR's shifted until, and the meta files
// that list only those; meta files that still list needed groups are
// rewritten without the others.
//
// Order (see docs/ARCHITECTURE.md, "Truncate"): the truncate lock, the
// safepoint marker, a journal naming every data object about to be
// unlisted, the meta files (rewritten or deleted, each one atomic write),
// only then the data objects, then the journal. A crash anywhere leaves
// every meta file pointing at data that exists; a rerun finishes the
// journal's deletions. Meta files written by a running task after the
// listing are never touched, and they list only new objects.
//
// opts.Storage is ignored; env.Meta, when set, is asked for the task's
// global checkpoint too.
func TruncateStorage(ctx context.Context, env *Env, st storage.Storage, opts TruncateOptions, w io.Writer) (*TruncateResult, error) {
	if opts.Until == "" {
		return nil, userError("pass --until with a TSO or a datetime like \"2006-01-02 15:04:05+0800\"", nil, "missing --until")
	}
	loc := env.loc()
	until, err := ParseTS(opts.Until, loc)
	if err != nil {
		return nil, userError("give --until as a TSO or a datetime like \"2006-01-02 15:04:05+0800\"", err, "invalid --until")
	}
	// Until the safepoint is written nothing has changed: a failure says
	// so, and what to do.
	pre := func(err error) error {
		if HintOf(err) != "" {
			return err
		}
		return userError("nothing was changed. Check that the storage (and etcd, with -u) answers, then run the same truncate again", err,
			"truncate stopped before changing anything")
	}
	// The proof first: it names a damaged object that would otherwise
	// only fail the reading of the log's range.
	proof, err := proveCheckpoints(ctx, env, st, opts, w)
	if err != nil {
		return nil, pre(err)
	}
	info, err := ReadLogInfo(ctx, st)
	if err != nil {
		// What is missing or undecodable the proof refused already.
		return nil, pre(fmt.Errorf("read the log backup metadata of %s: %w", st, err))
	}
	if err := checkUntil(ctx, env, st, until, info, proof); err != nil {
		return nil, pre(err)
	}
	if err := refuseMigrations(ctx, st); err != nil {
		return nil, pre(err)
	}
	res := &TruncateResult{Until: until, DryRun: opts.DryRun}
	fmt.Fprintf(w, "Storage: %s\n", st)

	var lock *truncateLock
	if !opts.DryRun {
		lock, err = acquireTruncateLock(ctx, env, st)
		if err != nil {
			return nil, pre(err)
		}
		defer lock.release(w)
		if lock.TakenOver != "" {
			fmt.Fprintf(w, "Took over the lock of a truncate that died: %s. This run finishes its work.\n", lock.TakenOver)
		}
		cleanTempFiles(st, w)
	}
	journal, err := readJournal(ctx, st)
	if err != nil {
		return nil, pre(err)
	}
	metas, err := loadMetas(ctx, st, until, max(until, journal.Until), proof.metas, w)
	if err != nil {
		return nil, pre(err)
	}
	res.MetaFiles = len(metas)
	res.ShiftUntil = shiftUntil(metas, until)
	objects, leftover, rewrites, deletes := plan(metas, res, until, journal)
	res.Leftover = len(leftover)
	all := append(append([]string{}, objects...), leftover...)
	for _, o := range all {
		if !isLogObject(o) {
			return nil, userError("the storage holds metadata this tool did not write and does not understand; nothing was changed", nil,
				"a meta file or %s lists %q, which is no log data file", TruncateJournalFile, o)
		}
	}

	fmt.Fprintf(w, "We are going to truncate %d files (%s, %d KVs), up to TS %s (%d).\n",
		res.DataFiles, humanBytes(res.DataBytes), res.KVs, FormatTS(until, loc), until)
	if res.ShiftUntil < until {
		fmt.Fprintf(w, "  values (default CF) of changes committed from then on reach back to %s (%d): newer data files stay.\n",
			FormatTS(res.ShiftUntil, loc), res.ShiftUntil)
	}
	fmt.Fprintf(w, "  meta files: %d to delete, %d to rewrite, %d of %d untouched.\n",
		len(deletes), len(rewrites), len(metas)-len(deletes)-len(rewrites), len(metas))
	if len(leftover) > 0 {
		fmt.Fprintf(w, "  an interrupted truncate left %d unlisted files; they are deleted too.\n", len(leftover))
	}
	sp, err := readSafepoint(ctx, st)
	if err != nil {
		return nil, pre(err)
	}
	if until < sp {
		fmt.Fprintf(w, "According to the log, you have truncated log backup data before %s (%d).\n", FormatTS(sp, loc), sp)
	}
	if opts.DryRun {
		fmt.Fprintf(w, "Dry run: nothing was changed.\n")
		return res, nil
	}
	if !opts.Yes {
		ok, err := confirm(opts.In, w)
		if err != nil {
			return nil, err
		}
		if !ok {
			res.Cancelled = true
			fmt.Fprintf(w, "Truncate cancelled: nothing was changed.\n")
			return res, nil
		}
	}

	// The safepoint first, as BR: from here on the storage says it restores
	// to until and later only, which stays true whatever else happens.
	if err := lock.check(ctx); err != nil {
		return nil, pre(err)
	}
	if until > sp {
		if err := st.WriteFile(ctx, TruncateSafepointFile, []byte(strconv.FormatUint(until, 10))); err != nil {
			return nil, interrupted(fmt.Errorf("write the truncate safepoint %s: %w", TruncateSafepointFile, err))
		}
	}
	if len(all) > 0 {
		j := truncateJournal{Version: 1, Until: max(until, journal.Until), ShiftUntil: res.ShiftUntil, Objects: all}
		if err := writeJournal(ctx, st, j); err != nil {
			return nil, interrupted(err)
		}
	}
	// Meta files before data: no meta file ever lists a deleted object.
	if err := lock.check(ctx); err != nil {
		return nil, interrupted(err)
	}
	p := newProgress(w, "Rewriting meta files", len(rewrites)+len(deletes))
	err = forEach(ctx, len(rewrites)+len(deletes), func(ctx context.Context, i int) error {
		defer p.add(1)
		if err := lock.valid(); err != nil {
			return err
		}
		if i < len(rewrites) {
			return rewriteMeta(ctx, st, rewrites[i])
		}
		m := deletes[i-len(rewrites)]
		if err := st.Delete(ctx, m.path); err != nil {
			return fmt.Errorf("delete meta file %s: %w", m.path, err)
		}
		return nil
	})
	if err != nil {
		return nil, interrupted(err)
	}
	if err := lock.check(ctx); err != nil {
		return nil, interrupted(err)
	}
	p = newProgress(w, "Deleting data files", len(all))
	err = forEach(ctx, len(all), func(ctx context.Context, i int) error {
		defer p.add(1)
		if err := lock.valid(); err != nil {
			return err
		}
		if err := st.Delete(ctx, all[i]); err != nil {
			return fmt.Errorf("delete data file %s: %w", all[i], err)
		}
		return nil
	})
	if err != nil {
		return nil, interrupted(err)
	}
	if len(all) > 0 || journal.Version != 0 {
		if err := st.Delete(ctx, TruncateJournalFile); err != nil {
			return nil, interrupted(fmt.Errorf("delete %s: %w", TruncateJournalFile, err))
		}
	}
	from, err := checkAfterTruncate(ctx, env, st, until)
	if err != nil {
		if HintOf(err) == "" {
			err = userError(fmt.Sprintf("the truncate itself is done; check the storage with `br stream verify -s %s`", st), err,
				"cannot read the storage back after truncating")
		}
		return nil, err
	}
	fmt.Fprintf(w, "Truncated: deleted %d files (%s) and %d meta files, rewrote %d meta files. Verified: the log now restores to %s (%d) and later.\n",
		len(all), humanBytes(res.DataBytes), len(deletes), len(rewrites), FormatTS(from, loc), from)
	return res, nil
}

// interrupted explains a failure half-way: the storage is consistent, and
// a rerun finishes, taking over a lock this run could not remove.
func interrupted(err error) error {
	if h := HintOf(err); h != "" {
		return err
	}
	return userError("nothing is lost: every meta file still lists only data that exists. Fix what failed (above), then run the same truncate again: "+
		"it finishes this run's work (and takes over "+TruncateLockFile+" if this run could not remove it)", err, "truncate interrupted")
}

// checkUntil refuses an until past what the storage (and etcd, when
// reachable) says is backed up: the global checkpoint.
func checkUntil(ctx context.Context, env *Env, st storage.Storage, until uint64, info *LogInfo, proof *checkpointProof) error {
	loc := env.loc()
	if until > info.MaxTS {
		return userError("truncate only what is backed up: pass an --until at or before the log's max ts (br stream metadata shows it)", nil,
			"--until %s (%d) is after the storage's global checkpoint %s (%d)", FormatTS(until, loc), until, FormatTS(info.MaxTS, loc), info.MaxTS)
	}
	if env.Meta == nil || !proof.etcdAsked {
		return nil
	}
	tasks, _, err := env.Meta.ListTasks(ctx)
	if err != nil {
		return fmt.Errorf("list tasks: %w", err)
	}
	for _, t := range tasks {
		if !sameStorage(t.Info.GetStorage(), st.String()) {
			continue
		}
		cp, err := globalOrStorageCheckpoint(ctx, env.Meta, t.Info)
		if err != nil {
			return err
		}
		if until > cp {
			return userError("truncate only what is backed up: pass an --until at or before the task's checkpoint (br stream status shows it)", nil,
				"--until %s (%d) is after task %q's global checkpoint %s (%d) in etcd", FormatTS(until, loc), until, t.Info.Name, FormatTS(cp, loc), cp)
		}
	}
	return nil
}

// sameStorage reports whether a task's backend is the storage at url (a
// redacted URL): same kind, endpoint, bucket, prefix and path.
func sameStorage(b *brpb.StorageBackend, url string) bool {
	a, err := storage.LocationFromBackend(b)
	if err != nil {
		return false
	}
	o, err := storage.ParseURL(url)
	if err != nil {
		return false
	}
	return a.Scheme == o.Scheme && a.Endpoint == o.Endpoint && a.Bucket == o.Bucket && a.Prefix == o.Prefix && a.Path == o.Path
}

// globalOrStorageCheckpoint is the task's global checkpoint: central_global
// when the coordinator published one, else the highest storage checkpoint,
// never below the task's start (as status shows it).
func globalOrStorageCheckpoint(ctx context.Context, m *meta.Client, info *brpb.StreamBackupTaskInfo) (uint64, error) {
	g, ok, err := m.GlobalCheckpoint(ctx, info.Name)
	if err != nil {
		return 0, fmt.Errorf("read the global checkpoint of %q: %w", info.Name, err)
	}
	if ok {
		return max(g, info.StartTs), nil
	}
	scs, err := m.StorageCheckpoints(ctx, info.Name)
	if err != nil {
		return 0, fmt.Errorf("read the storage checkpoints of %q: %w", info.Name, err)
	}
	cp := info.StartTs
	for _, ts := range scs {
		cp = max(cp, ts)
	}
	return cp, nil
}

// refuseMigrations: BR's compaction and newer truncate record edits under
// v1/migrations/ that its restore applies; deleting files under them is
// BR's job (br log truncate --clean-up-compactions), not ours.
func refuseMigrations(ctx context.Context, st storage.Storage) error {
	found := errors.New("found")
	err := st.List(ctx, "v1/migrations/", func(storage.ObjectInfo) error { return found })
	switch {
	case errors.Is(err, found):
		return userError("use TiDB BR's `br log truncate` on this storage", nil,
			"the storage holds BR migrations (v1/migrations/), which this truncate does not apply")
	case err != nil:
		return fmt.Errorf("list v1/migrations/: %w", err)
	}
	return nil
}

// isLogObject reports whether a path listed by a meta file (or the
// journal) can be a log data file, so that nothing else (backupmeta, the
// locks, meta files, checkpoints) is ever deleted on the word of a corrupt
// or foreign meta file. TiKV names them v1/<date>/<hour>/<store>/…/<x>.log.
func isLogObject(p string) bool {
	return strings.HasPrefix(p, "v1/") && strings.HasSuffix(p, ".log") && !strings.Contains(p, "..") &&
		!strings.HasPrefix(p, logfile.MetaDir) && !strings.HasPrefix(p, logfile.GlobalCheckpointDir) && !strings.HasPrefix(p, "v1/migrations/")
}

// validBegin reports whether a tagged name's min begin ts can stand in for
// its content, as BR's CalculateShiftTS: set, and not after its min ts.
func validBegin(n logfile.MetaName) bool { return n.MinBeginTS != 0 && n.MinBeginTS <= n.MinTS }

// loadMetas lists every meta file and reads those whose content matters:
// any that may list data before threshold, and any whose name cannot
// answer for BR's shift (legacy names, or a name with no valid min begin
// ts while it reaches until). A tagged name's ts tags bound its content.
func loadMetas(ctx context.Context, st storage.Storage, until, threshold uint64, known map[string]*brpb.Metadata, w io.Writer) ([]*metaEntry, error) {
	var metas []*metaEntry
	err := st.List(ctx, logfile.MetaDir, func(o storage.ObjectInfo) error {
		if !strings.HasSuffix(o.Name, ".meta") {
			return nil
		}
		name, err := logfile.ParseMetaName(o.Name)
		if err != nil {
			return userError("remove or rename the foreign file; truncate leaves storages it does not understand alone", err, "unreadable meta file name")
		}
		metas = append(metas, &metaEntry{path: o.Name, name: name})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", logfile.MetaDir, err)
	}
	var read []*metaEntry
	for _, m := range metas {
		n := m.name
		if md, ok := known[m.path]; ok {
			m.md = md // read (and checked) by proveCheckpoints
			continue
		}
		if n.Legacy || n.MinTS <= threshold || n.MaxTS >= until && !validBegin(n) {
			read = append(read, m)
		}
	}
	p := newProgress(w, "Reading meta files", len(read))
	err = forEach(ctx, len(read), func(ctx context.Context, i int) error {
		defer p.add(1)
		m := read[i]
		raw, err := st.ReadFile(ctx, m.path)
		if err != nil {
			return fmt.Errorf("read %s: %w", m.path, err)
		}
		md, err := logfile.DecodeMetadata(raw)
		if err != nil {
			return fmt.Errorf("%s: %w", m.path, err)
		}
		m.md = md
		return nil
	})
	if err != nil {
		return nil, err
	}
	return metas, nil
}

// shiftUntil is BR's LoadUntilAndCalculateShiftTS: until, lowered to the
// smallest start ts (min_begin_ts_in_default_cf) of the write-CF files
// that reach until, so the default-CF values of changes committed at or
// after until survive. A tagged name's d tag answers for its file when it
// is valid (BR's UpdateShiftTS); otherwise the content is scanned.
func shiftUntil(metas []*metaEntry, until uint64) uint64 {
	shift := until
	for _, m := range metas {
		n := m.name
		if !n.Legacy {
			if n.MaxTS < until {
				continue
			}
			if validBegin(n) {
				shift = min(shift, n.MinBeginTS)
				continue
			}
		}
		if m.md == nil || len(m.md.FileGroups) == 0 || m.md.MaxTs < until {
			continue
		}
		for _, g := range m.md.FileGroups {
			for _, f := range g.DataFilesInfo {
				if f.Cf == logfile.CFDefault || f.MinBeginTsInDefaultCf == 0 || f.MaxTs < until {
					continue
				}
				shift = min(shift, f.MinBeginTsInDefaultCf)
			}
		}
	}
	return shift
}

// plan decides each meta file's fate and returns the data objects to
// delete, the objects an interrupted run left unlisted (and still to
// delete), and the meta files to rewrite and to delete.
//
// A group goes when its newest entry is older than BR's shifted until.
// One refinement keeps more than BR: inside one meta file, a group that
// still stays lowers the bar to its own write records' start ts, so the
// default-CF values they join with (written in the same flush, maybe in
// another object) stay too. BR's restore would never read those records,
// but the storage keeps decoding as a whole (logfile.Walk, br stream
// verify). An empty meta file flushed before until goes as well.
func plan(metas []*metaEntry, res *TruncateResult, until uint64, j truncateJournal) (objects, leftover []string, rewrites, deletes []*metaEntry) {
	kept := map[string]bool{}
	planned := map[string]bool{}
	for _, m := range metas {
		if m.md == nil {
			continue
		}
		gs := m.md.FileGroups
		if len(gs) == 0 {
			if m.name.FlushTS != 0 && m.name.FlushTS < until {
				m.gone = true
				deletes = append(deletes, m)
			}
			continue
		}
		bar := res.ShiftUntil
		for {
			next := bar
			for _, g := range gs {
				if g.MaxTs < bar {
					continue
				}
				for _, f := range g.DataFilesInfo {
					if f.Cf != logfile.CFDefault && f.MinBeginTsInDefaultCf != 0 {
						next = min(next, f.MinBeginTsInDefaultCf)
					}
				}
			}
			if next == bar {
				break
			}
			bar = next
		}
		for i, g := range gs {
			if g.MaxTs < bar {
				m.del = append(m.del, i)
			} else {
				kept[g.Path] = true
			}
		}
		switch {
		case len(m.del) == len(gs) && m.name.FlushTS >= until:
			// A flush after until that only listed older changes stays as
			// an empty meta file: the next flush of its store names it as
			// its predecessor, and verify's chain would otherwise see a gap
			// the truncate safepoint cannot explain; and its flush ts is
			// what vouches for the global checkpoints up to it (verify
			// fails a checkpoint beyond every flush in storage).
			rewrites = append(rewrites, m)
		case len(m.del) == len(gs):
			m.gone = true
			deletes = append(deletes, m)
		case len(m.del) > 0:
			rewrites = append(rewrites, m)
		}
	}
	for _, m := range metas {
		for _, i := range m.del {
			g := m.md.FileGroups[i]
			// An object some meta file keeps listing stays (no writer
			// shares objects between flushes, but never rely on it).
			if kept[g.Path] || planned[g.Path] {
				continue
			}
			planned[g.Path] = true
			objects = append(objects, g.Path)
			res.DataFiles++
			res.DataBytes += g.Length
			for _, f := range g.DataFilesInfo {
				res.KVs += f.NumberOfEntries
			}
		}
	}
	res.MetasDeleted, res.MetasRewritten = len(deletes), len(rewrites)
	for _, o := range j.Objects {
		// Still listed: an interrupted run unlisted it from a meta file it
		// had not rewritten yet, and this run keeps it.
		if !kept[o] && !planned[o] {
			planned[o] = true
			leftover = append(leftover, o)
		}
	}
	sort.Strings(objects)
	sort.Strings(leftover)
	return objects, leftover, rewrites, deletes
}

// rewriteMeta writes m back without its removed groups, with its ts
// statistics recomputed from the groups left (BR's
// updateMetadataInternalStat). The name's tags follow the content
// (logfile.NameFor: d, l, u, p and the agent's checksum), so the new meta
// file goes under its new name first and the old one is deleted after:
// a crash in between leaves both, listing the same kept files (harmless
// duplicates), and a rerun plans the same rewrite and deletes the old one.
func rewriteMeta(ctx context.Context, st storage.Storage, m *metaEntry) error {
	md := *m.md
	md.FileGroups = nil
	drop := map[int]bool{}
	for _, i := range m.del {
		drop[i] = true
	}
	for i, g := range m.md.FileGroups {
		if !drop[i] {
			md.FileGroups = append(md.FileGroups, g)
		}
	}
	if len(md.FileGroups) == 0 {
		md.MinTs, md.MaxTs = 0, 0 // as an empty flush's
	}
	for i, g := range md.FileGroups {
		if i == 0 {
			md.MinTs, md.MaxTs, md.ResolvedTs = g.MinTs, g.MaxTs, g.MinResolvedTs
		}
		md.MinTs, md.MaxTs, md.ResolvedTs = min(md.MinTs, g.MinTs), max(md.MaxTs, g.MaxTs), min(md.ResolvedTs, g.MinResolvedTs)
	}
	raw, err := md.Marshal()
	if err != nil {
		return fmt.Errorf("encode meta file %s: %w", m.path, err)
	}
	name := m.path
	if old, err := logfile.ParseMetaName(m.path); err == nil && !old.Legacy {
		name = path.Join(path.Dir(m.path), path.Base(logfile.NameFor(old, &md, raw).Format()))
	}
	if err := st.WriteFile(ctx, name, raw); err != nil {
		return fmt.Errorf("rewrite meta file %s: %w", m.path, err)
	}
	if name != m.path {
		if err := st.Delete(ctx, m.path); err != nil {
			return fmt.Errorf("remove meta file %s, rewritten as %s: %w", m.path, name, err)
		}
	}
	return nil
}

// confirm asks "Are you sure?" and reads the answer from in. No answer
// at all (a closed or empty input, as under cron) is an error, so a job
// that forgot -y fails loudly instead of silently keeping everything.
func confirm(in io.Reader, w io.Writer) (bool, error) {
	fmt.Fprintf(w, "Are you sure? [y/N] ")
	if in == nil {
		fmt.Fprintln(w)
		return false, userError("pass -y (--yes) to truncate without a prompt", nil, "no answer to the confirmation prompt")
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && (!errors.Is(err, io.EOF) || line == "") {
		fmt.Fprintln(w)
		return false, userError("pass -y (--yes) to truncate without a prompt", err, "no answer to the confirmation prompt")
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true, nil
	}
	return false, nil
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
