package agentrun

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	pd "github.com/tikv/pd/client"
	clientv3 "go.etcd.io/etcd/client/v3"

	"logbackup/meta"
	"logbackup/streamagent"
)

// Starting: until PD and its etcd answer, and PD knows the store, the
// agent waits rather than exits, so a supervisor that does not restart it
// (or a cluster that comes up after its agents) still gets a working
// agent. It exits only on a definite answer: the store is missing or
// removed, the address names no live store or several.

// waitWarnEvery rate-limits the WARN a waiting agent logs.
const waitWarnEvery = 30 * time.Second

// waiting is what a waiting agent shows: the WARN log and /status.
type waiting struct {
	log     *slog.Logger
	storeID uint64

	mu     sync.Mutex
	reason string
	kind   string
	warned time.Time
}

// wait records why the agent cannot go on yet; kind groups reasons
// ("pd", "bootstrap", "etcd") so a change of cause is logged at once.
func (w *waiting) wait(kind, reason string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	w.reason = reason
	if kind != w.kind || now.Sub(w.warned) >= waitWarnEvery {
		w.kind, w.warned = kind, now
		w.log.Warn("waiting before the agent can start: "+reason, "store", w.storeID, "next_warning_within", waitWarnEvery)
	}
}

func (w *waiting) status() streamagent.Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	return streamagent.Status{StoreID: w.storeID, Version: "", State: streamagent.AgentWaiting, Reason: w.reason, Tasks: []streamagent.TaskStatus{}}
}

// handler serves /status and /metrics while the agent waits.
func (w *waiting) handler(gatherer prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("/status", func(rw http.ResponseWriter, _ *http.Request) {
		rw.Header().Set("Content-Type", "application/json")
		json.NewEncoder(rw).Encode(w.status())
	})
	return mux
}

// swapHandler serves the waiting handler, then the agent's.
type swapHandler struct{ h atomic.Pointer[http.Handler] }

func (s *swapHandler) set(h http.Handler) { s.h.Store(&h) }

func (s *swapHandler) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	(*s.h.Load()).ServeHTTP(rw, r)
}

// connected is what the agent needs once PD and etcd answer.
type connected struct {
	pdc   pd.Client
	etcd  *clientv3.Client
	store *metapb.Store
}

func (c *connected) close() {
	if c.etcd != nil {
		c.etcd.Close()
	}
	if c.pdc != nil {
		c.pdc.Close()
	}
}

// connect waits until PD answers, is bootstrapped and knows the store,
// and etcd answers. Each attempt is bounded by --dial-timeout; between
// attempts it backs off up to 10 s. It returns the error that ends the
// wait: a definite answer about the store, or ctx's end.
func connect(ctx context.Context, o options, pdAddrs, etcdAddrs []string, w *waiting) (*connected, error) {
	c := &connected{}
	ok := false
	defer func() {
		if !ok {
			c.close()
		}
	}()
	pause := func(d *time.Duration) bool {
		t := time.NewTimer(*d)
		defer t.Stop()
		*d = min(2**d, 10*time.Second)
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
	delay := 500 * time.Millisecond
	dial := meta.DialConfig{Endpoints: pdAddrs, CAFile: o.ca, CertFile: o.cert, KeyFile: o.key, DialTimeout: o.dialTimeout}
	for c.pdc == nil {
		// The PD client lives as long as the agent (a PD client dies with
		// the context it was made with); meta.DialPD bounds only the dial.
		pdc, err := meta.DialPD(ctx, dial)
		if err == nil {
			c.pdc = pdc
			break
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("PD did not answer before the agent was stopped: %w", err)
		}
		w.wait("pd", fmt.Sprintf("PD at %v does not answer (%v); retrying until it does", pdAddrs, err))
		if !pause(&delay) {
			return nil, fmt.Errorf("PD did not answer before the agent was stopped: %w", err)
		}
	}
	delay = 500 * time.Millisecond
	for c.store == nil {
		s, err := streamagent.LookupStore(ctx, c.pdc, o.storeID, o.storeAddr)
		var gone *streamagent.StoreGoneError
		var badAddr *streamagent.AddressError
		switch {
		case err == nil:
			c.store = s
			continue
		case ctx.Err() != nil:
			return nil, fmt.Errorf("stopped while waiting for PD: %w", err)
		case errors.As(err, &gone), errors.As(err, &badAddr):
			return nil, err
		case errors.Is(err, streamagent.ErrPDNotBootstrapped):
			w.wait("bootstrap", fmt.Sprintf("PD at %v is not bootstrapped yet: no TiKV has joined the cluster; the agent starts once its store has", pdAddrs))
		default:
			w.wait("pd", fmt.Sprintf("PD at %v cannot list its stores (%v); retrying", pdAddrs, err))
		}
		if !pause(&delay) {
			return nil, fmt.Errorf("stopped while waiting for PD: %w", err)
		}
	}
	if c.store.GetState() != metapb.StoreState_Up {
		w.log.Warn("the store is not Up in PD; the agent serves it while it holds regions", "store", c.store.GetId(),
			"address", c.store.GetAddress(), "state", c.store.GetState().String())
	}
	delay = 500 * time.Millisecond
	for c.etcd == nil {
		dctx, cancel := context.WithTimeout(ctx, o.dialTimeout)
		cli, err := meta.Dial(dctx, meta.DialConfig{Endpoints: etcdAddrs, CAFile: o.ca, CertFile: o.cert, KeyFile: o.key, DialTimeout: o.dialTimeout})
		cancel()
		if err == nil {
			c.etcd = cli
			break
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("etcd did not answer before the agent was stopped: %w", err)
		}
		w.wait("etcd", fmt.Sprintf("etcd at %v does not answer (%v); retrying until it does", etcdAddrs, err))
		if !pause(&delay) {
			return nil, fmt.Errorf("etcd did not answer before the agent was stopped: %w", err)
		}
	}
	ok = true
	return c, nil
}
