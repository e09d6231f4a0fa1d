package streamagent

import (
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"log/slog"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/client-go/v2/oracle"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/opt"

	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent/internal/etcdfixture"
)

// goFiles parses every non-test Go file under root (vendor-free: the
// module has none) and calls visit with each file's path and syntax.
func goFiles(t *testing.T, root string, visit func(path string, fset *token.FileSet, f *ast.File)) {
	t.Helper()
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (strings.HasPrefix(n, ".") || n == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		visit(path, fset, f)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestEveryGoroutineSpawned: no go statement in the agent's code outside
// lifetime.go. A bare `go` would start a goroutine Run does not wait for
// (what TestRunJoinsItsGoroutines checks at run time, for the goroutines
// its scenario reaches); goroutines joined by their starter use an
// errgroup or WaitGroup.Go, which this does not flag. The agent's code is
// this package and every package under it (task, recovery, and the leaves
// they share), except agentrun: the process around the agent, whose
// status server lives as long as the process.
func TestEveryGoroutineSpawned(t *testing.T) {
	goFiles(t, ".", func(path string, fset *token.FileSet, f *ast.File) {
		if path == "lifetime.go" || strings.HasPrefix(filepath.ToSlash(path), "agentrun/") {
			return
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if g, ok := n.(*ast.GoStmt); ok {
				t.Errorf("%s: a go statement; start it with a.spawn so that Run waits for it (lifetime.go)", fset.Position(g.Pos()))
			}
			return true
		})
	})
}

// TestTestHooksOnlyInTests: Agent.Testing is reached from test files only
// (testhooks.go says why).
func TestTestHooksOnlyInTests(t *testing.T) {
	goFiles(t, "..", func(path string, fset *token.FileSet, f *ast.File) {
		if filepath.Base(path) == "testhooks.go" && filepath.Base(filepath.Dir(path)) == "streamagent" {
			return
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if sel, ok := n.(*ast.SelectorExpr); ok && sel.Sel.Name == "Testing" {
				t.Errorf("%s: Testing() outside a test file: the agent's test hooks are for tests only", fset.Position(sel.Pos()))
			}
			return true
		})
	})
}

// runPD is the part of PD an agent's Run reaches in
// runConfig is an agent of store 1 on a fresh embedded etcd holding one
// task (local storage, ranges a–z), with runPD and hour-long coordinator
// and reconcile intervals: what an agent's Run needs to start the task.
// The caller sets OpenStorage.
func runConfig(t *testing.T, task string) Config {
	t.Helper()
	_, cli := etcdfixture.StartEtcd(t)
	mc := meta.NewClient(cli)
	info := &brpb.StreamBackupTaskInfo{Name: task, StartTs: oracle.GoTimeToTS(time.Now()),
		Storage: &brpb.StorageBackend{Backend: &brpb.StorageBackend_Local{Local: &brpb.Local{Path: t.TempDir()}}}}
	if err := mc.PutTask(context.Background(), info, []meta.Range{{StartKey: []byte("a"), EndKey: []byte("z")}}); err != nil {
		t.Fatal(err)
	}
	return Config{StoreID: 1, PD: &runPD{store: &metapb.Store{Id: 1, Address: "127.0.0.1:1", State: metapb.StoreState_Up}},
		Meta: mc, TempDir: t.TempDir(), CoordinatorInterval: time.Hour, ReconcileInterval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// TestRunJoinsItsGoroutines: its own store, up, and safepoint calls that
// succeed. Any other call panics (the embedded nil interface), which
// would say the scenario reached further than it means to.
type runPD struct {
	pd.Client
	store *metapb.Store
}

func (p *runPD) GetStore(context.Context, uint64) (*metapb.Store, error) { return p.store, nil }
func (p *runPD) GetAllStores(context.Context, ...opt.GetStoreOption) ([]*metapb.Store, error) {
	return []*metapb.Store{p.store}, nil
}
func (p *runPD) UpdateGCSafePoint(context.Context, uint64) (uint64, error) { return 0, nil }
func (p *runPD) UpdateServiceGCSafePoint(context.Context, string, int64, uint64) (uint64, error) {
	return 0, nil
}

// TestRunJoinsItsGoroutines: Run returns only once every goroutine it
// started has ended. The scenario: a task whose storage cannot be opened,
// so its start is retried on a goroutine of its own (retryStart); the
// retry's open answers only after Run's context ended, and then not
// before Run begins to wait for its goroutines (or, were Run not to wait,
// before Run returned: then the test fails every time). Once Run returns,
// no goroutine runs the agent's code, and the lifetime counts none. A
// goroutine started outside the lifetime is TestEveryGoroutineSpawned's
// to catch: here it would only race Run's return.
func TestRunJoinsItsGoroutines(t *testing.T) {
	ctx := context.Background()
	cfg := runConfig(t, "joined")

	var a *Agent
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	ran := make(chan struct{})
	retrying := make(chan struct{})
	var starts atomic.Int32
	open := func(octx context.Context, _ *brpb.StorageBackend) (storage.Storage, error) {
		if _, ok := octx.Deadline(); ok {
			// The coordinator's neighbour check (bounded by a timeout),
			// not a start of the task.
			return nil, errors.New("injected: no storage")
		}
		if starts.Add(1) == 1 {
			// startTask: a retryable error, retried on a goroutine.
			return nil, fmt.Errorf("injected: %w", syscall.ECONNREFUSED)
		}
		close(retrying)
		<-octx.Done()
		select {
		case <-a.life.Load().waiting:
		case <-ran:
		}
		return nil, octx.Err()
	}
	cfg.OpenStorage = open
	a, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() {
		defer close(ran)
		runErr <- a.Run(runCtx)
	}()
	select {
	case <-retrying:
	case err := <-runErr:
		t.Fatalf("Run returned before the task's start was retried: %v", err)
	}
	cancel()
	if err := <-runErr; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := a.life.Load().live.Load(); n != 0 {
		t.Errorf("Run returned with %d of its goroutines still running", n)
	}
	if stacks := agentGoroutines(); len(stacks) > 0 {
		t.Errorf("Run returned while goroutines of the agent still run:\n%s", strings.Join(stacks, "\n\n"))
	}
}

// agentGoroutines are the stacks of the goroutines running code of this
// package or of a package under it, other than the tests' own.
func agentGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "testing.tRunner") || strings.Contains(g, "_test.go") {
			continue
		}
		for _, line := range strings.Split(g, "\n") {
			if strings.HasPrefix(line, "logbackup/streamagent.") || strings.HasPrefix(line, "logbackup/streamagent/") {
				out = append(out, g)
				break
			}
		}
	}
	return out
}
