package meta_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"logbackup/meta"
	"logbackup/tests/etcdtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// etcd's server and client leave these behind until process exit.
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/pkg/v3/logutil.(*MergeLogger).outputLoop"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/server/v3/etcdserver/api/v3rpc.(*serverWatchStream).recvLoop"),
	)
}

func task(name string) *brpb.StreamBackupTaskInfo {
	return &brpb.StreamBackupTaskInfo{Name: name, StartTs: 100, EndTs: 999, TableFilter: []string{"*.*"},
		Storage: &brpb.StorageBackend{Backend: &brpb.StorageBackend_Local{Local: &brpb.Local{Path: "/tmp/x"}}}}
}

var ranges = []meta.Range{{StartKey: []byte("m"), EndKey: []byte("n")}, {StartKey: []byte("t"), EndKey: []byte("u")}}

func setup(t *testing.T) (*meta.Client, *clientv3.Client, *etcdtest.Server) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	return meta.NewClient(cli), cli, srv
}

func keysUnder(t *testing.T, cli *clientv3.Client, prefix string) []string {
	t.Helper()
	resp, err := cli.Get(context.Background(), prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, string(kv.Key))
	}
	return out
}

func TestTaskLifecycle(t *testing.T) {
	c, cli, _ := setup(t)
	ctx := context.Background()
	if err := c.PutTask(ctx, task("pitr"), ranges); err != nil {
		t.Fatal(err)
	}
	if err := c.PutTask(ctx, task("other"), ranges); !errors.Is(err, meta.ErrTaskExists) {
		t.Fatalf("second task: %v", err)
	}
	if err := c.PutTask(ctx, task("bad/name"), ranges); err == nil {
		t.Fatal("bad name accepted")
	}
	st, err := c.GetTask(ctx, "pitr")
	if err != nil || st.Info.StartTs != 100 || st.Pause.Paused {
		t.Fatalf("GetTask: %+v %v", st, err)
	}
	rs, err := c.Ranges(ctx, "pitr")
	if err != nil || len(rs) != 2 || string(rs[0].StartKey) != "m" || string(rs[1].EndKey) != "u" {
		t.Fatalf("Ranges: %+v %v", rs, err)
	}
	if _, err := c.GetTask(ctx, "nope"); !errors.Is(err, meta.ErrTaskNotFound) {
		t.Fatalf("missing task: %v", err)
	}
	if err := c.PauseTask(ctx, "nope", nil); !errors.Is(err, meta.ErrTaskNotFound) {
		t.Fatalf("pause missing task: %v", err)
	}
	p := meta.NewManualPause("h", 1, time.Now(), "why")
	if err := c.PauseTask(ctx, "pitr", p); err != nil {
		t.Fatal(err)
	}
	st, _ = c.GetTask(ctx, "pitr")
	if !st.Pause.Paused || st.Pause.V2 == nil || st.Pause.V2.Severity != meta.SeverityManual {
		t.Fatalf("paused: %+v", st.Pause)
	}
	if err := c.PauseTask(ctx, "pitr", nil); err != nil { // legacy empty value
		t.Fatal(err)
	}
	if st, _ = c.GetTask(ctx, "pitr"); !st.Pause.Paused || st.Pause.V2 != nil {
		t.Fatalf("legacy pause: %+v", st.Pause)
	}
	if err := c.ResumeTask(ctx, "pitr"); err != nil {
		t.Fatal(err)
	}
	tasks, rev, err := c.ListTasks(ctx)
	if err != nil || len(tasks) != 1 || tasks[0].Pause.Paused || rev == 0 {
		t.Fatalf("ListTasks: %v %d %v", tasks, rev, err)
	}
	e := &brpb.StreamBackupError{HappenAt: 5, ErrorCode: "KV:LogBackup:Io", ErrorMessage: "m", StoreId: 4}
	if err := c.ReportLastError(ctx, "pitr", e); err != nil {
		t.Fatal(err)
	}
	errs, err := c.LastErrors(ctx, "pitr")
	if err != nil || len(errs) != 1 || errs[4].ErrorCode != "KV:LogBackup:Io" {
		t.Fatalf("LastErrors: %v %v", errs, err)
	}
	if err := c.ClearLastErrors(ctx, "pitr"); err != nil {
		t.Fatal(err)
	}
	if errs, _ = c.LastErrors(ctx, "pitr"); len(errs) != 0 {
		t.Fatalf("not cleared: %v", errs)
	}
	if err := c.DeleteTask(ctx, "pitr"); err != nil {
		t.Fatal(err)
	}
	if left := keysUnder(t, cli, meta.Prefix+"/"); len(left) != 0 {
		t.Fatalf("left: %v", left)
	}
	if err := c.DeleteTask(ctx, "pitr"); !errors.Is(err, meta.ErrTaskNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
}

func TestDialUnreachable(t *testing.T) {
	began := time.Now()
	_, err := meta.Dial(context.Background(), meta.DialConfig{Endpoints: []string{"127.0.0.1:1"}, DialTimeout: 500 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "cannot reach etcd") {
		t.Fatalf("Dial to a dead endpoint: %v", err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Fatalf("Dial took %s with a 500ms timeout", took)
	}
	if _, err := meta.Dial(context.Background(), meta.DialConfig{Endpoints: []string{"127.0.0.1:2379"}, CAFile: "/nonexistent/ca.pem"}); err == nil {
		t.Fatal("missing CA file accepted")
	}
}

func TestDialReachable(t *testing.T) {
	srv := etcdtest.Start(t)
	cli, err := meta.Dial(context.Background(), meta.DialConfig{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cli.Close()
}

// TestDialSilentEndpoint: a port that accepts connections but never speaks
// (a wrong service, a hung process) must not hang Dial either.
func TestDialSilentEndpoint(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
		}
	}()
	defer func() {
		lis.Close()
		<-done
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	began := time.Now()
	_, err = meta.Dial(context.Background(), meta.DialConfig{Endpoints: []string{lis.Addr().String()}, DialTimeout: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "cannot reach etcd at ["+lis.Addr().String()+"] within 300ms") {
		t.Fatalf("Dial to a silent endpoint: %v", err)
	}
	if took := time.Since(began); took > 3*time.Second {
		t.Fatalf("Dial took %s with a 300ms timeout", took)
	}
}

// TestGetTaskIsConsistent races a writer that changes info and pause
// together against readers: every read must see a pair from one revision
// (StartTs even ⇔ paused with the message naming that StartTs).
func TestGetTaskIsConsistent(t *testing.T) {
	c, cli, _ := setup(t)
	ctx := context.Background()
	first := task("pitr")
	first.StartTs = 1 // odd and not paused, like every odd write below
	if err := c.PutTask(ctx, first, ranges); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	writerDone := make(chan error, 1)
	go func() {
		defer close(stop)
		for i := uint64(2); i <= 150; i++ {
			info := task("pitr")
			info.StartTs = i
			raw, _ := meta.EncodeTaskInfo(info)
			ops := []clientv3.Op{clientv3.OpPut(meta.InfoKey("pitr"), string(raw))}
			if i%2 == 0 {
				p, _ := meta.EncodePause(meta.NewManualPause("h", 1, time.Unix(0, 0), fmt.Sprint(i)))
				ops = append(ops, clientv3.OpPut(meta.PauseKey("pitr"), string(p)))
			} else {
				ops = append(ops, clientv3.OpDelete(meta.PauseKey("pitr")))
			}
			if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
				writerDone <- err
				return
			}
		}
		writerDone <- nil
	}()
	check := func(st *meta.TaskStatus) error {
		wantPaused := st.Info.StartTs%2 == 0
		if st.Pause.Paused != wantPaused {
			return fmt.Errorf("start_ts %d with paused=%v", st.Info.StartTs, st.Pause.Paused)
		}
		if wantPaused {
			if text, _ := st.Pause.V2.Text(); text != fmt.Sprint(st.Info.StartTs) {
				return fmt.Errorf("start_ts %d with the pause of %q", st.Info.StartTs, text)
			}
		}
		return nil
	}
	var wg sync.WaitGroup
	reads := make([]int, 2)
	for r := range reads {
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				var sts []*meta.TaskStatus
				if r == 0 {
					st, err := c.GetTask(ctx, "pitr")
					if err != nil {
						t.Error(err)
						return
					}
					sts = append(sts, st)
				} else {
					list, _, err := c.ListTasks(ctx)
					if err != nil {
						t.Error(err)
						return
					}
					sts = list
				}
				for _, st := range sts {
					if err := check(st); err != nil {
						t.Error(err)
						return
					}
				}
				reads[r]++
			}
		}(r)
	}
	wg.Wait()
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	if reads[0] == 0 || reads[1] == 0 {
		t.Fatalf("readers did not overlap the writer: %v", reads)
	}
}

// TestRangesExactAndPaged: range start keys are raw bytes ('/', NUL, 0xff
// included), come back exactly and sorted, across several scan pages.
func TestRangesExactAndPaged(t *testing.T) {
	c, cli, _ := setup(t)
	ctx := context.Background()
	odd := []meta.Range{
		{StartKey: []byte("t\x80\x00\x00\x00\x00\x00\x00\xff_r"), EndKey: []byte("t\x80\x00\x00\x00\x00\x00\x01\x00")},
		{StartKey: []byte("m//x"), EndKey: []byte("m//y")},
		{StartKey: []byte{}, EndKey: []byte("a\x00")},
		{StartKey: []byte("z\xff\xff"), EndKey: nil},
	}
	if err := c.PutTask(ctx, task("pitr"), odd); err != nil {
		t.Fatal(err)
	}
	got, err := c.Ranges(ctx, "pitr")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"\x00a\x00", "m//x\x00m//y", "t\x80\x00\x00\x00\x00\x00\x00\xff_r\x00t\x80\x00\x00\x00\x00\x00\x01\x00", "z\xff\xff\x00"}
	if len(got) != len(want) {
		t.Fatalf("got %d ranges: %q", len(got), got)
	}
	for i, r := range got {
		if s := string(r.StartKey) + "\x00" + string(r.EndKey); s != want[i] {
			t.Errorf("range %d = %q, want %q", i, s, want[i])
		}
	}
	// More ranges than one scan page (512); written directly, since one
	// transaction is capped at etcd's max-txn-ops.
	for i := 0; i < 1100; i++ {
		if _, err := cli.Put(ctx, meta.RangeKey("big", []byte(fmt.Sprintf("k%05d", i))), fmt.Sprintf("k%05d~", i)); err != nil {
			t.Fatal(err)
		}
	}
	got, err = c.Ranges(ctx, "big")
	if err != nil || len(got) != 1100 {
		t.Fatalf("%d ranges, %v", len(got), err)
	}
	for i, r := range got {
		if string(r.StartKey) != fmt.Sprintf("k%05d", i) || string(r.EndKey) != fmt.Sprintf("k%05d~", i) {
			t.Fatalf("range %d = %q", i, r)
		}
	}
}

func TestPutTaskRefusals(t *testing.T) {
	c, _, _ := setup(t)
	ctx := context.Background()
	cases := map[string]struct {
		info   *brpb.StreamBackupTaskInfo
		ranges []meta.Range
		want   string
	}{
		"nil info":     {nil, ranges, "task name is empty"},
		"bad name":     {task("a-b"), ranges, "letters, digits and underscores"},
		"slash":        {task("a/b"), ranges, "letters, digits and underscores"},
		"inverted":     {task("pitr"), []meta.Range{{StartKey: []byte("b"), EndKey: []byte("a")}}, "is empty"},
		"duplicate":    {task("pitr"), []meta.Range{{StartKey: []byte("a"), EndKey: []byte("b")}, {StartKey: []byte("a"), EndKey: []byte("c")}}, "two ranges start"},
		"too many ops": {task("pitr"), manyRanges(200), "max-txn-ops"},
	}
	for name, tc := range cases {
		err := c.PutTask(ctx, tc.info, tc.ranges)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, tc.want)
		}
	}
	if tasks, _, err := c.ListTasks(ctx); err != nil || len(tasks) != 0 {
		t.Fatalf("a refused PutTask left a task: %v %v", tasks, err)
	}
	// One task per cluster, whatever the name; the same name too.
	if err := c.PutTask(ctx, task("pitr"), manyRanges(100)); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"pitr", "pitr2", "a"} {
		if err := c.PutTask(ctx, task(name), ranges); !errors.Is(err, meta.ErrTaskExists) {
			t.Errorf("second task %q: %v", name, err)
		}
	}
	if rs, err := c.Ranges(ctx, "pitr"); err != nil || len(rs) != 100 {
		t.Fatalf("the first task's ranges changed: %d %v", len(rs), err)
	}
}

func manyRanges(n int) []meta.Range {
	out := make([]meta.Range, n)
	for i := range out {
		out[i] = meta.Range{StartKey: []byte(fmt.Sprintf("t%04d", i)), EndKey: []byte(fmt.Sprintf("t%04d~", i))}
	}
	return out
}

// TestStringsHideCredentials: a task's status and events may be logged; the
// storage backend (S3 keys) must not come with them.
func TestStringsHideCredentials(t *testing.T) {
	info := task("pitr")
	info.Storage = &brpb.StorageBackend{Backend: &brpb.StorageBackend_S3{S3: &brpb.S3{
		Bucket: "b", AccessKey: "AKIAEXAMPLE", SecretAccessKey: "s3cr3t"}}}
	for _, s := range []string{
		fmt.Sprint(&meta.TaskStatus{Info: info}),
		fmt.Sprintf("%v", meta.TaskEvent{Type: meta.EventAdd, Name: "pitr", Info: info}),
		fmt.Sprintf("%+v", meta.TaskEvent{Type: meta.EventAdd, Name: "pitr", Info: info}),
	} {
		if strings.Contains(s, "s3cr3t") || strings.Contains(s, "AKIAEXAMPLE") || !strings.Contains(s, "pitr") {
			t.Errorf("printed %q", s)
		}
	}
}

func TestReportLastErrorNil(t *testing.T) {
	c, _, _ := setup(t)
	if err := c.ReportLastError(context.Background(), "pitr", nil); err == nil {
		t.Fatal("nil error reported")
	}
}

// TestRequestTimeout: with etcd cut off, every call returns within the
// client's request timeout instead of hanging on a context without one.
func TestRequestTimeout(t *testing.T) {
	srv := etcdtest.Start(t)
	proxy := newTCPProxy(t, srv.Endpoint())
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{proxy.addr}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	c := meta.NewClient(cli, meta.WithRequestTimeout(300*time.Millisecond))
	ctx := context.Background()
	if err := c.PutTask(ctx, task("pitr"), ranges); err != nil {
		t.Fatal(err)
	}
	proxy.cut()
	calls := map[string]func() error{
		"GetTask":   func() error { _, err := c.GetTask(ctx, "pitr"); return err },
		"ListTasks": func() error { _, _, err := c.ListTasks(ctx); return err },
		"Ranges":    func() error { _, err := c.Ranges(ctx, "pitr"); return err },
		"PauseTask": func() error { return c.PauseTask(ctx, "pitr", nil) },
		"Advance":   func() error { _, err := c.AdvanceGlobalCheckpoint(ctx, "pitr", 5); return err },
		"Delete":    func() error { return c.DeleteTask(ctx, "pitr") },
	}
	for name, call := range calls {
		began := time.Now()
		err := call()
		if took := time.Since(began); err == nil || took > 3*time.Second {
			t.Errorf("%s with etcd cut off: %v after %s", name, err, took)
		}
	}
}
