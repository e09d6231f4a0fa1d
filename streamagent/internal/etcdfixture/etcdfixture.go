// Package etcdfixture is what the unit tests of the agent's etcd paths
// (the fatal path in streamagent, the automatic recovery in
// streamagent/recovery) share: a real embedded etcd (meta/embedetcd) with
// faults injected at etcd's own client interface, a probe storage whose
// writes can fail, a log buffer and a metric reader. Nothing here comes
// from tests/: those packages' tests run without the simulated cluster.
package etcdfixture

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"logbackup/meta/embedetcd"
	"logbackup/storage"
)

// StartEtcd starts an embedded etcd on loopback and a client of it over
// the network, as an agent's is; both end with the test.
func StartEtcd(t testing.TB) (*embedetcd.Server, *clientv3.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := embedetcd.Start(ctx, embedetcd.Config{Dir: t.TempDir(), Fast: true})
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(srv.Close)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return srv, cli
}

// FaultKV is a clientv3.KV with a fault rule: an operation the rule
// refuses fails with its error (a whole transaction when any of its Then
// operations is refused), and its key is announced on Refused. Installed
// as a client's KV (cli.KV = NewFaultKV(cli.KV)), as etcd's namespace
// package wraps it, every request of that client goes through it.
type FaultKV struct {
	clientv3.KV
	mu      sync.Mutex
	rule    func(op clientv3.Op) error
	Refused chan string
}

func NewFaultKV(kv clientv3.KV) *FaultKV {
	return &FaultKV{KV: kv, Refused: make(chan string, 10000)}
}

// SetRule replaces the fault rule; nil lets everything through.
func (k *FaultKV) SetRule(rule func(op clientv3.Op) error) {
	k.mu.Lock()
	k.rule = rule
	k.mu.Unlock()
}

func (k *FaultKV) check(ops ...clientv3.Op) error {
	k.mu.Lock()
	rule := k.rule
	k.mu.Unlock()
	if rule == nil {
		return nil
	}
	for _, op := range ops {
		if err := rule(op); err != nil {
			select {
			case k.Refused <- string(op.KeyBytes()):
			default:
			}
			return err
		}
	}
	return nil
}

func (k *FaultKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if err := k.check(clientv3.OpGet(key, opts...)); err != nil {
		return nil, err
	}
	return k.KV.Get(ctx, key, opts...)
}

func (k *FaultKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	if err := k.check(clientv3.OpPut(key, val, opts...)); err != nil {
		return nil, err
	}
	return k.KV.Put(ctx, key, val, opts...)
}

func (k *FaultKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	if err := k.check(clientv3.OpDelete(key, opts...)); err != nil {
		return nil, err
	}
	return k.KV.Delete(ctx, key, opts...)
}

func (k *FaultKV) Txn(ctx context.Context) clientv3.Txn {
	return &faultTxn{Txn: k.KV.Txn(ctx), kv: k}
}

type faultTxn struct {
	clientv3.Txn
	kv   *FaultKV
	then []clientv3.Op
}

func (t *faultTxn) If(cs ...clientv3.Cmp) clientv3.Txn   { t.Txn = t.Txn.If(cs...); return t }
func (t *faultTxn) Else(ops ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Else(ops...); return t }
func (t *faultTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.then = append(t.then, ops...)
	t.Txn = t.Txn.Then(ops...)
	return t
}
func (t *faultTxn) Commit() (*clientv3.TxnResponse, error) {
	if err := t.kv.check(t.then...); err != nil {
		return nil, err
	}
	return t.Txn.Commit()
}

// WritesUnder refuses writes (puts, deletes) of keys under prefix, as an
// etcd that lost its quorum refuses them.
func WritesUnder(prefix string) func(clientv3.Op) error {
	return func(op clientv3.Op) error {
		if (op.IsPut() || op.IsDelete()) && strings.HasPrefix(string(op.KeyBytes()), prefix) {
			return rpctypes.ErrGRPCNoLeader
		}
		return nil
	}
}

// ProbeStorage is the storage a recovery probe opens: mem://, whose
// writes fail while a failure is set; each write attempt is announced on
// Writes.
type ProbeStorage struct {
	storage.Storage
	mu     sync.Mutex
	fail   error
	Writes chan string
}

// NewProbeStorage opens a mem:// storage, closed when the test ends.
func NewProbeStorage(t testing.TB) *ProbeStorage {
	t.Helper()
	mem, err := storage.OpenURL(context.Background(), "mem://")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	return &ProbeStorage{Storage: mem, Writes: make(chan string, 10000)}
}

// SetFail makes every write fail with err from now on (nil: succeed).
func (s *ProbeStorage) SetFail(err error) {
	s.mu.Lock()
	s.fail = err
	s.mu.Unlock()
}

func (s *ProbeStorage) WriteFile(ctx context.Context, name string, data []byte) error {
	s.mu.Lock()
	fail := s.fail
	s.mu.Unlock()
	select {
	case s.Writes <- name:
	default:
	}
	if fail != nil {
		return fail
	}
	return s.Storage.WriteFile(ctx, name, data)
}

// Close leaves mem:// open: NewProbeStorage's cleanup closes it.
func (s *ProbeStorage) Close() error { return nil }

// LogBuffer collects log lines.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Metric reads one series from reg: the value of the counter, gauge or
// (sample count of the) histogram name whose labels include labels
// (name, value, …); 0 when there is no such series.
func Metric(t testing.TB, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if got[k] != v {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			case m.Histogram != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return 0
}
