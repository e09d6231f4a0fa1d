package cli

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/pingcap/log"
	"go.uber.org/zap/zapcore"

	"logbackup/br"
	"logbackup/storage"
)

// cliLog is the command's own log (--log-file, -L/--log-level): slog text
// lines, every one passed through storage.Redact before it is written, so
// a credential in a storage URL or an SDK's error never reaches the file.
type cliLog struct {
	logger *slog.Logger
	level  slog.Level
	out    io.Writer // redacted; nil without a file
	close  func() error
}

// parseLevel reads BR's --log-level values (zap's names).
func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "debug":
		return slog.LevelDebug, nil
	case "", "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error", "dpanic", "panic", "fatal":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("unknown log level %q: use debug, info, warn or error", s)
}

// openLog opens the log. Without a file the log is discarded (BR writes a
// temporary file by default; here logging is asked for by naming one).
func openLog(file, level string, stderr io.Writer) (*cliLog, error) {
	lvl, err := parseLevel(level)
	if err != nil {
		return nil, &br.Error{Msg: "invalid --log-level", Err: err, Hint: "use -L debug, info, warn or error"}
	}
	if file == "" {
		return &cliLog{logger: slog.New(slog.DiscardHandler), level: lvl, close: func() error { return nil }}, nil
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, &br.Error{Msg: "cannot open --log-file", Err: err, Hint: "give a writable file path"}
	}
	out := &redactingWriter{w: f}
	fmt.Fprintf(stderr, "Detail BR log in %s\n", file) // BR's words, on stderr as BR prints them
	return &cliLog{
		logger: slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: lvl})),
		level:  lvl,
		out:    out,
		close:  f.Close,
	}, nil
}

// captureLibraryLogs sends the logs of the pd and TiKV clients (pingcap/log,
// process-wide, to stdout by default, where they would mix with the
// command's output) to the command's log file at its level, or nowhere
// without one, until the returned func restores them. It changes a
// process-wide logger, so only the br process itself calls it (MainProcess),
// never a test running commands in process.
func (l *cliLog) captureLibraryLogs() (func(), error) {
	cfg := &log.Config{Level: zapLevel(l.level).String(), Format: "text", DisableTimestamp: false}
	var out io.Writer = io.Discard
	if l.out != nil {
		out = l.out
	}
	ws := zapcore.AddSync(out)
	lg, props, err := log.InitLoggerWithWriteSyncer(cfg, ws, ws)
	if err != nil {
		return nil, fmt.Errorf("set up the client libraries' log: %w", err)
	}
	return log.ReplaceGlobals(lg, props), nil
}

func zapLevel(l slog.Level) zapcore.Level {
	switch {
	case l <= slog.LevelDebug:
		return zapcore.DebugLevel
	case l <= slog.LevelInfo:
		return zapcore.InfoLevel
	case l <= slog.LevelWarn:
		return zapcore.WarnLevel
	}
	return zapcore.ErrorLevel
}

// redactingWriter removes credentials from every write. Log handlers write
// one whole record per call, so a secret is never split across two.
type redactingWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (r *redactingWriter) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, err := io.WriteString(r.w, storage.Redact(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}
