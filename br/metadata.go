package br

import (
	"context"
	"fmt"
	"io"
	"time"

	"logbackup/storage"
)

// brDateFormat is BR's utils.FormatDate layout, used in its summary lines.
const brDateFormat = "2006-01-02 15:04:05.999999999 -0700"

// MetadataOptions are the flags of `br stream metadata`.
type MetadataOptions struct {
	Storage string
}

// RunMetadata prints what `br log metadata` prints: the storage's
// log-min-ts (its start, or the truncate safepoint past it) and log-max-ts
// (the highest global checkpoint a store wrote), as TSO and datetime. It
// reads the storage only: no etcd, no cluster.
func RunMetadata(ctx context.Context, env *Env, opts MetadataOptions, w io.Writer) error {
	if opts.Storage == "" {
		return userError("pass --storage (-s), the URL of the log backup storage", nil, "missing --storage")
	}
	st, err := storage.OpenURL(ctx, opts.Storage)
	if err != nil {
		return userError("check the --storage URL", err, "cannot open storage")
	}
	defer st.Close()
	info, err := ReadLogInfo(ctx, st)
	if err != nil {
		return userError("is --storage the path a log backup task writes to?", err, "cannot read the log backup metadata of %s", st)
	}
	loc := env.loc()
	date := func(ts uint64) string { return PhysicalTime(ts).In(loc).Format(brDateFormat) }
	// BR prints this as a summary log line; the fields and their order are
	// BR's, so scripts that read them keep working.
	fmt.Fprintf(w, "[\"log metadata\"] [log-min-ts=%d] [log-min-date=%q] [log-max-ts=%d] [log-max-date=%q]\n",
		info.MinTS, date(info.MinTS), info.MaxTS, date(info.MaxTS))
	// log-max-ts is the highest .ts whatever it holds: say so when one is
	// impossible (issue 20: a damaged .ts made it the year 3084), after
	// BR's line, which scripts read.
	v := newVerifier(st, VerifyConfig{Now: func() time.Time { return env.now().In(loc) }})
	globals, err := v.readGlobalCheckpoints(ctx)
	if err != nil {
		return fmt.Errorf("read %s: %w", GlobalCheckpointDir, err)
	}
	for _, g := range globals {
		if g.ts > v.latest {
			fmt.Fprintf(w, "warning: %s: global checkpoint %s is in the future, so log-max-ts cannot be trusted; run br stream verify -s %s (truncate refuses this storage)\n",
				g.name, date(g.ts), st)
		}
	}
	return nil
}
