package br

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/tikv/client-go/v2/oracle"

	"logbackup/meta"
	"logbackup/storage"
)

// StartOptions are the flags of `br stream start`.
type StartOptions struct {
	TaskName string
	StartTS  string // TSO or datetime; empty = now
	EndTS    string // TSO or datetime; empty = DefaultEndTS
	Storage  string // storage URL
	// Filters are TiDB table-filter rules (-f/--filter); none means "*.*".
	Filters []string
	// CaseSensitive matches the filters' names case-sensitively (BR's
	// --case-sensitive).
	CaseSensitive bool
	// GCTTL is how long the start safepoint holds GC back for the agents'
	// first scans (BR's hidden --gc-ttl, default 1800 s).
	GCTTL time.Duration
	// WithholdCredentials is --send-credentials-to-tikv=false: the task
	// carries no storage credentials and each agent uses its own
	// environment's (see applyCredentialPolicy).
	WithholdCredentials bool
	// CheckRequirements is --check-requirements (see checkRequirements).
	CheckRequirements bool
	// TakeOver is --take-over: start on a storage another cluster owns
	// (see owner.go), fencing that cluster's agents off it.
	TakeOver bool
}

// DefaultStartGCTTL is BR's default --gc-ttl of `log start`.
const DefaultStartGCTTL = 1800 * time.Second

// Start validates the options, holds GC at the start (BR's br-<uuid>
// barrier), prepares the storage (backup.lock and the root backupmeta, like
// BR) and puts the task with its ranges in one etcd transaction. Nothing is
// written anywhere until every input is checked, the table filter is
// resolved to ranges and PD has taken the barrier.
func Start(ctx context.Context, env *Env, opts StartOptions, w io.Writer) error {
	if err := meta.ValidTaskName(opts.TaskName); err != nil {
		return userError("pass --task-name with letters, digits and underscores only", err, "invalid task name")
	}
	filter, err := parseTaskFilter(opts.Filters, opts.CaseSensitive)
	if err != nil {
		return err
	}
	if opts.GCTTL < 0 {
		return userError("give --gc-ttl as a positive duration, e.g. 30m", nil, "invalid --gc-ttl %s", opts.GCTTL)
	}
	if opts.GCTTL == 0 {
		opts.GCTTL = DefaultStartGCTTL
	}
	// "Now" is PD's: a local clock running ahead or behind must not decide
	// where a backup starts.
	nowTS, err := env.tso(ctx)
	if err != nil {
		return err
	}
	startTS := nowTS
	if opts.StartTS != "" {
		ts, err := ParseTS(opts.StartTS, env.loc())
		if err != nil {
			return userError("give --start-ts as a TSO or a datetime like \"2006-01-02 15:04:05+0800\"", err, "invalid --start-ts")
		}
		startTS = ts
	}
	if oracle.ExtractPhysical(startTS) > oracle.ExtractPhysical(nowTS) { // a TSO taken this millisecond is not "future"
		return userError("a log backup cannot start in the future; omit --start-ts to start now", nil,
			"--start-ts %s is after the current time %s", FormatTS(startTS, env.loc()), FormatTS(nowTS, env.loc()))
	}
	endTS := DefaultEndTS
	if opts.EndTS != "" {
		ts, err := ParseTS(opts.EndTS, env.loc())
		if err != nil {
			return userError("give --end-ts as a TSO or a datetime", err, "invalid --end-ts")
		}
		endTS = ts
	}
	if endTS <= startTS || endTS <= nowTS {
		return userError("--end-ts must be later than both --start-ts and now", nil,
			"invalid --end-ts %s (%d): the start is %s", FormatTS(endTS, env.loc()), endTS, FormatTS(startTS, env.loc()))
	}
	if opts.Storage == "" {
		return userError("pass --storage, e.g. s3://bucket/prefix or local:///backup/log", nil, "missing --storage")
	}
	loc, err := storage.ParseURL(opts.Storage)
	if err != nil {
		return userError("check the --storage URL", err, "invalid storage URL")
	}
	for _, warning := range loc.Warnings() {
		fmt.Fprintf(w, "warning: %s\n", warning)
	}
	backend, err := loc.Backend()
	if err != nil {
		return userError("use s3://, gcs://, azblob://, file:// or local:// storage for a task", err, "storage %s cannot hold a task", loc)
	}
	if err := applyCredentialPolicy(ctx, env, loc, backend, !opts.WithholdCredentials); err != nil {
		return err
	}

	pdc, err := env.pd(ctx)
	if err != nil {
		return err
	}
	// What PD enforces is its txn safe point, not the GC safe point: TiDB's
	// GC worker moves it ahead at the start of every GC round, and PD
	// refuses the start barrier (at start − 1) below it.
	txnSP, err := meta.TxnSafePoint(ctx, pdc)
	if err != nil {
		return userError("check PD's health", err, "cannot read PD's txn safe point")
	}
	if startTS <= txnSP {
		return userError("start from a later --start-ts (after a new full backup), or omit it to start now", nil,
			"--start-ts %s (%d) is at or below PD's txn safe point %s (%d), which TiDB's GC has reached: the changes after the start may be collected already, and PD refuses to hold GC there",
			FormatTS(startTS, env.loc()), startTS, FormatTS(txnSP, env.loc()), txnSP)
	}

	if opts.CheckRequirements {
		if err := checkRequirements(ctx, env, w); err != nil {
			return err
		}
	}

	// Refuse a second task before touching the storage, so a duplicate
	// start leaves the storage of the running task alone.
	tasks, _, err := env.Meta.ListTasks(ctx)
	if err != nil {
		return fmt.Errorf("list tasks: %w", err)
	}
	if len(tasks) > 0 {
		return userError("stop the running task first (br stream stop --task-name "+tasks[0].Info.Name+")",
			meta.ErrTaskExists, "cannot start task %q", opts.TaskName)
	}

	st, err := storage.Open(ctx, loc)
	if err != nil {
		return userError("check the storage URL, its credentials and that the bucket exists", err, "cannot open storage %s", loc)
	}
	defer st.Close()
	// One storage, one cluster: another cluster's storage is refused
	// before anything is written (owner.go). PD's cluster id also goes
	// into the root backupmeta, as BR records it.
	clusterID := pdc.GetClusterID(ctx)
	own, err := readOwnership(ctx, st, clusterID)
	if err != nil {
		return userError(storageHint(loc, err, "check that the storage is reachable and readable"), err, "cannot read the owner of the storage %s", loc)
	}
	if err := checkOwnership(own, loc, clusterID, opts.TakeOver); err != nil {
		return err
	}
	// The filter resolves at the start the task will really have (a
	// restart continues from the storage's checkpoint), and before the
	// storage is written, so a filter that selects nothing changes nothing.
	resolveAt, err := plannedStart(ctx, st, startTS)
	if err != nil {
		return userError(storageHint(loc, err, "is --storage the path of a log backup?"), err, "cannot read the storage %s", loc)
	}
	// A storage whose log backup continues from a ts GC has reached cannot
	// continue. If it holds no log data at all (a start that failed after
	// writing backup.lock, or a task stopped before its first flush), there
	// is nothing to continue and nothing to lose: it starts afresh.
	afresh := false
	if resolveAt <= txnSP {
		holds, err := holdsLogData(ctx, st)
		if err != nil {
			return userError("check that the storage is reachable and readable", err, "cannot read the storage %s", loc)
		}
		if holds {
			return userError("start a new task in another storage path (after a new full backup)", nil,
				"the storage's log backup continues from %s (%d), at or below PD's txn safe point %s (%d): the changes since it may be collected already",
				FormatTS(resolveAt, env.loc()), resolveAt, FormatTS(txnSP, env.loc()), txnSP)
		}
		afresh, resolveAt = true, startTS
	}
	ranges, err := filter.ranges(ctx, env, resolveAt, w)
	if err != nil {
		return err
	}

	// Hold GC at the start until the agents' own safepoints take over, as
	// BR does: their first scans read every change after it. This is the
	// first write anywhere: if PD refuses it (its txn safe point moved past
	// the start since it was read), nothing is left behind to trip the next
	// start. Should a later step fail, the barrier expires with its TTL.
	if err := meta.SetServiceSafePoint(ctx, pdc, "br-"+randomID(), opts.GCTTL, resolveAt-1); err != nil {
		if errors.Is(err, meta.ErrGCPassed) {
			hint := "start from a later --start-ts (after a new full backup), or omit it to start now"
			if resolveAt != startTS { // the storage's own continue point
				hint = "start a new task in another storage path (after a new full backup)"
			}
			return userError(hint, err, "the start %s (%d) is already collectable: PD's txn safe point has passed it", FormatTS(resolveAt, env.loc()), resolveAt)
		}
		return userError("check PD's health", err, "cannot set the start GC safepoint")
	}

	if err := storage.CheckWritable(ctx, st); err != nil {
		return userError(storageHint(loc, err, "check the storage permissions and that the bucket exists"), err, "storage %s is not writable", loc)
	}
	var effectiveStart uint64
	var restarted bool
	if afresh {
		effectiveStart, err = restartEmptyStorage(ctx, st, startTS, clusterID)
		if err == nil {
			fmt.Fprintf(w, "The storage holds backup.lock but no log data (a start that did not finish, or a task stopped before its first flush); starting it afresh.\n")
		}
	} else {
		effectiveStart, restarted, err = prepareStorage(ctx, st, startTS, clusterID)
	}
	if err != nil {
		return err
	}
	if effectiveStart > resolveAt && restarted && own.foreign != 0 {
		// Taking over from a cluster whose agents still flush here (the
		// owner record fences them only once written, below): continue
		// from the checkpoint read first, which the filter was resolved
		// at. Nothing is lost; some changes may be written twice.
		effectiveStart = resolveAt
	}
	if effectiveStart != resolveAt {
		return fmt.Errorf("the storage %s changed while the task was starting (its log backup now continues from %d, not %d); run start again",
			loc, effectiveStart, resolveAt)
	}
	// Before the task exists: its agents must find it named as the owner.
	if err := claimStorage(ctx, st, own, clusterID, opts.TaskName, effectiveStart, env.tso, w); err != nil {
		return fmt.Errorf("claim the storage %s: %w", loc, err)
	}

	info := &brpb.StreamBackupTaskInfo{
		Storage:         backend,
		StartTs:         effectiveStart,
		EndTs:           endTS,
		Name:            opts.TaskName,
		TableFilter:     filter.rules,
		CompressionType: brpb.CompressionType_ZSTD,
	}
	if err := env.Meta.PutTask(ctx, info, ranges); err != nil {
		if errors.Is(err, meta.ErrTaskExists) {
			return userError("stop the running task first", err, "cannot start task %q", opts.TaskName)
		}
		return fmt.Errorf("put task %q: %w", opts.TaskName, err)
	}
	if restarted {
		fmt.Fprintf(w, "The storage already holds a log backup; continuing it from its last checkpoint.\n")
	}
	fmt.Fprintf(w, "Log backup task %q started.\n  start: %s (%d)\n  storage: %s\n",
		opts.TaskName, FormatTS(effectiveStart, env.loc()), effectiveStart, loc.Redacted())
	env.log().Info("log backup task started", "task", opts.TaskName, "start_ts", effectiveStart, "end_ts", endTS,
		"storage", loc.Redacted(), "filter", filter.rules, "ranges", len(ranges), "restarted", restarted,
		"credentials_sent", !opts.WithholdCredentials)
	return nil
}

// plannedStart is the start ts prepareStorage will settle on, read without
// writing: the storage's log-max-ts when it already holds a log backup
// (BR's restart), startTS otherwise.
func plannedStart(ctx context.Context, s storage.Storage, startTS uint64) (uint64, error) {
	exists, err := s.Exists(ctx, LockFile)
	if err != nil {
		return 0, fmt.Errorf("check %s: %w", LockFile, err)
	}
	if !exists {
		return startTS, nil
	}
	info, err := ReadLogInfo(ctx, s)
	if err != nil {
		return 0, err
	}
	return max(info.MaxTS, info.StartTS), nil
}

// randomID is a UUID-shaped random id, as BR names its start safepoint.
func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// storageHint is hint, unless err says the bucket or container itself is
// missing: then it says so and how to create it, which is what a first
// start on a fresh server needs.
func storageHint(loc *storage.Location, err error, hint string) string {
	if !storage.IsBucketMissing(err) {
		return hint
	}
	switch loc.Scheme {
	case "s3":
		return fmt.Sprintf("the bucket %q does not exist: create it (MinIO: mc mb <alias>/%s; AWS: aws s3 mb s3://%s), then run start again",
			loc.Bucket, loc.Bucket, loc.Bucket)
	case "azblob":
		account := loc.AccountName
		if account == "" {
			account = "<account>"
		}
		return fmt.Sprintf("the container %q does not exist: create it (az storage container create --name %s --account-name %s), then run start again",
			loc.Bucket, loc.Bucket, account)
	case "gcs":
		return fmt.Sprintf("the bucket %q does not exist: create it (gsutil mb gs://%s), then run start again", loc.Bucket, loc.Bucket)
	}
	return hint
}
