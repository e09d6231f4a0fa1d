package br

import (
	"context"
	"errors"
	"fmt"
	"io"

	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/meta"
	"logbackup/storage"
)

// StartOptions are the flags of `br stream start`.
type StartOptions struct {
	TaskName string
	StartTS  string // TSO or datetime; empty = now
	EndTS    string // TSO or datetime; empty = DefaultEndTS
	Storage  string // storage URL
	Filters  []string
}

// Key ranges BR observes for the table filter `*.*`: TiDB's meta keys
// ("m".."n") and every table key ("t".."u"). Raw (not memcomparable) keys,
// as BR writes them under ranges/<task>/.
var allTableRanges = []meta.Range{
	{StartKey: []byte("m"), EndKey: []byte("n")},
	{StartKey: []byte("t"), EndKey: []byte("u")},
}

// Start validates the options, prepares the storage (backup.lock and the
// root backupmeta, like BR) and puts the task with its ranges in one etcd
// transaction. Nothing is written anywhere until every input is checked.
func Start(ctx context.Context, env *Env, opts StartOptions, w io.Writer) error {
	if err := meta.ValidTaskName(opts.TaskName); err != nil {
		return userError("pass --task-name with letters, digits and underscores only", err, "invalid task name")
	}
	now := env.now()
	nowTS := ComposeTS(now)
	startTS := nowTS
	if opts.StartTS != "" {
		ts, err := ParseTS(opts.StartTS, env.loc())
		if err != nil {
			return userError("give --start-ts as a TSO or a datetime like \"2006-01-02 15:04:05+0800\"", err, "invalid --start-ts")
		}
		startTS = ts
	}
	if startTS>>logicalBits > nowTS>>logicalBits { // compare wall-clock parts: a TSO taken this millisecond is not "future"
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
			"invalid --end-ts %d", endTS)
	}
	filters := opts.Filters
	if len(filters) == 0 {
		filters = []string{"*.*"}
	}
	for _, f := range filters {
		if f != "*.*" {
			return userError("this tool backs up every table; omit --filter or pass '*.*'", nil,
				"table filter %q is not supported: resolving table names needs TiDB's schema", f)
		}
	}
	if opts.Storage == "" {
		return userError("pass --storage, e.g. s3://bucket/prefix or local:///backup/log", nil, "missing --storage")
	}
	loc, err := storage.ParseURL(opts.Storage)
	if err != nil {
		return userError("check the --storage URL", err, "invalid storage URL")
	}
	backend, err := loc.Backend()
	if err != nil {
		return userError("use s3://, gcs://, azblob://, file:// or local:// storage for a task", err, "storage %s cannot hold a task", loc)
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
	if err := storage.CheckWritable(ctx, st); err != nil {
		return userError("check the storage permissions and that the bucket exists", err, "storage %s is not writable", loc)
	}
	// PD's cluster id goes into the root backupmeta, as BR records it, so
	// verify can tell another cluster's files; a plain etcd has none.
	clusterID, _, err := env.Meta.PDClusterID(ctx)
	if err != nil {
		return fmt.Errorf("read PD's cluster id: %w", err)
	}
	effectiveStart, restarted, err := prepareStorage(ctx, st, startTS, clusterID)
	if err != nil {
		return err
	}

	info := &brpb.StreamBackupTaskInfo{
		Storage:         backend,
		StartTs:         effectiveStart,
		EndTs:           endTS,
		Name:            opts.TaskName,
		TableFilter:     filters,
		CompressionType: brpb.CompressionType_ZSTD,
	}
	if err := env.Meta.PutTask(ctx, info, allTableRanges); err != nil {
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
	return nil
}
