package playground

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"logbackup/streamagent/agentrun"
)

// AgentSubcommand is the hidden first argument that makes a binary holding
// the playground run cmd/streamagent's code instead: the playground starts
// each agent as a separate process by executing itself with it.
const AgentSubcommand = "__streamagent"

// RunAgentIfAsked runs the stream agent and exits when the process was
// started as one of the playground's agents. Every binary that runs the
// playground calls it first thing in main (tests: in TestMain).
func RunAgentIfAsked() {
	if len(os.Args) > 1 && os.Args[1] == AgentSubcommand {
		os.Exit(agentrun.Main(os.Args[2:], os.Stderr))
	}
}

// agentSet runs one agent process per store and restarts one that exits
// unless it is held down on purpose (kill, SIGTERM).
type agentSet struct {
	exe    string
	pdAddr string
	dir    string
	flush  time.Duration
	// extra are more agent flags (the retry budget, when set).
	extra []string
	event func(format string, args ...any)
	procs map[uint64]*agentProc
}

// agentProc is one store's agent process across its restarts.
type agentProc struct {
	set     *agentSet
	store   uint64
	logPath string
	tmpDir  string

	mu         sync.Mutex
	statusAddr string
	cmd        *exec.Cmd
	exited     chan struct{} // closed when the current process has exited
	held       bool          // stopped on purpose: no automatic restart
	closing    bool
	starts     int
	unexpected int            // exits nobody asked for
	reasons    map[string]int // their last words (the log's last Error: or panic line)
	logStart   int64          // the log's size when the current process started
	downSince  time.Time
}

func newAgentSet(pdAddr, dir string, flush time.Duration, stores []uint64, event func(string, ...any)) (*agentSet, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the playground binary to start agents from: %w", err)
	}
	s := &agentSet{exe: exe, pdAddr: pdAddr, dir: dir, flush: flush, event: event, procs: map[uint64]*agentProc{}}
	for _, id := range stores {
		p := &agentProc{set: s, store: id, logPath: filepath.Join(dir, fmt.Sprintf("agent-%d.log", id)),
			tmpDir: filepath.Join(dir, fmt.Sprintf("agent-%d", id), "tmp")}
		s.procs[id] = p
	}
	return s, nil
}

// startAll starts every agent.
func (s *agentSet) startAll() error {
	for _, id := range s.stores() {
		p := s.procs[id]
		p.mu.Lock()
		err := p.startLocked()
		p.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *agentSet) stores() []uint64 {
	ids := make([]uint64, 0, len(s.procs))
	for id := range s.procs {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// stopAll asks every agent to stop (SIGTERM: a final flush), then kills
// those still running after grace.
func (s *agentSet) stopAll(grace time.Duration) {
	var wg sync.WaitGroup
	for _, p := range s.procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.mu.Lock()
			p.closing = true
			p.mu.Unlock()
			if !p.stop(syscall.SIGTERM, grace) {
				p.stop(syscall.SIGKILL, 10*time.Second)
			}
		}()
	}
	wg.Wait()
}

// unexpectedExits counts agent exits nobody asked for, over all stores, by
// their last words.
func (s *agentSet) unexpectedExits() (int, map[string]int) {
	n, why := 0, map[string]int{}
	for _, p := range s.procs {
		p.mu.Lock()
		n += p.unexpected
		for r, k := range p.reasons {
			why[r] += k
		}
		p.mu.Unlock()
	}
	return n, why
}

// lastWords finds why a process exited in its log since from: the last
// line that starts with "Error:", "panic:" or "fatal error:".
func lastWords(path string, from int64) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no log)"
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "(no log)"
	}
	from = max(from, fi.Size()-64<<10)
	b := make([]byte, fi.Size()-from)
	if _, err := f.ReadAt(b, from); err != nil && !errors.Is(err, io.EOF) {
		return "(log unreadable)"
	}
	why := "(no error line in the log)"
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "Error:") || strings.HasPrefix(line, "panic:") || strings.HasPrefix(line, "fatal error:") {
			why = line
		}
	}
	if len(why) > 160 {
		why = why[:160] + "…"
	}
	return why
}

// startFailure: an agent that could not reach PD or etcd at start exits,
// and its supervisor starts it again — expected while PD is away.
func startFailure(why string) bool {
	return strings.HasPrefix(why, "Error: connect to PD") || strings.Contains(why, "reach etcd")
}

// freePort picks a loopback port nobody listens on now.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startLocked starts the agent process. p.mu is held.
func (p *agentProc) startLocked() error {
	if p.statusAddr == "" {
		addr, err := freePort()
		if err != nil {
			return fmt.Errorf("agent %d: pick a status port: %w", p.store, err)
		}
		p.statusAddr = addr
	}
	if err := os.MkdirAll(p.tmpDir, 0o755); err != nil {
		return fmt.Errorf("agent %d: %w", p.store, err)
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("agent %d: log file: %w", p.store, err)
	}
	defer logf.Close() // the child has its own descriptor
	if fi, err := logf.Stat(); err == nil {
		p.logStart = fi.Size()
	}
	fmt.Fprintf(logf, "==== playground: starting the agent of store %d at %s\n", p.store, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.set.exe, AgentSubcommand,
		"--pd", p.set.pdAddr,
		"--store-id", fmt.Sprint(p.store),
		"--status-addr", p.statusAddr,
		"--flush-interval", p.set.flush.String(),
		"--reconcile-interval", "1s",
		"--coordinator-interval", "1s",
		"--temp-dir", p.tmpDir)
	cmd.Args = append(cmd.Args, p.set.extra...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// An agent never outlives the playground, even one killed by -9.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("agent %d: start: %w", p.store, err)
	}
	p.cmd, p.exited, p.held = cmd, make(chan struct{}), false
	p.starts++
	exited := p.exited
	go p.wait(cmd, exited)
	return nil
}

// wait reaps the process and restarts it when nobody asked it to stop.
func (p *agentProc) wait(cmd *exec.Cmd, exited chan struct{}) {
	err := cmd.Wait()
	p.mu.Lock()
	close(exited)
	p.downSince = time.Now()
	if p.held || p.closing {
		p.mu.Unlock()
		return
	}
	p.unexpected++
	p.statusAddr = "" // in case the port was the problem
	why := lastWords(p.logPath, p.logStart)
	if p.reasons == nil {
		p.reasons = map[string]int{}
	}
	p.reasons[why]++
	p.mu.Unlock()
	if startFailure(why) {
		p.set.event("agent %d could not start (%s); starting it again in 1s", p.store, strings.TrimPrefix(why, "Error: "))
	} else {
		p.set.event("agent %d exited by itself (%v: %s); restarting it in 1s — see %s", p.store, err, why, p.logPath)
	}
	time.Sleep(time.Second)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == cmd && !p.held && !p.closing {
		if err := p.startLocked(); err != nil {
			p.set.event("agent %d: %v", p.store, err)
		}
	}
}

// stop sends sig and waits up to timeout for the process to exit; the
// agent stays down until release. It reports whether it exited.
func (p *agentProc) stop(sig syscall.Signal, timeout time.Duration) bool {
	p.mu.Lock()
	p.held = true
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return true
	}
	select {
	case <-exited:
		return true
	default:
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return false
	}
	select {
	case <-exited:
		return true
	case <-time.After(timeout):
		return false
	}
}

// release restarts an agent that stop held down.
func (p *agentProc) release() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return nil
	}
	select {
	case <-p.exited:
	default:
		p.held = false
		return nil // still running (stop timed out)
	}
	return p.startLocked()
}

// addr is where the agent serves /metrics and /status.
func (p *agentProc) addr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.statusAddr
}
