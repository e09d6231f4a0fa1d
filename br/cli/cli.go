// Package cli wires the br commands to cobra. Each command is a thin shell
// over a function in package br; Main maps errors to an exit code and a hint
// in one place.
package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	pd "github.com/tikv/pd/client"

	"logbackup/br"
	"logbackup/br/tidbschema"
	"logbackup/meta"
	"logbackup/storage"
)

// globalFlags are BR's root flags that the stream commands use.
type globalFlags struct {
	pd          []string
	ca          string
	cert        string
	key         string
	dialTimeout time.Duration
	// storage is -s/--storage, for every command that takes a storage;
	// BR's --s3.*, --gcs.* and --azblob.* flags are merged into it
	// (storageURL).
	storage           string
	sendCredentials   bool // -c/--send-credentials-to-tikv
	checkRequirements bool // --check-requirements
	logFile, logLevel string

	// set while a command runs (see root's PersistentPreRunE)
	log          *cliLog
	libraryLogs  bool // MainProcess: capture the client libraries' log too
	restoreLibs  func()
	storageFlags *pflag.FlagSet
}

// Main runs the br command line and returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return Run(ctx, args, os.Stdin, stdout, stderr)
}

// MainProcess is Main for the br binary itself: besides the command's own
// log, the pd and TiKV client libraries' process-wide log goes to
// --log-file (or nowhere) instead of stdout, where it would mix with the
// command's output.
func MainProcess(ctx context.Context, args []string) int {
	return run(ctx, args, os.Stdin, os.Stdout, os.Stderr, true)
}

// Run is Main with the input that answers prompts (truncate's
// confirmation) given explicitly.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return run(ctx, args, stdin, stdout, stderr, false)
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, libraryLogs bool) int {
	g := &globalFlags{libraryLogs: libraryLogs}
	root := newRootCommand(g)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if cmd == nil {
		cmd = root
	}
	if g.log != nil {
		if err != nil {
			g.log.logger.Error("command failed", "command", cmd.CommandPath(), "error", err.Error())
		} else {
			g.log.logger.Info("command finished", "command", cmd.CommandPath())
		}
	}
	g.closeLog()
	if err == nil {
		return 0
	}
	// Errors can carry text from storage SDKs; strip credentials before
	// anything reaches the terminal.
	fmt.Fprintf(stderr, "Error: %s\n", storage.Redact(err.Error()))
	hint := br.HintOf(err)
	if hint == "" && cmd != nil {
		// cobra's own errors (unknown command or flag, bad flag value).
		hint = fmt.Sprintf("run `%s --help` for its commands and flags", cmd.CommandPath())
	}
	if hint != "" {
		fmt.Fprintf(stderr, "Hint: %s\n", hint)
	}
	return 1
}

// missingSubcommand makes a command group fail when called alone: cobra
// would print its help and exit 0, which a script takes for success.
func missingSubcommand(what string) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		var names []string
		for _, c := range cmd.Commands() {
			if c.IsAvailableCommand() {
				names = append(names, c.Name())
			}
		}
		return &br.Error{Msg: "missing " + what + " for `" + cmd.CommandPath() + "`",
			Hint: fmt.Sprintf("use one of: %s (see `%s --help`)", strings.Join(names, ", "), cmd.CommandPath())}
	}
}

// NewRootCommand builds `br` with the `stream` group (alias `log`).
func NewRootCommand() *cobra.Command { return newRootCommand(&globalFlags{}) }

func newRootCommand(g *globalFlags) *cobra.Command {
	root := &cobra.Command{
		Use:           "br",
		Short:         "logbackup: log backup (PITR) tasks for TiKV clusters, BR-compatible",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE:          missingSubcommand("command"),
		// Every command: its log first, so that what follows is logged.
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error { return g.openLog(cmd) },
	}
	pf := root.PersistentFlags()
	pf.StringSliceVarP(&g.pd, "pd", "u", []string{"127.0.0.1:2379"}, "PD address (PD serves its etcd on the same address), comma-separated")
	pf.StringVar(&g.ca, "ca", "", "CA certificate path for TLS connections (TLS is on when set)")
	pf.StringVar(&g.cert, "cert", "", "certificate path for TLS connections")
	pf.StringVar(&g.key, "key", "", "private key path for TLS connections")
	pf.DurationVar(&g.dialTimeout, "dial-timeout", 5*time.Second, "how long to wait for PD and etcd before giving up")
	pf.StringVarP(&g.storage, "storage", "s", "", `specify the url where backup storage, eg, "s3://bucket/path/prefix" (s3://, gcs://, azblob://, local://, file://)`)
	pf.BoolVarP(&g.sendCredentials, "send-credentials-to-tikv", "c", true,
		"send the storage credentials (from the URL, or else br's environment) to the agents with the task; false: each agent uses its own environment's")
	pf.BoolVar(&g.checkRequirements, "check-requirements", true,
		"start checks that PD reports TiKV stores that are up and warns about stores without a registered agent")
	pf.StringVar(&g.logFile, "log-file", "", "write br's log to this file (credentials redacted); default: no log")
	pf.StringVarP(&g.logLevel, "log-level", "L", "info", "log level: debug, info, warn or error")
	defineBackendFlags(pf)
	g.storageFlags = pf

	stream := &cobra.Command{
		Use:     "stream",
		Aliases: []string{"log"},
		Short:   "manage the log backup task (also spelled `br log`)",
		Args:    cobra.NoArgs,
		RunE:    missingSubcommand("subcommand"),
	}
	start, status, pause, resume, stop := startCommand(g), statusCommand(g), pauseCommand(g), resumeCommand(g), stopCommand(g)
	truncate, metadata, verify, history := truncateCommand(g), metadataCommand(g), verifyCommand(g), historyCommand(g)
	for _, c := range []*cobra.Command{start, verify, truncate, metadata} {
		listOwn(c, pf, "storage")
	}
	for _, c := range []*cobra.Command{start, status, pause, resume, stop, history} {
		listOwn(c, pf, "pd")
	}
	stream.AddCommand(start, status, pause, resume, stop, truncate, metadata, verify, history)
	root.AddCommand(stream)
	return root
}

// listOwn shows root flags a command needs among its own flags in its
// help: under "Global Flags" they were lost among the storage backend
// flags. The copy shares the root flag's value, so the flag reads the same
// wherever it stands on the command line; cobra prefers a command's own
// flag of a name over its parent's.
func listOwn(cmd *cobra.Command, root *pflag.FlagSet, names ...string) {
	for _, n := range names {
		own := *root.Lookup(n)
		cmd.Flags().AddFlag(&own)
	}
}

// MinGCTTL is the shortest --gc-ttl start and pause accept: an agent's
// flush interval (3 min by default) plus a minute. A start safepoint must
// outlive the agents' first flush, which sets their own safepoints; a
// pause safepoint shorter than that lets GC pass the checkpoint before a
// resume can rescan from it.
const MinGCTTL = 4 * time.Minute

// checkGCTTL refuses a --gc-ttl that cannot hold GC back long enough; the
// value 0 used to mean the default silently.
func checkGCTTL(ttl, def time.Duration) error {
	if ttl >= MinGCTTL {
		return nil
	}
	return &br.Error{
		Msg: fmt.Sprintf("--gc-ttl %s is too short: it must be at least %d seconds (an agent flush interval, 3m by default, plus a minute)",
			secondsFlag{&ttl}, int64(MinGCTTL/time.Second)),
		Hint: fmt.Sprintf("leave out --gc-ttl for the default %d seconds, or give %d or more (seconds) or a duration such as 30m",
			int64(def/time.Second), int64(MinGCTTL/time.Second)),
	}
}

// openLog opens the command's log (and, in the br process, captures the
// client libraries' log).
func (g *globalFlags) openLog(cmd *cobra.Command) error {
	l, err := openLog(g.logFile, g.logLevel, cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	g.log = l
	if g.libraryLogs {
		restore, err := l.captureLibraryLogs()
		if err != nil {
			return err
		}
		g.restoreLibs = restore
	}
	l.logger.Info("command started", "command", cmd.CommandPath(), "pd", strings.Join(g.pd, ","), "tls", g.ca != "")
	return nil
}

func (g *globalFlags) closeLog() {
	if g.restoreLibs != nil {
		g.restoreLibs()
		g.restoreLibs = nil
	}
	if g.log != nil {
		_ = g.log.close()
	}
}

// newEnv is br.NewEnv with the command's log.
func (g *globalFlags) newEnv(m *meta.Client) *br.Env {
	env := br.NewEnv(m)
	if g.log != nil {
		env.Log = g.log.logger
	}
	return env
}

// storageURL is the command's storage: -s/--storage with the backend
// flags merged in; what it ignored is said on stderr.
func (g *globalFlags) storageURL(cmd *cobra.Command) (string, error) {
	u, warnings, err := storageURL(g.storageFlags, g.storage)
	for _, w := range warnings {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", w)
	}
	return u, err
}

// withEnv dials etcd, runs fn and closes the connection.
func withEnv(cmd *cobra.Command, g *globalFlags, fn func(ctx context.Context, env *br.Env) error) error {
	ctx := cmd.Context()
	if len(g.pd) == 0 {
		return &br.Error{Msg: "no etcd endpoint", Hint: "pass -u/--pd host:port"}
	}
	if g.dialTimeout <= 0 {
		return &br.Error{Msg: fmt.Sprintf("invalid --dial-timeout %s", g.dialTimeout), Hint: "use a positive duration such as 5s"}
	}
	if err := (meta.TLSFiles{CA: g.ca, Cert: g.cert, Key: g.key}).Validate(); err != nil {
		return &br.Error{Msg: "invalid TLS flags", Err: err,
			Hint: "TLS is on with --ca; pass --ca with --cert/--key, and readable PEM files"}
	}
	cli, err := meta.Dial(ctx, meta.DialConfig{
		Endpoints: g.pd, CAFile: g.ca, CertFile: g.cert, KeyFile: g.key, DialTimeout: g.dialTimeout,
	})
	if err != nil {
		return &br.Error{Msg: "cannot connect to etcd", Err: err,
			Hint: fmt.Sprintf("check that PD/etcd is reachable at %s (-u/--pd) and the TLS flags", strings.Join(g.pd, ","))}
	}
	defer cli.Close()
	env := g.newEnv(meta.NewClient(cli))
	// PD answers on the same address as its etcd; dialled only by the
	// commands that need it (TSO, GC safepoints, stores).
	env.OpenPD = func(ctx context.Context) (pd.Client, error) {
		return meta.DialPD(ctx, meta.DialConfig{Endpoints: g.pd, CAFile: g.ca, CertFile: g.cert, KeyFile: g.key, DialTimeout: g.dialTimeout})
	}
	// TiKV's KV API, for the schema a table filter resolves against:
	// client-go over PD's client and etcd, with the same TLS files.
	var kv *br.KVClient
	env.OpenSchema = func(ctx context.Context) (tidbschema.Source, error) {
		pdc, err := env.PDClient(ctx)
		if err != nil {
			return nil, err
		}
		if kv, err = br.DialKV(pdc, cli, meta.TLSFiles{CA: g.ca, Cert: g.cert, Key: g.key}); err != nil {
			return nil, err
		}
		return kv.Schema(), nil
	}
	defer func() {
		if kv != nil {
			_ = kv.Close()
		}
		if env.PD != nil {
			env.PD.Close()
		}
	}()
	return fn(ctx, env)
}

func requireTaskName(name string) error {
	if name == "" {
		return &br.Error{Msg: "missing parameter --task-name", Hint: "pass --task-name <name>"}
	}
	return nil
}

func startCommand(g *globalFlags) *cobra.Command {
	o := br.StartOptions{GCTTL: br.DefaultStartGCTTL}
	var crypt encryptionFlags
	var wf waitFlags
	cmd := &cobra.Command{
		Use:   "start",
		Short: "start a log backup task",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireTaskName(o.TaskName); err != nil {
				return err
			}
			if err := crypt.check(); err != nil {
				return err
			}
			if err := checkGCTTL(o.GCTTL, br.DefaultStartGCTTL); err != nil {
				return err
			}
			u, err := g.storageURL(cmd)
			if err != nil {
				return err
			}
			o.Storage = u
			o.WithholdCredentials = !g.sendCredentials
			o.CheckRequirements = g.checkRequirements
			return withEnv(cmd, g, func(ctx context.Context, env *br.Env) error {
				return wf.run(ctx, env, o.TaskName, cmd.OutOrStdout(), func() error {
					return br.Start(ctx, env, o, cmd.OutOrStdout())
				})
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.TaskName, "task-name", "", "the task name: letters, digits and underscores")
	f.StringVar(&o.StartTS, "start-ts", "", "start timestamp: a TSO or a datetime with its zone, e.g. '400036290571534337' or '2018-05-11 01:42:23+0800'; default now")
	f.StringVar(&o.EndTS, "end-ts", "", "end timestamp (TSO or datetime); default 999999999999999999")
	f.StringArrayVarP(&o.Filters, "filter", "f", nil, "TiDB table filter rule ('db.*', 'db.t', '!db.t', '/re/.*'); repeatable; default '*.*'")
	f.BoolVar(&o.CaseSensitive, "case-sensitive", false, "match --filter names case-sensitively")
	f.Var(secondsFlag{&o.GCTTL}, "gc-ttl", "how long PD keeps the changes since --start-ts for the agents' first scans, in seconds or as a duration; at least 240 (an agent flush interval plus a minute)")
	f.BoolVar(&o.TakeOver, "take-over", false, "start on a storage another cluster owns, deliberately: its agents stop writing there")
	crypt.define(f)
	wf.add(cmd)
	return cmd
}

// encryptionFlags are BR's log-backup encryption flags (v8.4). This tool
// writes plaintext logs: they are accepted so BR's command lines parse, and
// anything but plaintext is refused.
type encryptionFlags struct {
	method, key, keyFile, masterMethod, masterKey string
}

func (e *encryptionFlags) define(f *pflag.FlagSet) {
	f.StringVar(&e.method, "log.crypter.method", "plaintext", "log backup encryption; only plaintext is supported")
	f.StringVar(&e.key, "log.crypter.key", "", "log backup encryption key (not supported)")
	f.StringVar(&e.keyFile, "log.crypter.key-file", "", "log backup encryption key file (not supported)")
	f.StringVar(&e.masterMethod, "master-key-crypter-method", "plaintext", "master-key encryption; only plaintext is supported")
	f.StringVar(&e.masterKey, "master-key", "", "master key (not supported)")
}

func (e *encryptionFlags) check() error {
	plain := func(m string) bool { return m == "" || strings.EqualFold(m, "plaintext") }
	if !plain(e.method) || !plain(e.masterMethod) || e.key != "" || e.keyFile != "" || e.masterKey != "" {
		return &br.Error{Msg: "log backup encryption is not supported by this tool",
			Hint: "omit --log.crypter.* and --master-key*: the logs are written in plaintext"}
	}
	return nil
}

func statusCommand(g *globalFlags) *cobra.Command {
	var o br.StatusOptions
	cmd := &cobra.Command{
		Use:   "status",
		Short: "show the status of log backup tasks",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withEnv(cmd, g, func(ctx context.Context, env *br.Env) error {
				return br.Status(ctx, env, o, cmd.OutOrStdout())
			})
		},
	}
	cmd.Flags().StringVar(&o.TaskName, "task-name", "*", "the task to show; '*' for all")
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print one JSON array (BR's --json fields)")
	return cmd
}

func pauseCommand(g *globalFlags) *cobra.Command {
	var name, message string
	gcTTL := br.DefaultPauseGCTTL
	cmd := &cobra.Command{
		Use:   "pause",
		Short: "pause a log backup task",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireTaskName(name); err != nil {
				return err
			}
			if err := checkGCTTL(gcTTL, br.DefaultPauseGCTTL); err != nil {
				return err
			}
			return withEnv(cmd, g, func(ctx context.Context, env *br.Env) error {
				return br.Pause(ctx, env, name, message, gcTTL, cmd.OutOrStdout())
			})
		},
	}
	cmd.Flags().StringVar(&name, "task-name", "", "the task to pause")
	cmd.Flags().StringVar(&message, "message", "", "why the task is paused (shown by status)")
	cmd.Flags().Var(secondsFlag{&gcTTL}, "gc-ttl", "how long PD keeps the changes since the checkpoint while the task is paused (a resume rescans them), in seconds or as a duration; at least 240 (an agent flush interval plus a minute)")
	return cmd
}

func resumeCommand(g *globalFlags) *cobra.Command {
	var name string
	var clearError bool
	var wf waitFlags
	cmd := &cobra.Command{
		Use:   "resume",
		Short: "resume a paused log backup task",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireTaskName(name); err != nil {
				return err
			}
			return withEnv(cmd, g, func(ctx context.Context, env *br.Env) error {
				return wf.run(ctx, env, name, cmd.OutOrStdout(), func() error {
					return br.Resume(ctx, env, name, clearError, cmd.OutOrStdout())
				})
			})
		},
	}
	cmd.Flags().StringVar(&name, "task-name", "", "the task to resume")
	cmd.Flags().BoolVar(&clearError, "clear-error", false, "clear the stores' last errors; needed for a task paused by an error")
	wf.add(cmd)
	return cmd
}

func stopCommand(g *globalFlags) *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "stop",
		Short: "stop a log backup task and delete its metadata",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireTaskName(name); err != nil {
				return err
			}
			return withEnv(cmd, g, func(ctx context.Context, env *br.Env) error {
				return br.Stop(ctx, env, name, cmd.OutOrStdout())
			})
		},
	}
	cmd.Flags().StringVar(&name, "task-name", "", "the task to stop")
	return cmd
}

func verifyCommand(g *globalFlags) *cobra.Command {
	var o br.VerifyOptions
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "read a log backup storage back and check it: meta files, flush chains, data files, checksums, decoded changes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			u, err := g.storageURL(cmd)
			if err != nil {
				return err
			}
			o.Storage = u
			if o.TaskName == "" {
				// Storage only: no etcd needed.
				return br.RunVerify(cmd.Context(), g.newEnv(nil), o, cmd.OutOrStdout())
			}
			return withEnv(cmd, g, func(ctx context.Context, env *br.Env) error {
				return br.RunVerify(ctx, env, o, cmd.OutOrStdout())
			})
		},
	}
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print the report as JSON")
	cmd.Flags().StringVar(&o.TaskName, "task-name", "", "also read this task's records in etcd (-u) to prove each store's newest flush is in storage")
	return cmd
}

func historyCommand(g *globalFlags) *cobra.Command {
	var name string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "history",
		Short: "show a task's recovery history: errors, pauses, resumes, automatic resumes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireTaskName(name); err != nil {
				return err
			}
			return withEnv(cmd, g, func(ctx context.Context, env *br.Env) error {
				return br.History(ctx, env, name, asJSON, cmd.OutOrStdout())
			})
		},
	}
	cmd.Flags().StringVar(&name, "task-name", "", "the task")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func truncateCommand(g *globalFlags) *cobra.Command {
	var o br.TruncateOptions
	cmd := &cobra.Command{
		Use:   "truncate",
		Short: "remove the log backup data no restore to --until or later needs",
		Long: "Removes the data files whose every entry is older than --until (kept longer where a later commit's\n" +
			"value is older, as BR does), deletes the meta files that list only them and rewrites the others.\n" +
			"Storage only; with -u/--pd given, etcd's checkpoint of a task writing to the storage is checked too.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.In = cmd.InOrStdin()
			u, err := g.storageURL(cmd)
			if err != nil {
				return err
			}
			o.Storage = u
			env := g.newEnv(nil)
			// etcd is asked when named; one that does not answer is a
			// refusal unless the operator vouches the task is stopped.
			if o.Storage != "" && o.Until != "" && cmd.Flags().Changed("pd") {
				dc := meta.DialConfig{Endpoints: g.pd, CAFile: g.ca, CertFile: g.cert, KeyFile: g.key, DialTimeout: g.dialTimeout}
				cli, err := meta.Dial(cmd.Context(), dc)
				switch {
				case err != nil && !o.TaskStopped:
					return &br.Error{Msg: fmt.Sprintf("etcd at %s did not answer, so the task's checkpoint cannot be checked; nothing was changed", strings.Join(g.pd, ",")),
						Err: err, Hint: "check -u/--pd and that PD/etcd is up, then run truncate again; if you know no task writes to this storage any more, " +
							"rerun with --task-stopped to check --until against the storage alone"}
				case err != nil:
					fmt.Fprintf(cmd.OutOrStdout(), "Note: etcd at %s is not reachable; --task-stopped: checking --until against the storage alone.\n",
						strings.Join(g.pd, ","))
				default:
					defer cli.Close()
					env = g.newEnv(meta.NewClient(cli))
					// PD (on etcd's address) tells "the future" apart;
					// without it, this machine's clock does.
					env.OpenPD = func(ctx context.Context) (pd.Client, error) { return meta.DialPD(ctx, dc) }
					defer func() {
						if env.PD != nil {
							env.PD.Close()
						}
					}()
				}
			}
			_, err = br.RunTruncate(cmd.Context(), env, o, cmd.OutOrStdout())
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Until, "until", "", "remove what only restores before this TSO or datetime (\"2006-01-02 15:04:05+0800\") need")
	f.BoolVar(&o.DryRun, "dry-run", false, "print what would be removed and change nothing")
	f.BoolVarP(&o.Yes, "yes", "y", false, "do not ask for confirmation")
	f.BoolVar(&o.TaskStopped, "task-stopped", false, "go on when etcd (-u) does not answer: you vouch no task writes to this storage. "+
		"Risk: a running task's checkpoint in etcd is then not checked, and a damaged checkpoint in storage that etcd would contradict is believed")
	return cmd
}

func metadataCommand(g *globalFlags) *cobra.Command {
	var o br.MetadataOptions
	cmd := &cobra.Command{
		Use:   "metadata",
		Short: "print the storage's log min and max ts (what a restore can reach); storage only",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			u, err := g.storageURL(cmd)
			if err != nil {
				return err
			}
			o.Storage = u
			return br.RunMetadata(cmd.Context(), g.newEnv(nil), o, cmd.OutOrStdout())
		},
	}
	return cmd
}

// waitFlags are `--wait [--timeout D]` of start and resume.
type waitFlags struct {
	wait    bool
	timeout time.Duration
}

func (wf *waitFlags) add(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&wf.wait, "wait", false, "return once every store leading the task's regions has an agent that observes them and has flushed past this moment")
	cmd.Flags().DurationVar(&wf.timeout, "timeout", br.DefaultWaitTimeout, "how long --wait waits; past it the command fails naming each store that did not catch up")
}

// run runs the command and, with --wait, waits past the moment it began.
func (wf *waitFlags) run(ctx context.Context, env *br.Env, task string, w io.Writer, fn func() error) error {
	if !wf.wait {
		return fn()
	}
	since, err := br.TSO(ctx, env)
	if err != nil {
		return err
	}
	if err := fn(); err != nil {
		return err
	}
	return br.Wait(ctx, env, task, since, wf.timeout, w)
}
