package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pingcap/log"
	"go.uber.org/zap/zapcore"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/tests/eventually"
	"logbackup/tests/simcluster"
)

// BenchmarkBurstRSS: the agent as the deployed binary (cmd/streamagent,
// built once, run as its own process against the simulated cluster's PD
// address), a 64 MiB memory quota, and a burst of ten times the quota in
// 1 KiB rows written as fast as the source goes with no flush due during
// it. Reported: the agent process's peak RSS (the kernel's VmHWM, so
// everything the Go runtime holds, not only the buffer accounting), the
// margin over the quota, and the burst's rate into the agent. The goal is
// quota + 32 MiB (issue 19; the agent's default --memory-limit), with
// backpressure (spill, slowed intake) instead of an OOM.
// LOGBACKUP_BENCH_AGENT_ARGS adds flags to the agent's command line (e.g.
// another --memory-limit).
//
//	go test -run '^$' -bench BurstRSS -benchtime 1x ./tests/e2e/
func BenchmarkBurstRSS(b *testing.B) {
	const quota = 64 << 20
	const value = 1024
	rows := int64(10 * quota / value)
	bin := buildAgent(b)
	if v := os.Getenv("LOGBACKUP_BENCH_AGENT_BIN"); v != "" {
		bin = v // a binary built otherwise (other flags, tags or commit), compared in the same run
	}
	for i := 0; i < b.N; i++ {
		log.SetLevel(zapcore.ErrorLevel)
		ctx := context.Background()
		c := startPDCluster(b, ctx, simcluster.Config{Stores: 1})
		m := meta.NewClient(pdEtcd{c}.Client(b))
		start, _ := c.TSO(ctx)
		if err := br.Start(ctx, br.NewEnv(m).WithPD(c.PD()), br.StartOptions{TaskName: "burst", StartTS: fmt.Sprint(start),
			Storage: "local://" + b.TempDir()}, io.Discard); err != nil {
			b.Fatal(err)
		}
		status := freeAddr(b)
		args := []string{"--pd", c.PDAddr(), "--store-id", fmt.Sprint(c.StoreIDs()[0]), "--status-addr", status,
			"--flush-interval", "10m", "--memory-quota", fmt.Sprint(quota), "--temp-dir", b.TempDir()}
		cmd := exec.Command(bin, append(args, strings.Fields(os.Getenv("LOGBACKUP_BENCH_AGENT_ARGS"))...)...)
		logf, err := os.Create(filepath.Join(b.TempDir(), "agent.log"))
		if err != nil {
			b.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		if v := os.Getenv("BENCH_AGENT_GOMEMLIMIT"); v != "" {
			cmd.Env = append(os.Environ(), "GOMEMLIMIT="+v)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		stopped := false
		stop := func() {
			if !stopped {
				stopped = true
				cmd.Process.Kill()
				cmd.Wait()
				logf.Close()
			}
		}
		b.Cleanup(stop)
		// The agent observes the task's region before the burst.
		inc := mustIncarnation(b, m, "burst")
		eventually.True(b, time.Minute, func() bool {
			ps, _ := m.Progresses(ctx, "burst", inc)
			p := ps[c.StoreIDs()[0]]
			return p != nil && p.ObservedRegions > 0 && p.Scanning == 0
		}, "the agent to observe its region; its log: %s", logf.Name())
		base := procStatusKB(b, cmd.Process.Pid, "VmRSS")
		baseAnon, baseFile := procStatusKB(b, cmd.Process.Pid, "RssAnon"), procStatusKB(b, cmd.Process.Pid, "RssFile")
		baseText, baseRO := binaryRSSKB(b, cmd.Process.Pid, bin)
		w, err := c.NewBulkWriter(simcluster.BulkConfig{Keys: simcluster.KeysTiDBRow, Regions: 16, Split: true, ValueSize: value})
		if err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		stopSampler := heapAtPeak(b, cmd.Process.Pid, status)
		began := time.Now()
		cpu0 := procCPU(b, cmd.Process.Pid)
		st, err := w.Write(ctx, rows)
		if err != nil {
			b.Fatal(err)
		}
		// The agent has taken the burst in once it has received every
		// committed row (its own counter); then its peak is final.
		eventually.TrueEvery(b, 5*time.Minute, 100*time.Millisecond, func() bool {
			return metricValue(b, status, "logbackup_agent_events_total") >= float64(st.Rows)
		}, "the agent to take the burst in")
		took := time.Since(began)
		cpu := procCPU(b, cmd.Process.Pid) - cpu0
		stopSampler()
		spills := metricValue(b, status, "logbackup_agent_spills_total")
		memWait := metricValue(b, status, "logbackup_agent_memory_wait_seconds_total")
		peak := procStatusKB(b, cmd.Process.Pid, "VmHWM")
		burstFile := procStatusKB(b, cmd.Process.Pid, "RssFile")
		b.StopTimer()
		stop()
		b.ReportMetric(float64(peak)/1024, "peak-RSS-MiB")
		b.ReportMetric(float64(peak)/1024-quota>>20, "over-quota-MiB")
		b.ReportMetric(float64(base)/1024, "idle-RSS-MiB")
		// Idle, split: anonymous memory (heap, stacks) and file pages (the
		// binary's code and data the process touched).
		b.ReportMetric(float64(baseAnon)/1024, "idle-anon-MiB")
		b.ReportMetric(float64(baseFile)/1024, "idle-file-MiB")
		// Of the file pages, the binary's code (.text) and its read-only
		// data (.rodata, .gopclntab, the type and itab tables); what is left
		// is the C library and the binary's .data. Most of them are touched
		// by package initialisation, a 64 KiB fault-around block at a time
		// (docs/PERFORMANCE.md, "Idle RSS: what the file pages are").
		b.ReportMetric(float64(baseText)/1024, "idle-text-MiB")
		b.ReportMetric(float64(baseRO)/1024, "idle-rodata-MiB")
		b.ReportMetric(float64(burstFile)/1024, "after-burst-file-MiB")
		b.ReportMetric(float64(st.Bytes)/(1<<20), "burst-MiB")
		b.ReportMetric(float64(st.Rows)/took.Seconds(), "agent-rows/s")
		b.ReportMetric(spills, "spills")
		// How long the receiver held off for the collector, the process
		// being over its memory limit.
		b.ReportMetric(memWait, "memory-wait-s")
		// The agent's own process alone: intake, matching, buffering,
		// spills and the flushes the file size limit starts.
		b.ReportMetric(float64(cpu)/float64(st.Rows), "agent-cpu-ns/row")
	}
}

// procCPU is a process's CPU time so far (user + system, from
// /proc/<pid>/stat, in the kernel's 10 ms ticks).
func procCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The fields after the command name (which may hold spaces), from the
	// state (field 3): utime and stime are fields 14 and 15.
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+1:]))
	if len(f) < 13 {
		b.Fatalf("short /proc/%d/stat: %q", pid, raw)
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			b.Fatalf("/proc/%d/stat: %v", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

// heapAtPeak, when LOGBACKUP_BENCH_HEAPPROFILE names a directory, reads
// the agent's RSS every 50 ms and keeps the heap profile (text form, with
// the Go runtime's memory statistics at its end) of the moment the RSS
// was highest, as <dir>/burst-heap.txt: where the peak goes.
func heapAtPeak(b *testing.B, pid int, status string) (stop func()) {
	dir := os.Getenv("LOGBACKUP_BENCH_HEAPPROFILE")
	if dir == "" {
		return func() {}
	}
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		var top int64
		for {
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
			rss, err := readProcStatusKB(pid, "VmRSS")
			if err != nil {
				return
			}
			if rss <= top+1024 { // a new peak by at least 1 MiB
				continue
			}
			top = rss
			resp, err := http.Get("http://" + status + "/debug/pprof/heap?debug=1")
			if err != nil {
				continue
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				os.WriteFile(filepath.Join(dir, "burst-heap.txt"), append([]byte(fmt.Sprintf("# VmRSS %d kB\n", rss)), body...), 0o644)
			}
		}
	}()
	return func() { close(done); <-finished }
}

// buildAgent builds cmd/streamagent once for the benchmark.
func buildAgent(b *testing.B) string {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "streamagent")
	out, err := exec.Command("go", "build", "-o", bin, "logbackup/cmd/streamagent").CombinedOutput()
	if err != nil {
		b.Fatalf("build cmd/streamagent: %v\n%s", err, out)
	}
	return bin
}

// binaryRSSKB is how much of the executable's code (its read-execute
// mapping) and read-only data (its read-only mapping: .rodata, .gopclntab,
// the type and itab links) is resident in process pid, in kB, from
// /proc/<pid>/smaps.
func binaryRSSKB(b *testing.B, pid int, bin string) (text, rodata int64) {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		b.Fatal(err)
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		b.Fatal(err)
	}
	var into *int64
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 6 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"):
			// A mapping's header: range, perms, offset, dev, inode, path.
			into = nil
			if f[5] == abs {
				switch f[1] {
				case "r-xp":
					into = &text
				case "r--p":
					into = &rodata
				}
			}
		case len(f) == 3 && f[0] == "Rss:" && into != nil:
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				b.Fatalf("/proc/%d/smaps: %q: %v", pid, line, err)
			}
			*into += n
		}
	}
	if text == 0 || rodata == 0 {
		b.Fatalf("no mapping of %s in /proc/%d/smaps", abs, pid)
	}
	return text, rodata
}

// procStatusKB reads one kB field of /proc/<pid>/status (VmRSS, VmHWM).
func procStatusKB(b *testing.B, pid int, field string) int64 {
	b.Helper()
	if runtime.GOOS != "linux" {
		b.Skip("reads /proc")
	}
	n, err := readProcStatusKB(pid, field)
	if err != nil {
		b.Fatal(err)
	}
	return n
}

func readProcStatusKB(pid int, field string) (int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: %w", line, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

func mustIncarnation(b *testing.B, m *meta.Client, task string) int64 {
	b.Helper()
	t, err := m.GetTask(context.Background(), task)
	if err != nil {
		b.Fatal(err)
	}
	return t.Incarnation
}

// BenchmarkCheckpointLag: one agent (in process), 1 KiB rows over 16
// regions, flush interval 1 s. First the unthrottled rate is measured
// (as BenchmarkAgentThroughput does), then the writer runs at 80 % of it
// for 20 s while the global checkpoint's lag behind PD's clock is sampled
// every 100 ms. Goal: p99 ≤ flush interval + 2 s.
//
//	go test -run '^$' -bench CheckpointLag -benchtime 200000x ./tests/e2e/
func BenchmarkCheckpointLag(b *testing.B) {
	full := benchThroughput(b, 1024, 16, "local", 0)
	b.StopTimer()
	rate := int(0.8 * full)
	ctx := context.Background()
	c := startPDCluster(b, ctx, simcluster.Config{Stores: 1})
	m := meta.NewClient(pdEtcd{c}.Client(b))
	start, _ := c.TSO(ctx)
	if err := br.Start(ctx, br.NewEnv(m).WithPD(c.PD()), br.StartOptions{TaskName: "lag", StartTS: fmt.Sprint(start), Storage: "local://" + b.TempDir()}, io.Discard); err != nil {
		b.Fatal(err)
	}
	e := &benchEnv{c: c, pd: c.PD(), m: m, start: start}
	_, stopAgent := e.agent(b, time.Second)
	defer stopAgent()
	w, err := c.NewBulkWriter(simcluster.BulkConfig{Keys: simcluster.KeysTiDBRow, Regions: 16, Split: true, ValueSize: 1024, Rate: rate,
		KeysPerShard: 4096, KeepVersions: 2})
	if err != nil {
		b.Fatal(err)
	}
	wctx, stopWriter := context.WithTimeout(ctx, 25*time.Second)
	defer stopWriter()
	go w.Write(wctx, int64(rate)*30)
	// Time is the subject: the lag under a steady load, sampled every
	// 100 ms for 20 s once 5 s of start-up are past.
	var lags []time.Duration
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for warm, end := time.Now().Add(5*time.Second), time.Now().Add(25*time.Second); ; {
		at := <-tick.C
		if at.After(end) {
			break
		}
		if at.Before(warm) {
			continue
		}
		now, err := c.TSO(ctx)
		if err != nil {
			b.Fatal(err)
		}
		g, ok, err := m.GlobalCheckpoint(ctx, "lag")
		if err != nil || !ok {
			continue
		}
		lags = append(lags, br.PhysicalTime(now).Sub(br.PhysicalTime(g)))
	}
	if len(lags) == 0 {
		b.Fatal("no checkpoint sampled")
	}
	slices.Sort(lags)
	b.ReportMetric(float64(rate), "rows/s-offered")
	b.ReportMetric(lags[len(lags)/2].Seconds(), "lag-p50-s")
	b.ReportMetric(lags[len(lags)*99/100].Seconds(), "lag-p99-s")
	b.ReportMetric(lags[len(lags)-1].Seconds(), "lag-max-s")
}

// freeAddr is a loopback address with a port free a moment ago.
func freeAddr(b *testing.B) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// metricValue scrapes one unlabelled series (summed over labels) from an
// agent's /metrics; 0 while it does not answer.
func metricValue(b *testing.B, addr, name string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0
	}
	var sum float64
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, name); ok && (strings.HasPrefix(rest, " ") || strings.HasPrefix(rest, "{")) {
			fields := strings.Fields(rest)
			if v, err := strconv.ParseFloat(fields[len(fields)-1], 64); err == nil {
				sum += v
			}
		}
	}
	return sum
}
