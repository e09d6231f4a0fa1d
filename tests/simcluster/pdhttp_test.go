package simcluster_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	pd "github.com/tikv/pd/client"
	pdhttp "github.com/tikv/pd/client/http"

	"logbackup/tests/certtest"
	"logbackup/tests/eventually"
	"logbackup/tests/realpd"
	"logbackup/tests/simcluster"
)

// recorder keeps the last answer (status and body) to each request of the
// pd HTTP client, by method and path, so a test sees PD's JSON as sent
// while the client decodes it into its own types.
type recorder struct {
	next http.RoundTripper
	mu   sync.Mutex
	last map[string]recorded
}

type recorded struct {
	code int
	body []byte
}

func newRecorder(tc *tls.Config) *recorder {
	return &recorder{next: &http.Transport{TLSClientConfig: tc}, last: map[string]recorded{}}
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	r.mu.Lock()
	r.last[req.Method+" "+req.URL.Path] = recorded{resp.StatusCode, body}
	r.mu.Unlock()
	return resp, nil
}

func (r *recorder) get(key string) (recorded, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.last[key]
	return v, ok
}

func (r *recorder) close() { r.next.(*http.Transport).CloseIdleConnections() }

// newPDHTTP is PD's own HTTP client (what TiDB's BR uses) on a PD
// address, recording the answers.
func newPDHTTP(t *testing.T, url string, tc *tls.Config) (pdhttp.Client, *recorder) {
	t.Helper()
	rec := newRecorder(tc)
	opts := []pdhttp.ClientOption{pdhttp.WithHTTPClient(&http.Client{Transport: rec, Timeout: 20 * time.Second})}
	if tc != nil {
		opts = append(opts, pdhttp.WithTLSConfig(tc))
	}
	cli := pdhttp.NewClient("logbackup-test", []string{url}, opts...)
	t.Cleanup(func() { cli.Close(); rec.close() })
	return cli, rec
}

// plainGET is what an operator's curl does: one GET with a deadline.
func plainGET(t *testing.T, url string, tc *tls.Config) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: tc}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// TestPDHTTPCurl: PD's HTTP API answers a plain GET on PDAddr, as TiDB's
// `br log status` and an operator's curl reach it (it answered 404 before),
// and an unknown path answers 404 as PD does.
func TestPDHTTPCurl(t *testing.T) {
	c := startPD(t, simcluster.Config{}, "m")
	base := "http://" + c.PDAddr() + "/pd/api/v1/"
	code, body := plainGET(t, base+"version", nil)
	var v struct{ Version string }
	if code != http.StatusOK || json.Unmarshal([]byte(body), &v) != nil || v.Version != "v8.5.6" {
		t.Fatalf("GET version: %d %q", code, body)
	}
	code, body = plainGET(t, base+"health", nil)
	var health []pdhttp.Health
	if code != http.StatusOK || json.Unmarshal([]byte(body), &health) != nil || len(health) != 1 || !health[0].Health {
		t.Fatalf("GET health: %d %q", code, body)
	}
	if code, body := plainGET(t, base+"no/such/path", nil); code != http.StatusNotFound || body != "404 page not found\n" {
		t.Fatalf("unknown path: %d %q", code, body)
	}
}

// TestPDHTTPServiceDiscovery: BR's pdutil.NewPdController finds PD's HTTP
// API through the pd client's service discovery (the members' client URLs
// from GetMembers) and asks the version first; with TLS too.
func TestPDHTTPServiceDiscovery(t *testing.T) {
	certs := certtest.New(t)
	for name, files := range map[string]*simcluster.TLSFiles{
		"plain": nil, "TLS": {CA: certs.CA, Cert: certs.ServerCert, Key: certs.ServerKey}} {
		t.Run(name, func(t *testing.T) {
			c := startPD(t, simcluster.Config{TLS: files}, "m")
			ctx := testCtx(t)
			var sec pd.SecurityOption
			var opts []pdhttp.ClientOption
			if files != nil {
				sec = pd.SecurityOption{CAPath: certs.CA, CertPath: certs.ClientCert, KeyPath: certs.ClientKey}
				tc, err := certs.ClientTLS()
				if err != nil {
					t.Fatal(err)
				}
				opts = append(opts, pdhttp.WithTLSConfig(tc))
			}
			pdc := newPDClient(t, c, sec)
			cli := pdhttp.NewClientWithServiceDiscovery("br/lightning PD controller", pdc.GetServiceDiscovery(), opts...)
			defer cli.Close()
			if v, err := cli.GetPDVersion(ctx); err != nil || v != "v8.5.6" {
				t.Fatalf("GetPDVersion = %q, %v", v, err)
			}
			if s, err := cli.GetStores(ctx); err != nil || s.Count != len(c.StoreIDs()) {
				t.Fatalf("GetStores = %+v, %v", s, err)
			}
		})
	}
}

// TestPDHTTPClient: every endpoint served, through PD's HTTP client, answers
// from the simulated cluster's state: its stores and their leaders, its
// member, its GC state, its regions; pausing schedulers and TTL config as
// BR uses them; PD's errors where PD errs.
func TestPDHTTPClient(t *testing.T) {
	c := startPD(t, simcluster.Config{}, "g", "m", "t")
	ctx := testCtx(t)
	cli, rec := newPDHTTP(t, c.PDURL(), nil)

	if v, err := cli.GetPDVersion(ctx); err != nil || v != "v8.5.6" {
		t.Fatalf("GetPDVersion = %q, %v", v, err)
	}
	members, err := cli.GetMembers(ctx)
	if err != nil || len(members.Members) != 1 || members.Leader.GetName() != "pd-simcluster" ||
		members.Header.GetClusterId() != c.ClusterID() || members.Leader.GetClientUrls()[0] != c.PDURL() {
		t.Fatalf("GetMembers = %+v, %v", members, err)
	}
	if l, err := cli.GetLeader(ctx); err != nil || l.GetMemberId() != members.Leader.GetMemberId() {
		t.Fatalf("GetLeader = %v, %v", l, err)
	}
	if h, err := cli.GetHealthStatus(ctx); err != nil || len(h) != 1 || !h[0].Health || h[0].MemberID != members.Leader.GetMemberId() {
		t.Fatalf("GetHealthStatus = %+v, %v", h, err)
	}
	if cl, err := cli.GetCluster(ctx); err != nil || cl.GetId() != c.ClusterID() || cl.GetMaxPeerCount() != 3 {
		t.Fatalf("GetCluster = %v, %v", cl, err)
	}
	if st, err := cli.GetStatus(ctx); err != nil || st.Version != "v8.5.6" || st.StartTimestamp == 0 {
		t.Fatalf("GetStatus = %+v, %v", st, err)
	}
	if cs, err := cli.GetClusterStatus(ctx); err != nil || !cs.IsInitialized || cs.RaftBootstrapTime.IsZero() {
		t.Fatalf("GetClusterStatus = %+v, %v", cs, err)
	}
	if v, err := cli.GetClusterVersion(ctx); err != nil || v != "8.5.6" {
		t.Fatalf("GetClusterVersion = %q, %v", v, err)
	}

	// Stores: the cluster's, with their addresses, and leaders that add up
	// to the regions.
	stores, err := cli.GetStores(ctx)
	if err != nil || stores.Count != len(c.StoreIDs()) || len(stores.Stores) != stores.Count {
		t.Fatalf("GetStores = %+v, %v", stores, err)
	}
	leaders := 0
	for i, s := range stores.Stores {
		id := uint64(s.Store.ID)
		if id != c.StoreIDs()[i] || s.Store.Address != c.StoreAddr(id) || s.Store.StateName != "Up" || s.Store.Version != "8.5.6" ||
			s.Status.LastHeartbeatTS.IsZero() || s.Status.RegionCount != int64(len(c.Regions())) {
			t.Errorf("store %d: %+v", id, s)
		}
		leaders += int(s.Status.LeaderCount)
	}
	if leaders != len(c.Regions()) {
		t.Errorf("leaders add up to %d, %d regions", leaders, len(c.Regions()))
	}
	one := c.StoreIDs()[0]
	if s, err := cli.GetStore(ctx, one); err != nil || uint64(s.Store.ID) != one || s.Store.Address != c.StoreAddr(one) {
		t.Fatalf("GetStore(%d) = %+v, %v", one, s, err)
	}
	if _, err := cli.GetStore(ctx, 999); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("GetStore(unknown) = %v, want 404", err)
	}
	if r, _ := rec.get("GET /pd/api/v1/store/999"); string(r.body) != "\"[PD:core:ErrStoreNotFound]store 999 not found\"\n" {
		t.Fatalf("unknown store answered %q", r.body)
	}
	// A stopped store is what PD shows for a TiKV that stopped heartbeating.
	c.StoreDown(one)
	if s, err := cli.GetStore(ctx, one); err != nil || s.Store.StateName != "Disconnected" || s.Store.State != int64(metapb.StoreState_Up) {
		t.Fatalf("GetStore(down store) = %+v, %v", s, err)
	}
	c.StoreUp(one)

	// GC: a barrier set through PD's gRPC API is listed with gc_worker's txn
	// safe point, and the GC safe point.
	if _, err := c.PD().UpdateServiceGCSafePoint(ctx, "br-test", 600, 100); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetGCSafePoint(ctx, 50); err != nil {
		t.Fatal(err)
	}
	gc, err := cli.GetGCSafePoint(ctx)
	if err != nil || gc.GCSafePoint != 50 || gc.MinServiceGcSafepoint != 50 || len(gc.ServiceGCSafepoints) != 2 ||
		gc.ServiceGCSafepoints[0].ServiceID != "br-test" || gc.ServiceGCSafepoints[0].SafePoint != 100 ||
		gc.ServiceGCSafepoints[1].ServiceID != "gc_worker" || gc.ServiceGCSafepoints[1].SafePoint != 50 {
		t.Fatalf("GetGCSafePoint = %+v, %v", gc, err)
	}

	// Region counts, as BR's pdutil asks (encoded keys).
	all := pdhttp.NewKeyRange(nil, nil)
	if st, err := cli.GetRegionStatusByKeyRange(ctx, all, true); err != nil || st.Count != len(c.Regions()) {
		t.Fatalf("region count = %+v, %v; %d regions", st, err, len(c.Regions()))
	}
	half := pdhttp.NewKeyRange(simcluster.EncodeKey([]byte("h")), simcluster.EncodeKey([]byte("n")))
	if st, err := cli.GetRegionStatusByKeyRange(ctx, half, false); err != nil || st.Count != 2 || len(st.StoreLeaderCount) == 0 {
		t.Fatalf("regions in [h, n) = %+v, %v; want 2 ([g, m) and [m, t))", st, err)
	}

	// Config: the defaults BR reads; an update shows; TTL config as BR
	// sets it while restoring, and PD's refusals.
	cfg, err := cli.GetConfig(ctx)
	if err != nil || cfg["cluster-version"] != "8.5.6" || cfg["client-urls"] != c.PDURL() {
		t.Fatalf("GetConfig = %v, %v", cfg, err)
	}
	rep, err := cli.GetReplicateConfig(ctx)
	if err != nil || rep["max-replicas"] != float64(3) {
		t.Fatalf("GetReplicateConfig = %v, %v", rep, err)
	}
	sched, err := cli.GetScheduleConfig(ctx)
	if err != nil || sched["leader-schedule-limit"] != float64(4) || len(sched["store-limit"].(map[string]any)) != len(c.StoreIDs()) {
		t.Fatalf("GetScheduleConfig = %v, %v", sched, err)
	}
	if err := cli.SetConfig(ctx, map[string]any{"leader-schedule-limit": 6}); err != nil {
		t.Fatal(err)
	}
	if sched, err := cli.GetScheduleConfig(ctx); err != nil || sched["leader-schedule-limit"] != float64(6) {
		t.Fatalf("after SetConfig: %v, %v", sched["leader-schedule-limit"], err)
	}
	if err := cli.SetConfig(ctx, map[string]any{"schedule.max-merge-region-keys": 0}, 300); err != nil {
		t.Fatalf("TTL config: %v", err)
	}
	if err := cli.SetConfig(ctx, map[string]any{"max-merge-region-keys": 1}); err == nil || !strings.Contains(err.Error(), "need to clean up TTL first") {
		t.Fatalf("config under a TTL: %v", err)
	}
	if err := cli.SetConfig(ctx, map[string]any{"schedule.max-merge-region-keys": 0}, 0); err != nil {
		t.Fatalf("TTL config delete: %v", err)
	}
	if err := cli.SetConfig(ctx, map[string]any{"max-merge-region-keys": 1}); err != nil {
		t.Fatalf("config after the TTL is gone: %v", err)
	}
	for body, want := range map[string]string{
		`{"schedule.no-such-item": 1}`: "unsupported ttl config",
	} {
		var m map[string]any
		_ = json.Unmarshal([]byte(body), &m)
		if err := cli.SetConfig(ctx, m, 30); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("SetConfig(%s, ttl) = %v, want %q", body, err, want)
		}
	}
	if err := cli.SetConfig(ctx, map[string]any{"no-such-item": 1}); err == nil || !strings.Contains(err.Error(), "config item no-such-item not found") {
		t.Errorf("SetConfig(unknown) = %v", err)
	}

	// Schedulers: BR pauses them for a while and resumes them.
	names, err := cli.GetSchedulers(ctx)
	if err != nil || !containsAll(names, "balance-leader-scheduler", "balance-region-scheduler", "balance-hot-region-scheduler") {
		t.Fatalf("GetSchedulers = %v, %v", names, err)
	}
	if err := cli.SetSchedulerDelay(ctx, "balance-leader-scheduler", 300); err != nil {
		t.Fatal(err)
	}
	if got := pausedSchedulers(t, c.PDURL()); len(got) != 1 || got[0] != "balance-leader-scheduler" {
		t.Fatalf("paused after pausing: %v", got)
	}
	if err := cli.SetSchedulerDelay(ctx, "balance-leader-scheduler", 0); err != nil {
		t.Fatal(err)
	}
	if got := pausedSchedulers(t, c.PDURL()); len(got) != 0 {
		t.Fatalf("paused after resuming: %v", got)
	}
	if err := cli.SetSchedulerDelay(ctx, "shuffle-leader-scheduler", 300); err == nil || !strings.Contains(err.Error(), "scheduler not found") {
		t.Fatalf("pausing a scheduler that does not run: %v", err)
	}
	// A scheduler paused for 300 s runs again once PD's clock passes it.
	if err := cli.SetSchedulerDelay(ctx, "balance-region-scheduler", 300); err != nil {
		t.Fatal(err)
	}
	c.AdvancePDClock(301 * time.Second)
	if got := pausedSchedulers(t, c.PDURL()); len(got) != 0 {
		t.Fatalf("paused after the delay: %v", got)
	}

	// With PD down its HTTP API fails with its gRPC API.
	c.SetPDDown(true)
	if code, _ := plainGET(t, c.PDURL()+"/pd/api/v1/version", nil); code != http.StatusServiceUnavailable {
		t.Fatalf("version with PD down: %d", code)
	}
	c.SetPDDown(false)
	if code, _ := plainGET(t, c.PDURL()+"/pd/api/v1/version", nil); code != http.StatusOK {
		t.Fatalf("version with PD up again: %d", code)
	}
}

func containsAll(list []string, want ...string) bool {
	for _, w := range want {
		found := false
		for _, s := range list {
			found = found || s == w
		}
		if !found {
			return false
		}
	}
	return true
}

func pausedSchedulers(t *testing.T, url string) []string {
	t.Helper()
	code, body := plainGET(t, url+"/pd/api/v1/schedulers?status=paused", nil)
	var out []string
	if code != http.StatusOK || json.Unmarshal([]byte(body), &out) != nil {
		t.Fatalf("paused schedulers: %d %q", code, body)
	}
	return out
}

// TestPDHTTPRestartAndTLS: the HTTP API comes back with StartPD, keeping
// what was set through it, and with Config.TLS it is HTTPS with the same
// certificates as PD's gRPC API.
func TestPDHTTPRestartAndTLS(t *testing.T) {
	certs := certtest.New(t)
	c := startPD(t, simcluster.Config{TLS: &simcluster.TLSFiles{CA: certs.CA, Cert: certs.ServerCert, Key: certs.ServerKey}}, "m")
	ctx := testCtx(t)
	good, err := certs.ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(c.PDURL(), "https://") {
		t.Fatalf("PDURL %q with TLS", c.PDURL())
	}
	cli, _ := newPDHTTP(t, c.PDURL(), good)
	if v, err := cli.GetPDVersion(ctx); err != nil || v != "v8.5.6" {
		t.Fatalf("GetPDVersion over TLS = %q, %v", v, err)
	}
	if err := cli.SetConfig(ctx, map[string]any{"region-schedule-limit": 1000}); err != nil {
		t.Fatal(err)
	}
	if code, body := plainGET(t, c.PDURL()+"/pd/api/v1/health", good); code != http.StatusOK {
		t.Fatalf("GET health over TLS: %d %q", code, body)
	}
	noCert := good.Clone()
	noCert.Certificates = nil
	tr := &http.Transport{TLSClientConfig: noCert}
	defer tr.CloseIdleConnections()
	if resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(c.PDURL() + "/pd/api/v1/version"); err == nil {
		resp.Body.Close()
		t.Fatalf("HTTPS without a client certificate answered %s", resp.Status)
	}

	if err := c.StopPD(); err != nil {
		t.Fatal(err)
	}
	if err := c.StartPD(ctx); err != nil {
		t.Fatal(err)
	}
	code, body := plainGET(t, c.PDURL()+"/pd/api/v1/config/schedule", good)
	var sched map[string]any
	if code != http.StatusOK || json.Unmarshal([]byte(body), &sched) != nil || sched["region-schedule-limit"] != float64(1000) {
		t.Fatalf("schedule config after a restart: %d %.200q", code, body)
	}
}

// TestPDHTTPShapeRealPD: the simulated PD's answers to PD's HTTP client
// have the shape of a real PD's (v8.5.x): the same fields with the same
// JSON types, the same status codes and error bodies, for every endpoint
// served. The real PD is bootstrapped as the simulated cluster is: three
// stores heartbeating, regions with a leader, a GC barrier.
func TestPDHTTPShapeRealPD(t *testing.T) {
	real := realpd.Start(t)
	ctx := testCtx(t)
	bootstrapLikeSim(t, ctx, real.Addr())
	c := startPD(t, simcluster.Config{}, "m")
	if _, err := c.PD().UpdateServiceGCSafePoint(ctx, "br-shape", 600, 10); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetGCSafePoint(ctx, 5); err != nil {
		t.Fatal(err)
	}

	realCli, realRec := newPDHTTP(t, real.URL(), nil)
	simCli, simRec := newPDHTTP(t, c.PDURL(), nil)
	// Real PD starts its schedulers a few seconds after bootstrap.
	eventually.NoError(t, untilDone(ctx), func(ctx context.Context) error {
		names, err := realCli.GetSchedulers(ctx)
		if err == nil && len(names) == 0 {
			err = errors.New("none listed")
		}
		return err
	}, "real PD to list its schedulers")

	type call struct {
		key    string // method and path as recorded
		do     func(pdhttp.Client, uint64) error
		subset bool // the sim serves part of PD's document
	}
	ignore := func(error) error { return nil } // errors are compared by status and body
	calls := []call{
		{key: "GET /pd/api/v1/version", do: func(c pdhttp.Client, _ uint64) error { _, err := c.GetPDVersion(ctx); return err }},
		{key: "GET /pd/api/v1/status", do: func(c pdhttp.Client, _ uint64) error { _, err := c.GetStatus(ctx); return err }},
		{key: "GET /pd/api/v1/health", do: func(c pdhttp.Client, _ uint64) error { _, err := c.GetHealthStatus(ctx); return err }},
		{key: "GET /pd/api/v1/members", do: func(c pdhttp.Client, _ uint64) error { _, err := c.GetMembers(ctx); return err }},
		{key: "GET /pd/api/v1/leader", do: func(c pdhttp.Client, _ uint64) error { _, err := c.GetLeader(ctx); return err }},
		{key: "GET /pd/api/v1/cluster", do: func(c pdhttp.Client, _ uint64) error { _, err := c.GetCluster(ctx); return err }},
		{key: "GET /pd/api/v1/cluster/status", do: func(c pdhttp.Client, _ uint64) error { _, err := c.GetClusterStatus(ctx); return err }},
		{key: "GET /pd/api/v1/stores", do: func(c pdhttp.Client, _ uint64) error { _, err := c.GetStores(ctx); return err }},
		{key: "GET /pd/api/v1/store/ID", do: func(c pdhttp.Client, id uint64) error { _, err := c.GetStore(ctx, id); return err }},
		{key: "GET /pd/api/v1/store/999", do: func(c pdhttp.Client, _ uint64) error { _, err := c.GetStore(ctx, 999); return ignore(err) }},
		{key: "GET /pd/api/v1/gc/safepoint", do: func(c pdhttp.Client, _ uint64) error { _, err := c.GetGCSafePoint(ctx); return err }},
		{key: "GET /pd/api/v1/config", subset: true, do: func(c pdhttp.Client, _ uint64) error { _, err := c.GetConfig(ctx); return err }},
		{key: "GET /pd/api/v1/config/schedule", do: func(c pdhttp.Client, _ uint64) error { _, err := c.GetScheduleConfig(ctx); return err }},
		{key: "GET /pd/api/v1/config/replicate", do: func(c pdhttp.Client, _ uint64) error { _, err := c.GetReplicateConfig(ctx); return err }},
		{key: "GET /pd/api/v1/config/cluster-version", do: func(c pdhttp.Client, _ uint64) error { _, err := c.GetClusterVersion(ctx); return err }},
		{key: "GET /pd/api/v1/schedulers", do: func(c pdhttp.Client, _ uint64) error { _, err := c.GetSchedulers(ctx); return err }},
		{key: "POST /pd/api/v1/schedulers/balance-leader-scheduler", do: func(c pdhttp.Client, _ uint64) error {
			return c.SetSchedulerDelay(ctx, "balance-leader-scheduler", 300)
		}},
		{key: "POST /pd/api/v1/schedulers/shuffle-leader-scheduler", do: func(c pdhttp.Client, _ uint64) error {
			return ignore(c.SetSchedulerDelay(ctx, "shuffle-leader-scheduler", 300))
		}},
		{key: "POST /pd/api/v1/config", do: func(c pdhttp.Client, _ uint64) error {
			return c.SetConfig(ctx, map[string]any{"schedule.max-merge-region-keys": 0}, 300)
		}},
		{key: "GET /pd/api/v1/stats/region", do: func(c pdhttp.Client, _ uint64) error {
			_, err := c.GetRegionStatusByKeyRange(ctx, pdhttp.NewKeyRange(nil, nil), false)
			return err
		}},
		{key: "GET /pd/api/v1/stats/region", do: func(c pdhttp.Client, _ uint64) error { // count only, as BR asks
			_, err := c.GetRegionStatusByKeyRange(ctx, pdhttp.NewKeyRange(nil, nil), true)
			return err
		}},
	}
	firstStore := func(cli pdhttp.Client) uint64 {
		s, err := cli.GetStores(ctx)
		if err != nil || len(s.Stores) == 0 {
			t.Fatalf("stores: %v, %v", s, err)
		}
		return uint64(s.Stores[0].Store.ID)
	}
	realID, simID := firstStore(realCli), firstStore(simCli)
	for _, cl := range calls {
		if err := cl.do(realCli, realID); err != nil {
			t.Errorf("%s on the real PD: %v", cl.key, err)
			continue
		}
		if err := cl.do(simCli, simID); err != nil {
			t.Errorf("%s on the simulated PD: %v", cl.key, err)
			continue
		}
		realKey, simKey := cl.key, cl.key
		if strings.HasSuffix(cl.key, "/ID") {
			realKey = strings.TrimSuffix(cl.key, "ID") + strconv.FormatUint(realID, 10)
			simKey = strings.TrimSuffix(cl.key, "ID") + strconv.FormatUint(simID, 10)
		}
		r, ok1 := realRec.get(realKey)
		s, ok2 := simRec.get(simKey)
		if !ok1 || !ok2 {
			t.Errorf("%s: not recorded (real %v, sim %v)", cl.key, ok1, ok2)
			continue
		}
		if r.code != s.code {
			t.Errorf("%s: status %d, real PD %d (%q / %q)", cl.key, s.code, r.code, s.body, r.body)
			continue
		}
		var rv, sv any
		if err := json.Unmarshal(r.body, &rv); err != nil {
			t.Errorf("%s: real PD's body is not JSON: %q", cl.key, r.body)
			continue
		}
		if err := json.Unmarshal(s.body, &sv); err != nil {
			t.Errorf("%s: the simulated PD's body is not JSON: %q", cl.key, s.body)
			continue
		}
		for _, d := range shapeDiff("", rv, sv, cl.subset) {
			t.Errorf("%s: %s", cl.key, d)
		}
		if r.code != http.StatusOK {
			// PD's errors: the same message, but for the ids in it.
			if strings.ReplaceAll(string(r.body), "999", "N") != strings.ReplaceAll(string(s.body), "999", "N") {
				t.Errorf("%s: error %q, real PD %q", cl.key, s.body, r.body)
			}
		}
	}
	// Plain requests, in order, answered alike to the byte: PD's errors
	// and messages, the TTL config rules, state filters, unknown paths.
	for _, rq := range []struct{ method, path, body string }{
		{"GET", "/pd/api/v1/no/such/path", ""},
		{"DELETE", "/pd/api/v1/version", ""},
		{"GET", "/pd/api/v1/store/abc", ""},
		{"GET", "/pd/api/v1/stores?state=2", ""},
		{"GET", "/pd/api/v1/stores?state=9", ""},
		{"GET", "/pd/api/v1/stores?state=x", ""},
		{"GET", "/pd/api/v1/schedulers?status=paused", ""},
		{"POST", "/pd/api/v1/schedulers/balance-leader-scheduler", `{}`},
		{"POST", "/pd/api/v1/schedulers/balance-leader-scheduler", `{"delay": 0}`},
		{"GET", "/pd/api/v1/schedulers?status=paused", ""},
		{"POST", "/pd/api/v1/config?ttlSecond=30", `{"schedule.no-such-item": 1}`},
		{"POST", "/pd/api/v1/config", `{"no-such-item": 1}`},
		{"POST", "/pd/api/v1/config?ttlSecond=300", `{"schedule.leader-schedule-limit": 12}`},
		{"POST", "/pd/api/v1/config", `{"leader-schedule-limit": 5}`},
		{"POST", "/pd/api/v1/config?ttlSecond=0", `{"schedule.leader-schedule-limit": 12}`},
		{"POST", "/pd/api/v1/config", `{"leader-schedule-limit": 5}`},
		{"POST", "/pd/api/v1/config", `{"schedule.max-replicas": 5}`},
		{"POST", "/pd/api/v1/config", `{"no-such-section.max-replicas": 5}`},
		{"POST", "/pd/api/v1/config", `{"replication.max-replicas": 2}`},
	} {
		rc, rb := plainDo(t, rq.method, real.URL()+rq.path, rq.body)
		sc, sb := plainDo(t, rq.method, c.PDURL()+rq.path, rq.body)
		if rc != sc || rb != sb {
			t.Errorf("%s %s %s: %d %q, real PD %d %q", rq.method, rq.path, rq.body, sc, sb, rc, rb)
		}
	}
	for _, cli := range []pdhttp.Client{realCli, simCli} {
		sched, err := cli.GetScheduleConfig(ctx)
		if err != nil || sched["leader-schedule-limit"] != float64(5) {
			t.Errorf("leader-schedule-limit after the updates: %v, %v", sched["leader-schedule-limit"], err)
		}
		rep, err := cli.GetReplicateConfig(ctx)
		if err != nil || rep["max-replicas"] != float64(2) {
			t.Errorf("max-replicas after the updates: %v, %v", rep["max-replicas"], err)
		}
	}
}

// plainDo is one request with a deadline, as curl sends it.
func plainDo(t *testing.T, method, url, body string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp.StatusCode, string(b)
}

// optionalFields are PD's omitempty fields that one side may lack for
// reasons of content, not shape: store labels and the TiKV build details a
// simulated store does not have, node states.
var optionalFields = map[string]bool{
	"labels": true, "status_address": true, "git_hash": true, "deploy_path": true, "peer_address": true,
	"node_state": true, "state": true, "is_witness": true, "physically_destroyed": true,
}

// shapeDiff compares two JSON documents by shape: objects must have the
// same keys (with subset: the simulated one's keys must be the real one's),
// values the same JSON type; arrays are compared by their first elements,
// and objects keyed by ids (store ids) by their first entries.
func shapeDiff(path string, real, sim any, subset bool) []string {
	kind := func(v any) string {
		switch v.(type) {
		case nil:
			return "null"
		case map[string]any:
			return "object"
		case []any:
			return "array"
		case float64:
			return "number"
		case string:
			return "string"
		case bool:
			return "boolean"
		}
		return fmt.Sprintf("%T", v)
	}
	if kind(real) != kind(sim) {
		return []string{fmt.Sprintf("%s: %s, real PD %s", orRoot(path), kind(sim), kind(real))}
	}
	var diffs []string
	switch rv := real.(type) {
	case []any:
		sv := sim.([]any)
		if len(rv) > 0 && len(sv) > 0 {
			diffs = append(diffs, shapeDiff(path+"[0]", rv[0], sv[0], subset)...)
		}
	case map[string]any:
		sv := sim.(map[string]any)
		// By store id: the ids differ, and a real PD may not have counted a
		// heartbeat yet (an empty object).
		if (idKeyed(rv) || len(rv) == 0) && (idKeyed(sv) || len(sv) == 0) && len(rv)+len(sv) > 0 {
			if len(rv) > 0 && len(sv) > 0 {
				diffs = append(diffs, shapeDiff(path+"[id]", rv[firstKey(rv)], sv[firstKey(sv)], subset)...)
			}
			return diffs
		}
		for _, k := range sortedKeys(rv) {
			if _, ok := sv[k]; !ok && !subset && !optionalFields[k] {
				diffs = append(diffs, fmt.Sprintf("%s.%s: missing (real PD has %s)", path, k, kind(rv[k])))
			}
		}
		for _, k := range sortedKeys(sv) {
			r, ok := rv[k]
			if !ok {
				if !optionalFields[k] {
					diffs = append(diffs, fmt.Sprintf("%s.%s: not in real PD's answer", path, k))
				}
				continue
			}
			diffs = append(diffs, shapeDiff(path+"."+k, r, sv[k], subset)...)
		}
	}
	return diffs
}

func orRoot(path string) string {
	if path == "" {
		return "(document)"
	}
	return path
}

func idKeyed(m map[string]any) bool {
	if len(m) == 0 {
		return false
	}
	for k := range m {
		if _, err := strconv.ParseUint(k, 10, 64); err != nil {
			return false
		}
	}
	return true
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func firstKey(m map[string]any) string { return sortedKeys(m)[0] }

// bootstrapLikeSim gives a real PD what a simulated cluster has: three
// stores that heartbeat (with the version and start time the simulated
// stores report), a region led by one with a peer on each, a GC barrier
// and a GC round below it.
func bootstrapLikeSim(t *testing.T, ctx context.Context, addr string) {
	t.Helper()
	rc, err := realpd.Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Close)
	alloc := func() uint64 {
		id, err := rc.AllocID(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	now := time.Now().Unix()
	var stores []*metapb.Store
	for i := 0; i < 3; i++ {
		stores = append(stores, &metapb.Store{Id: alloc(), Address: fmt.Sprintf("127.0.0.1:%d", 20160+i), Version: "8.5.6", StartTimestamp: now})
	}
	// PD bootstraps with a one-peer region; the other peers come as raft
	// adds them, with a newer conf version.
	first := &metapb.Region{Id: alloc(), RegionEpoch: &metapb.RegionEpoch{ConfVer: 1, Version: 1},
		Peers: []*metapb.Peer{{Id: alloc(), StoreId: stores[0].Id}}}
	if err := rc.Bootstrap(ctx, stores[0], first); err != nil {
		t.Fatal(err)
	}
	first.RegionEpoch = &metapb.RegionEpoch{ConfVer: 3, Version: 1}
	for _, s := range stores[1:] {
		first.Peers = append(first.Peers, &metapb.Peer{Id: alloc(), StoreId: s.Id})
	}
	for _, s := range stores[1:] {
		if err := rc.PutStore(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range stores {
		if err := rc.StoreHeartbeat(ctx, s.Id, 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := rc.RegionHeartbeat(ctx, first, first.Peers[0], 1); err != nil {
		t.Fatal(err)
	}
	pdc, err := dialPD(addr, pd.SecurityOption{}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer pdc.Close()
	if _, err := pdc.UpdateServiceGCSafePoint(ctx, "br-shape", 600, 10); err != nil {
		t.Fatal(err)
	}
	// A GC round below the barrier: txn and GC safe points at 5.
	if _, err := rc.SetTxnSafePoint(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if _, err := rc.SetGCSafePoint(ctx, 5); err != nil {
		t.Fatal(err)
	}
}
