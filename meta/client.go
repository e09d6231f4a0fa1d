package meta

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
)

// Errors callers test for.
var (
	ErrTaskNotFound = errors.New("no such task")
	ErrTaskExists   = errors.New("a log backup task already exists; only one task per cluster")
)

// DefaultRequestTimeout bounds every etcd request the client makes.
const DefaultRequestTimeout = 5 * time.Second

// ReconnectBackoffCap is the longest a client made by Dial waits between
// two attempts to reconnect to etcd.
const ReconnectBackoffCap = 2 * time.Second

// scanPage is how many keys a paged scan reads per request.
const scanPage = 512

// Client reads and writes the /tidb/br-stream/ layout. It is safe for
// concurrent use.
type Client struct {
	cli     *clientv3.Client
	timeout time.Duration
	fence   *fence           // set on a view made by Incarnation
	sink    *[]CorruptRecord // set on a view made by Tolerant
	now     func() time.Time
}

// Option configures a Client.
type Option func(*Client)

// WithRequestTimeout sets the deadline of each etcd request.
func WithRequestTimeout(d time.Duration) Option {
	return func(c *Client) {
		if d > 0 {
			c.timeout = d
		}
	}
}

// NewClient wraps an etcd client.
func NewClient(cli *clientv3.Client, opts ...Option) *Client {
	c := &Client{cli: cli, timeout: DefaultRequestTimeout, now: time.Now}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Raw returns the underlying etcd client.
func (c *Client) Raw() *clientv3.Client { return c.cli }

// DialConfig says how to reach etcd (PD's etcd in production).
type DialConfig struct {
	Endpoints                 []string
	CAFile, CertFile, KeyFile string
	DialTimeout               time.Duration
}

// Dial connects to etcd and proves it answers within DialTimeout (default
// 5 s). clientv3.New alone does not block, so an unreachable endpoint would
// otherwise surface as a hang on the first request.
func Dial(ctx context.Context, cfg DialConfig) (*clientv3.Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("no etcd endpoints")
	}
	timeout := cfg.DialTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	// Checked before anything dials: a --cert without --ca, or a file
	// that cannot be used, must not become a plaintext connection.
	tlsCfg, err := TLSFiles{CA: cfg.CAFile, Cert: cfg.CertFile, Key: cfg.KeyFile}.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("TLS: %w", err)
	}
	eps := make([]string, len(cfg.Endpoints))
	for i, ep := range cfg.Endpoints {
		ep = strings.TrimSpace(ep)
		if tlsCfg != nil && !strings.Contains(ep, "://") {
			ep = "https://" + ep
		}
		eps[i] = ep
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   eps,
		DialTimeout: timeout,
		TLS:         tlsCfg,
		Logger:      zap.NewNop(),
		// gRPC's default reconnect backoff grows to 2 minutes: after a long
		// etcd outage the client would find etcd back that late. Capped at
		// 2 s, a client reconnects within seconds of etcd answering.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: ReconnectBackoffCap},
			MinConnectTimeout: timeout,
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("cannot reach etcd at %v within %s: %w", cfg.Endpoints, timeout, err)
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := cli.Get(pctx, Prefix, clientv3.WithCountOnly()); err != nil {
		cli.Close()
		return nil, fmt.Errorf("cannot reach etcd at %v within %s: %w", cfg.Endpoints, timeout, err)
	}
	return cli, nil
}

func (c *Client) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.timeout)
}

// Range is a raw key range [StartKey, EndKey) of a task.
type Range struct {
	StartKey, EndKey []byte
}

// PauseStatus says whether a task is paused and, for PauseV2, by whom and why.
type PauseStatus struct {
	Paused bool
	V2     *PauseV2 // nil when not paused or paused with a legacy empty value
}

// TaskStatus is a task's info and pause state read at one revision.
type TaskStatus struct {
	Info  *brpb.StreamBackupTaskInfo
	Pause PauseStatus
	// Incarnation is the create revision of the info key: a task stopped
	// and started again under the same name is another incarnation.
	Incarnation int64
	// InfoErr and PauseErr are set by a Tolerant client's reads when the
	// info or pause value is corrupt: Info then holds only the name, and a
	// corrupt pause still means paused (TiKV treats any put as a pause).
	InfoErr, PauseErr error

	infoRev, pauseRev int64 // ModRevisions, for the watcher's resync diff
}

// IncarnationKey names the task incarnation ("<name>/<incarnation>"):
// what the agent keeps per incarnation is keyed by it.
func (t *TaskStatus) IncarnationKey() string { return fmt.Sprintf("%s/%d", t.Info.Name, t.Incarnation) }

// String names the task and its state. It leaves out the storage backend,
// which can carry credentials (the gogo String of Info would print them).
func (s *TaskStatus) String() string {
	if s == nil || s.Info == nil {
		return "<no task>"
	}
	state := "running"
	switch {
	case s.Pause.Paused && s.Pause.V2 == nil:
		state = "paused"
	case s.Pause.Paused:
		state = "paused(" + s.Pause.V2.Severity + ")"
	}
	return fmt.Sprintf("task %q start_ts=%d end_ts=%d %s", s.Info.Name, s.Info.StartTs, s.Info.EndTs, state)
}

// PutTask writes the task info and its ranges in one transaction that fails
// if any task exists: one log backup task per cluster, as BR.
func (c *Client) PutTask(ctx context.Context, info *brpb.StreamBackupTaskInfo, ranges []Range) error {
	if err := ValidTaskName(info.GetName()); err != nil {
		return err
	}
	raw, err := EncodeTaskInfo(info)
	if err != nil {
		return err
	}
	if err := checkRanges(ranges); err != nil {
		return fmt.Errorf("put task %q: %w", info.Name, err)
	}
	ops := []clientv3.Op{clientv3.OpPut(InfoKey(info.Name), string(raw))}
	for _, r := range ranges {
		ops = append(ops, clientv3.OpPut(RangeKey(info.Name, r.StartKey), string(r.EndKey)))
	}
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	// Over an empty range etcd compares against a zero key, so this holds
	// exactly when no info/ key exists.
	noTask := clientv3.Compare(clientv3.CreateRevision(InfoPrefix()), "=", 0).WithPrefix()
	resp, err := c.cli.Txn(ctx).If(noTask).Then(ops...).Commit()
	if errors.Is(err, rpctypes.ErrTooManyOps) {
		// BR writes a task in one transaction too; splitting it would let
		// agents see a task with part of its ranges.
		return fmt.Errorf("put task %q: %d ranges exceed etcd's --max-txn-ops (default 128); "+
			"narrow the table filter or raise the limit: %w", info.Name, len(ranges), err)
	}
	if err != nil {
		return fmt.Errorf("put task %q: %w", info.Name, err)
	}
	if !resp.Succeeded {
		return ErrTaskExists
	}
	return nil
}

// checkRanges refuses ranges etcd or an agent could not take as given: a
// start key twice (etcd refuses duplicate keys in a transaction, and the
// second end key would silently win) or an end key not after its start
// (empty means "to the end of the key space").
func checkRanges(ranges []Range) error {
	seen := make(map[string]bool, len(ranges))
	for _, r := range ranges {
		if seen[string(r.StartKey)] {
			return fmt.Errorf("two ranges start at key %x", r.StartKey)
		}
		seen[string(r.StartKey)] = true
		if len(r.EndKey) > 0 && bytes.Compare(r.StartKey, r.EndKey) >= 0 {
			return fmt.Errorf("range [%x, %x) is empty", r.StartKey, r.EndKey)
		}
	}
	return nil
}

// listedTask is one name's info and pause keys as read at one revision,
// with decode errors kept apart so the watcher can still act on the rest
// (a corrupt pause value still means paused).
type listedTask struct {
	name     string
	hasInfo  bool
	info     *brpb.StreamBackupTaskInfo
	infoErr  error
	infoRev  int64
	inc      int64 // the info key's create revision
	paused   bool
	pause    *PauseV2
	pauseErr error
	pauseRev int64
}

func (t *listedTask) setInfo(key, value []byte, modRev, createRev int64) {
	t.hasInfo, t.infoRev, t.inc = true, modRev, createRev
	t.info, t.infoErr = decodeTaskInfoAt(string(key), value)
}

func (t *listedTask) setPause(key, value []byte, modRev int64) {
	t.paused, t.pauseRev = true, modRev
	t.pause, t.pauseErr = DecodePause(string(key), value)
}

// status is the public view of a task; any decode error wins, unless the
// client is tolerant: then the task comes back with what could be read.
func (t *listedTask) status(c *Client) (*TaskStatus, error) {
	if c.sink != nil && (t.infoErr != nil || t.pauseErr != nil) {
		for _, err := range []error{t.infoErr, t.pauseErr} {
			if err != nil && !c.tolerate(err) {
				return nil, err
			}
		}
		info := t.info
		if t.infoErr != nil {
			info = &brpb.StreamBackupTaskInfo{Name: t.name}
		}
		return &TaskStatus{Info: info, Pause: PauseStatus{Paused: t.paused, V2: t.pause}, Incarnation: t.inc,
			InfoErr: t.infoErr, PauseErr: t.pauseErr, infoRev: t.infoRev, pauseRev: t.pauseRev}, nil
	}
	if t.infoErr != nil {
		return nil, t.infoErr
	}
	if t.pauseErr != nil {
		return nil, t.pauseErr
	}
	return &TaskStatus{Info: t.info, Pause: PauseStatus{Paused: t.paused, V2: t.pause}, Incarnation: t.inc,
		infoRev: t.infoRev, pauseRev: t.pauseRev}, nil
}

// GetTask reads a task's info and pause state in one transaction, so the
// pair is consistent.
func (c *Client) GetTask(ctx context.Context, name string) (*TaskStatus, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	resp, err := c.cli.Txn(ctx).Then(clientv3.OpGet(InfoKey(name)), clientv3.OpGet(PauseKey(name))).Commit()
	if err != nil {
		return nil, fmt.Errorf("get task %q: %w", name, err)
	}
	infos := resp.Responses[0].GetResponseRange().Kvs
	if len(infos) == 0 {
		return nil, fmt.Errorf("task %q: %w", name, ErrTaskNotFound)
	}
	t := &listedTask{name: name}
	t.setInfo(infos[0].Key, infos[0].Value, infos[0].ModRevision, infos[0].CreateRevision)
	if ps := resp.Responses[1].GetResponseRange().Kvs; len(ps) > 0 {
		t.setPause(ps[0].Key, ps[0].Value, ps[0].ModRevision)
	}
	return t.status(c)
}

// ListTasks reads every task with its pause state at one revision and
// returns that revision; a watch from revision+1 misses nothing. A corrupt
// value under info/ or pause/ of a task is an error naming the key.
func (c *Client) ListTasks(ctx context.Context) ([]*TaskStatus, int64, error) {
	listed, rev, err := c.listTasks(ctx)
	if err != nil {
		return nil, 0, err
	}
	var tasks []*TaskStatus
	for _, t := range listed {
		if !t.hasInfo {
			continue // a pause key without a task is not a task
		}
		st, err := t.status(c)
		if err != nil {
			return nil, 0, err
		}
		tasks = append(tasks, st)
	}
	return tasks, rev, nil
}

// listTasks reads info/ and pause/ in one transaction and returns every
// name found under either, sorted by name.
func (c *Client) listTasks(ctx context.Context) ([]*listedTask, int64, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	resp, err := c.cli.Txn(ctx).Then(
		clientv3.OpGet(InfoPrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(PausePrefix(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, 0, fmt.Errorf("list tasks: %w", err)
	}
	byName := map[string]*listedTask{}
	get := func(name string) *listedTask {
		t, ok := byName[name]
		if !ok {
			t = &listedTask{name: name}
			byName[name] = t
		}
		return t
	}
	for _, i := range resp.Responses[0].GetResponseRange().Kvs {
		get(taskFromKey(infoDir, string(i.Key))).setInfo(i.Key, i.Value, i.ModRevision, i.CreateRevision)
	}
	for _, p := range resp.Responses[1].GetResponseRange().Kvs {
		get(taskFromKey(pauseDir, string(p.Key))).setPause(p.Key, p.Value, p.ModRevision)
	}
	out := make([]*listedTask, 0, len(byName))
	for _, t := range byName {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, resp.Header.Revision, nil
}

// scan reads every key under prefix in pages, all at the revision of the
// first page, and calls fn for each.
func (c *Client) scan(ctx context.Context, prefix string, fn func(key, value []byte) error) error {
	return c.scanRange(ctx, prefix, clientv3.GetPrefixRangeEnd(prefix), fn)
}

// scanRange is scan over the keys in [from, end).
func (c *Client) scanRange(ctx context.Context, from, end string, fn func(key, value []byte) error) error {
	prefix := from // for messages
	var rev int64
	for {
		rctx, cancel := c.ctx(ctx)
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(scanPage)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := c.cli.Get(rctx, from, opts...)
		cancel()
		if err != nil {
			return fmt.Errorf("scan %q: %w", prefix, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			if err := fn(kv.Key, kv.Value); err != nil && !c.tolerate(err) {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// Ranges returns the task's ranges sorted by start key. A range whose end
// is not after its start, or a task without any range, is malformed: it
// would observe nothing while its checkpoint never moved, and status would
// say NORMAL. (An empty end means "to the end of the key space".)
func (c *Client) Ranges(ctx context.Context, name string) ([]Range, error) {
	prefix := RangesPrefix(name)
	var out []Range
	err := c.scan(ctx, prefix, func(k, v []byte) error {
		r := Range{StartKey: bytes.Clone(k[len(prefix):]), EndKey: bytes.Clone(v)}
		if len(r.EndKey) > 0 && bytes.Compare(r.StartKey, r.EndKey) >= 0 {
			return malformed(string(k), fmt.Errorf("range end %x is not after its start %x", r.EndKey, r.StartKey))
		}
		out = append(out, r)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, malformed(prefix, errors.New("the task has no ranges"))
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i].StartKey, out[j].StartKey) < 0 })
	return out, nil
}

// DeleteTask removes every key of the task in one transaction, and only
// that task's keys (every prefix ends with '/').
func (c *Client) DeleteTask(ctx context.Context, name string) error {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	resp, err := c.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(InfoKey(name)), ">", 0)).
		Then(
			clientv3.OpDelete(InfoKey(name)),
			clientv3.OpDelete(RangesPrefix(name), clientv3.WithPrefix()),
			clientv3.OpDelete(CheckpointPrefix(name), clientv3.WithPrefix()),
			clientv3.OpDelete(PauseKey(name)),
			clientv3.OpDelete(LastErrorPrefix(name), clientv3.WithPrefix()),
			clientv3.OpDelete(StorageCheckpointPrefix(name), clientv3.WithPrefix()),
			clientv3.OpDelete(agentStatePrefix("span-checkpoint/", name), clientv3.WithPrefix()),
			clientv3.OpDelete(agentStatePrefix("history/", name), clientv3.WithPrefix()),
			clientv3.OpDelete(agentStatePrefix("recovery/", name), clientv3.WithPrefix()),
			clientv3.OpDelete(agentStatePrefix("progress/", name), clientv3.WithPrefix()),
		).Commit()
	if err != nil {
		return fmt.Errorf("delete task %q: %w", name, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("task %q: %w", name, ErrTaskNotFound)
	}
	return nil
}

// PauseTask writes the pause record of an existing task (nil = legacy empty
// value).
func (c *Client) PauseTask(ctx context.Context, name string, p *PauseV2) error {
	raw, err := EncodePause(p)
	if err != nil {
		return err
	}
	ok, err := c.commit(ctx, name, []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(InfoKey(name)), ">", 0)},
		clientv3.OpPut(PauseKey(name), string(raw)))
	if err != nil {
		return fmt.Errorf("pause task %q: %w", name, err)
	}
	if !ok {
		return fmt.Errorf("task %q: %w", name, ErrTaskNotFound)
	}
	return nil
}

// ResumeTask deletes the pause key.
func (c *Client) ResumeTask(ctx context.Context, name string) error {
	if _, err := c.commit(ctx, name, nil, clientv3.OpDelete(PauseKey(name))); err != nil {
		return fmt.Errorf("resume task %q: %w", name, err)
	}
	return nil
}

// ReportLastError writes a store's last error (the key comes from
// e.StoreId), replacing that store's previous one.
func (c *Client) ReportLastError(ctx context.Context, task string, e *brpb.StreamBackupError) error {
	raw, err := EncodeLastError(e)
	if err != nil {
		return fmt.Errorf("report last error of task %q: %w", task, err)
	}
	if err := c.put(ctx, task, LastErrorKey(task, e.StoreId), string(raw)); err != nil {
		return fmt.Errorf("report last error of task %q: %w", task, err)
	}
	return nil
}

// ClearLastErrors deletes every store's last error of the task.
func (c *Client) ClearLastErrors(ctx context.Context, task string) error {
	if _, err := c.commit(ctx, task, nil, clientv3.OpDelete(LastErrorPrefix(task), clientv3.WithPrefix())); err != nil {
		return fmt.Errorf("clear last errors of task %q: %w", task, err)
	}
	return nil
}

// LastErrors returns each store's last error of the task.
func (c *Client) LastErrors(ctx context.Context, task string) (map[uint64]*brpb.StreamBackupError, error) {
	prefix := LastErrorPrefix(task)
	out := map[uint64]*brpb.StreamBackupError{}
	err := c.scan(ctx, prefix, func(k, v []byte) error {
		store, err := strconv.ParseUint(string(k[len(prefix):]), 10, 64)
		if err != nil {
			return malformed(string(k), fmt.Errorf("store id: %w", err))
		}
		e, err := DecodeLastError(string(k), v)
		if err != nil {
			return err
		}
		out[store] = e
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
