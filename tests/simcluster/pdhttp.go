package simcluster

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/pingcap/kvproto/pkg/pdpb"
)

// PD's HTTP API (tikv/pd server/api), served on PD's client port beside
// pdpb.PD and etcd, as PD serves it: the part that TiDB's BR (pdutil:
// version, stores, schedulers, schedule config with TTL, region counts;
// log restore: the replication config), pd-ctl and an operator's curl read.
// Answers come from the simulated cluster's state in PD's JSON shapes,
// indented, with PD's status codes; PD's errors are JSON strings. Paths
// PD does not serve, and the parts of PD's API not served here (regions,
// operators, placement and label rules, hot regions, admin), answer 404 as
// PD answers an unknown path.

// pdVersion is the PD release the simulated PD presents itself as: the one
// the pinned pd client belongs to and the real-PD tests run.
const pdVersion = "8.5.6"

// pdHTTPPrefix is where PD's HTTP API lives on its client URL.
const pdHTTPPrefix = "/pd/api/v1/"

// pdHTTPState is what PD's HTTP API changes: the schedule and replication
// config, the TTL config BR sets while it restores, and paused schedulers.
// It lives in pdState, so it outlasts StopPD/StartPD as PD keeps it.
type pdHTTPState struct {
	mu          sync.Mutex
	started     time.Time
	schedule    map[string]any
	replication map[string]any
	ttl         map[string]ttlConfig // by full key, "schedule.<item>"
	paused      map[string]time.Time // scheduler -> paused until, PD's clock
}

type ttlConfig struct {
	value   any
	expires time.Time
}

// PD v8.5's default schedule and replication config, as GET
// /pd/api/v1/config/schedule and /config/replicate answer on a fresh PD
// (store-limit, per store, is filled in when served).
const (
	defaultScheduleConfig = `{
	"max-snapshot-count":64,
	"max-pending-peer-count":64,
	"max-merge-region-size":54,
	"max-merge-region-keys":540000,
	"split-merge-interval":"1h0m0s",
	"switch-witness-interval":"1h0m0s",
	"enable-one-way-merge":"false",
	"enable-cross-table-merge":"true",
	"patrol-region-interval":"10ms",
	"max-store-down-time":"30m0s",
	"max-store-preparing-time":"48h0m0s",
	"leader-schedule-limit":4,
	"leader-schedule-policy":"count",
	"region-schedule-limit":2048,
	"witness-schedule-limit":4,
	"replica-schedule-limit":64,
	"merge-schedule-limit":8,
	"hot-region-schedule-limit":4,
	"affinity-schedule-limit":0,
	"hot-region-cache-hits-threshold":3,
	"store-limit":{},
	"tolerant-size-ratio":0,
	"low-space-ratio":0.8,
	"high-space-ratio":0.7,
	"region-score-formula-version":"v2",
	"scheduler-max-waiting-operator":5,
	"enable-remove-down-replica":"true",
	"enable-replace-offline-replica":"true",
	"enable-make-up-replica":"true",
	"enable-remove-extra-replica":"true",
	"enable-location-replacement":"true",
	"enable-debug-metrics":"false",
	"enable-joint-consensus":"true",
	"enable-tikv-split-region":"true",
	"enable-heartbeat-breakdown-metrics":"true",
	"enable-heartbeat-concurrent-runner":"true",
	"schedulers-v2":[{"type":"balance-region","args":null,"disable":false,"args-payload":""},{"type":"balance-leader","args":null,"disable":false,"args-payload":""},{"type":"hot-region","args":null,"disable":false,"args-payload":""},{"type":"evict-slow-store","args":null,"disable":false,"args-payload":""},{"type":"evict-stopping-store","args":null,"disable":false,"args-payload":""}],
	"hot-regions-write-interval":"10m0s",
	"hot-regions-reserved-days":7,
	"max-movable-hot-peer-size":512,
	"enable-diagnostic":"true",
	"enable-witness":"false",
	"slow-store-evicting-affected-store-ratio-threshold":0.3,
	"store-limit-version":"v1",
	"patrol-region-worker-count":1,
	"max-affinity-merge-region-size":256
}`
	defaultReplicationConfig = `{"max-replicas":3,"location-labels":"","strictly-match-label":"false","enable-placement-rules":"true","enable-placement-rules-cache":"false","isolation-level":""}`
)

// defaultSchedulers are the schedulers PD v8.5 runs, in the order GET
// /pd/api/v1/schedulers lists them.
var defaultSchedulers = []string{"balance-leader-scheduler", "balance-hot-region-scheduler",
	"evict-slow-store-scheduler", "evict-stopping-store-scheduler", "balance-region-scheduler"}

// ttlConfigItems are the schedule items PD accepts with a TTL (PD's
// supportedTTLConfigs): what BR and Lightning set while they run.
var ttlConfigItems = []string{"max-snapshot-count", "max-merge-region-size", "max-pending-peer-count",
	"max-merge-region-keys", "leader-schedule-limit", "region-schedule-limit", "replica-schedule-limit",
	"merge-schedule-limit", "hot-region-schedule-limit", "scheduler-max-waiting-operator",
	"enable-location-replacement", "enable-tikv-split-region"}

func newPDHTTPState() *pdHTTPState {
	st := &pdHTTPState{started: time.Now(), ttl: map[string]ttlConfig{}, paused: map[string]time.Time{}}
	// Both constants are valid JSON; a failure here is a typo caught by
	// every test that starts a cluster.
	if err := json.Unmarshal([]byte(defaultScheduleConfig), &st.schedule); err != nil {
		panic(fmt.Sprintf("simcluster: default schedule config: %v", err))
	}
	if err := json.Unmarshal([]byte(defaultReplicationConfig), &st.replication); err != nil {
		panic(fmt.Sprintf("simcluster: default replication config: %v", err))
	}
	return st
}

// pdHTTPHandlers are the handlers startPD and StartPD give PD's etcd.
func pdHTTPHandlers(srv *pdServer) map[string]http.Handler {
	return map[string]http.Handler{pdHTTPPrefix: &pdHTTP{srv: srv}}
}

// pdHTTP serves PD's HTTP API for one run of the PD server.
type pdHTTP struct {
	srv *pdServer
}

// pdRoute is one path of the API: its handlers by method.
type pdRoute map[string]func(w http.ResponseWriter, r *http.Request, arg string)

func (h *pdHTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimPrefix(r.URL.Path, pdHTTPPrefix)
	route, arg := h.route(path)
	if route == nil {
		http.NotFound(w, r) // PD's router: "404 page not found"
		return
	}
	fn := route[r.Method]
	if fn == nil {
		w.WriteHeader(http.StatusMethodNotAllowed) // PD's router: no body
		return
	}
	if _, _, err := h.srv.state(); err != nil {
		// SetPDDown and a stopping server fail the HTTP API with the gRPC one.
		writeJSON(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	fn(w, r, arg)
}

// route finds the handlers of a path (without the prefix) and the path's
// argument (a store id, a scheduler name).
func (h *pdHTTP) route(path string) (pdRoute, string) {
	get := func(fn func(http.ResponseWriter, *http.Request, string)) pdRoute {
		return pdRoute{http.MethodGet: fn}
	}
	switch path {
	case "version":
		return get(h.version), ""
	case "status":
		return get(h.status), ""
	case "health":
		return get(h.health), ""
	case "members":
		return get(h.members), ""
	case "leader":
		return get(h.leader), ""
	case "cluster":
		return get(h.cluster), ""
	case "cluster/status":
		return get(h.clusterStatus), ""
	case "stores":
		return get(h.stores), ""
	case "gc/safepoint":
		return get(h.gcSafePoint), ""
	case "config":
		return pdRoute{http.MethodGet: h.config, http.MethodPost: h.setConfig}, ""
	case "config/schedule":
		return get(h.scheduleConfig), ""
	case "config/replicate":
		return get(h.replicationConfig), ""
	case "config/cluster-version":
		return get(h.clusterVersion), ""
	case "schedulers":
		return get(h.schedulers), ""
	case "stats/region":
		return get(h.regionStats), ""
	}
	if id, ok := strings.CutPrefix(path, "store/"); ok && id != "" && !strings.Contains(id, "/") {
		return get(h.store), id
	}
	if name, ok := strings.CutPrefix(path, "schedulers/"); ok && name != "" && !strings.Contains(name, "/") {
		return pdRoute{http.MethodPost: h.pauseScheduler}, name
	}
	return nil, ""
}

// writeJSON answers as PD's renderer does: indented JSON and a newline.
func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(strconv.Quote(err.Error()))
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

// inputError is PD's answer to a body it cannot decode.
func inputError(w http.ResponseWriter, err error) {
	writeJSON(w, http.StatusBadRequest, struct {
		Code string         `json:"code"`
		Msg  string         `json:"msg"`
		Data map[string]any `json:"data"`
	}{"input", err.Error(), map[string]any{}})
}

func (h *pdHTTP) httpState() *pdHTTPState { return h.srv.s.http }

// member is PD's member with what the HTTP API adds from etcd's member
// attributes: the binary's version, its directory and git hash.
func (h *pdHTTP) member(decorated bool) *pdpb.Member {
	_, m, _ := h.srv.state()
	out := &pdpb.Member{Name: m.GetName(), MemberId: m.GetMemberId(), PeerUrls: m.GetPeerUrls(), ClientUrls: m.GetClientUrls()}
	if decorated {
		out.BinaryVersion = "v" + pdVersion
		out.GitHash = "simcluster"
		if exe, err := os.Executable(); err == nil {
			out.DeployPath = filepath.Dir(exe)
		}
	}
	return out
}

func (h *pdHTTP) version(w http.ResponseWriter, _ *http.Request, _ string) {
	writeJSON(w, http.StatusOK, map[string]string{"version": "v" + pdVersion, "build_time": "", "hash": "", "branch": ""})
}

func (h *pdHTTP) status(w http.ResponseWriter, _ *http.Request, _ string) {
	writeJSON(w, http.StatusOK, struct {
		BuildTS        string `json:"build_ts"`
		Version        string `json:"version"`
		GitHash        string `json:"git_hash"`
		StartTimestamp int64  `json:"start_timestamp"`
		KernelType     string `json:"kernel_type"`
	}{"None", "v" + pdVersion, "simcluster", h.httpState().started.Unix(), "Classic"})
}

func (h *pdHTTP) health(w http.ResponseWriter, _ *http.Request, _ string) {
	m := h.member(false)
	writeJSON(w, http.StatusOK, []any{struct {
		Name       string   `json:"name"`
		MemberID   uint64   `json:"member_id"`
		ClientUrls []string `json:"client_urls"`
		Health     bool     `json:"health"`
	}{m.Name, m.MemberId, m.ClientUrls, true}})
}

func (h *pdHTTP) members(w http.ResponseWriter, _ *http.Request, _ string) {
	m := h.member(true)
	writeJSON(w, http.StatusOK, &pdpb.GetMembersResponse{Header: h.srv.header(), Members: []*pdpb.Member{m}, Leader: m, EtcdLeader: m})
}

func (h *pdHTTP) leader(w http.ResponseWriter, _ *http.Request, _ string) {
	writeJSON(w, http.StatusOK, h.member(false))
}

func (h *pdHTTP) cluster(w http.ResponseWriter, _ *http.Request, _ string) {
	writeJSON(w, http.StatusOK, &metapb.Cluster{Id: h.srv.s.clusterID, MaxPeerCount: uint32(h.maxReplicas())})
}

func (h *pdHTTP) maxReplicas() int {
	st := h.httpState()
	st.mu.Lock()
	defer st.mu.Unlock()
	n, _ := st.replication["max-replicas"].(float64)
	return int(n)
}

// clusterStatus: the cluster is initialized, as PD says, once every region
// has as many peers as max-replicas asks.
func (h *pdHTTP) clusterStatus(w http.ResponseWriter, _ *http.Request, _ string) {
	want := h.maxReplicas()
	initialized := true
	for _, r := range h.srv.c.regionSnapshot() {
		initialized = initialized && len(r.Meta.GetPeers()) >= want
	}
	writeJSON(w, http.StatusOK, struct {
		RaftBootstrapTime time.Time `json:"raft_bootstrap_time"`
		IsInitialized     bool      `json:"is_initialized"`
		ReplicationStatus string    `json:"replication_status"`
	}{h.httpState().started.UTC(), initialized, ""})
}

// storeJSON is PD's store in its HTTP API: the store's metapb record with
// its state's name, and PD's statistics of it.
type storeJSON struct {
	Store  storeMetaJSON   `json:"store"`
	Status storeStatusJSON `json:"status"`
}

type storeMetaJSON struct {
	*metapb.Store
	StateName string `json:"state_name"`
}

// storeStatusJSON is PD's store status. The simulated stores report no
// disk statistics (capacity 0B) and every region counts as PD's smallest
// approximate size, 1 MiB.
type storeStatusJSON struct {
	Capacity        string     `json:"capacity"`
	Available       string     `json:"available"`
	UsedSize        string     `json:"used_size"`
	LeaderCount     int        `json:"leader_count"`
	LeaderWeight    float64    `json:"leader_weight"`
	LeaderScore     float64    `json:"leader_score"`
	LeaderSize      int64      `json:"leader_size"`
	RegionCount     int        `json:"region_count"`
	RegionWeight    float64    `json:"region_weight"`
	RegionScore     float64    `json:"region_score"`
	RegionSize      int64      `json:"region_size"`
	StartTS         *time.Time `json:"start_ts,omitempty"`
	LastHeartbeatTS *time.Time `json:"last_heartbeat_ts,omitempty"`
	Uptime          string     `json:"uptime,omitempty"`
}

// storeInfos builds PD's view of every store, by id. A store stopped with
// StoreDown is what PD shows for a TiKV that stopped heartbeating: Up,
// named Disconnected, with no heartbeat since.
func (h *pdHTTP) storeInfos() []storeJSON {
	c := h.srv.c
	leaders, peers := map[uint64]int{}, map[uint64]int{}
	for _, r := range c.regionSnapshot() {
		if r.Leader != nil && r.Leader.GetStoreId() != 0 {
			leaders[r.Leader.GetStoreId()]++
		}
		for _, p := range r.Meta.GetPeers() {
			peers[p.GetStoreId()]++
		}
	}
	stores := c.mock.GetAllStores()
	sort.Slice(stores, func(i, j int) bool { return stores[i].GetId() < stores[j].GetId() })
	started := h.httpState().started
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]storeJSON, 0, len(stores))
	for _, orig := range stores {
		st := *orig // mocktikv's copy, without the fields TiKV reports
		if st.Version == "" {
			st.Version = pdVersion
		}
		if st.StartTimestamp == 0 {
			st.StartTimestamp = started.Unix()
		}
		id := st.GetId()
		info := storeJSON{
			Store: storeMetaJSON{Store: &st, StateName: st.GetState().String()},
			Status: storeStatusJSON{Capacity: "0B", Available: "0B", UsedSize: "0B",
				LeaderCount: leaders[id], LeaderWeight: 1, LeaderScore: float64(leaders[id]), LeaderSize: int64(leaders[id]),
				RegionCount: peers[id], RegionWeight: 1, RegionScore: float64(peers[id]), RegionSize: int64(peers[id])},
		}
		startTS := time.Unix(st.StartTimestamp, 0).UTC()
		info.Status.StartTS = &startTS
		switch {
		case st.GetState() == metapb.StoreState_Tombstone:
		case c.stores[id] != nil && c.storeDownLocked(id):
			st.State, info.Store.StateName = metapb.StoreState_Up, "Disconnected"
		default:
			st.LastHeartbeat = now.UnixNano()
			hb := now.UTC()
			info.Status.LastHeartbeatTS = &hb
			info.Status.Uptime = now.Sub(startTS).String()
		}
		out = append(out, info)
	}
	return out
}

// stores lists Up and Offline stores, or those in the states asked for
// (?state=0&state=1, metapb's numbers), as PD does (a bad state is PD's
// 500).
func (h *pdHTTP) stores(w http.ResponseWriter, r *http.Request, _ string) {
	accept := []metapb.StoreState{metapb.StoreState_Up, metapb.StoreState_Offline}
	if v, ok := r.URL.Query()["state"]; ok {
		accept = nil
		for _, s := range v {
			n, err := strconv.Atoi(s)
			if err != nil {
				writeJSON(w, http.StatusInternalServerError, err.Error())
				return
			}
			state := metapb.StoreState(n)
			if _, known := metapb.StoreState_name[int32(n)]; !known {
				writeJSON(w, http.StatusInternalServerError, fmt.Sprintf("unknown StoreState: %v", state))
				return
			}
			accept = append(accept, state)
		}
	}
	infos := []storeJSON{}
	for _, s := range h.storeInfos() {
		if slices.Contains(accept, s.Store.GetState()) {
			infos = append(infos, s)
		}
	}
	writeJSON(w, http.StatusOK, struct {
		Count  int         `json:"count"`
		Stores []storeJSON `json:"stores"`
	}{len(infos), infos})
}

func (h *pdHTTP) store(w http.ResponseWriter, _ *http.Request, arg string) {
	id, err := strconv.ParseUint(arg, 10, 64)
	if err != nil {
		inputError(w, err)
		return
	}
	for _, s := range h.storeInfos() {
		if s.Store.GetId() == id {
			writeJSON(w, http.StatusOK, s)
			return
		}
	}
	writeJSON(w, http.StatusNotFound, fmt.Sprintf("[PD:core:ErrStoreNotFound]store %d not found", id))
}

// gcSafePoint lists the live service safepoints (barriers by id, then
// gc_worker's, the txn safe point), their minimum and the GC safe point.
func (h *pdHTTP) gcSafePoint(w http.ResponseWriter, _ *http.Request, _ string) {
	type ssp struct {
		ServiceID string `json:"service_id"`
		ExpiredAt int64  `json:"expired_at"`
		SafePoint uint64 `json:"safe_point"`
	}
	c := h.srv.c
	sps := c.ServiceSafePoints()
	ids := make([]string, 0, len(sps))
	for id := range sps {
		if id != gcWorkerID {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	list := make([]ssp, 0, len(sps))
	minSP := sps[gcWorkerID].SafePoint
	for _, id := range append(ids, gcWorkerID) {
		sp := sps[id]
		expiredAt := int64(math.MaxInt64)
		if !sp.ExpiresAt.IsZero() {
			expiredAt = sp.ExpiresAt.Unix()
		}
		list = append(list, ssp{id, expiredAt, sp.SafePoint})
		minSP = min(minSP, sp.SafePoint)
	}
	writeJSON(w, http.StatusOK, struct {
		ServiceGCSafepoints   []ssp  `json:"service_gc_safe_points"`
		MinServiceGCSafepoint uint64 `json:"min_service_gc_safe_point,omitempty"`
		GCSafePoint           uint64 `json:"gc_safe_point"`
	}{list, minSP, c.GCSafePoint()})
}

// scheduleLocked is the schedule config as served, with PD's per-store
// limits for the stores not buried.
func (h *pdHTTP) scheduleLocked(st *pdHTTPState) map[string]any {
	out := make(map[string]any, len(st.schedule))
	for k, v := range st.schedule {
		out[k] = v
	}
	limits := map[string]any{}
	for _, s := range h.srv.c.mock.GetAllStores() {
		if s.GetState() != metapb.StoreState_Tombstone {
			limits[strconv.FormatUint(s.GetId(), 10)] = map[string]any{"add-peer": 15, "remove-peer": 15}
		}
	}
	out["store-limit"] = limits
	return out
}

func (h *pdHTTP) scheduleConfig(w http.ResponseWriter, _ *http.Request, _ string) {
	st := h.httpState()
	st.mu.Lock()
	defer st.mu.Unlock()
	writeJSON(w, http.StatusOK, h.scheduleLocked(st))
}

func (h *pdHTTP) replicationConfig(w http.ResponseWriter, _ *http.Request, _ string) {
	st := h.httpState()
	st.mu.Lock()
	defer st.mu.Unlock()
	writeJSON(w, http.StatusOK, st.replication)
}

func (h *pdHTTP) clusterVersion(w http.ResponseWriter, _ *http.Request, _ string) {
	writeJSON(w, http.StatusOK, pdVersion)
}

// config is the part of PD's whole config that the simulated PD has:
// its addresses and name, the schedule and replication config, the
// cluster version and its TLS files.
func (h *pdHTTP) config(w http.ResponseWriter, _ *http.Request, _ string) {
	m := h.member(false)
	client, peer := strings.Join(m.ClientUrls, ","), strings.Join(m.PeerUrls, ",")
	sec := map[string]any{"cacert-path": "", "cert-path": "", "key-path": ""}
	if f := h.srv.c.cfg.TLS; f != nil {
		sec = map[string]any{"cacert-path": f.CA, "cert-path": f.Cert, "key-path": f.Key}
	}
	dataDir := h.srv.c.cfg.DataDir
	if dataDir == "" {
		dataDir = h.srv.c.pdTempDir
	}
	st := h.httpState()
	st.mu.Lock()
	defer st.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"client-urls": client, "peer-urls": peer, "advertise-client-urls": client, "advertise-peer-urls": peer,
		"name": m.Name, "data-dir": dataDir, "cluster-version": pdVersion,
		"schedule": h.scheduleLocked(st), "replication": st.replication, "security": sec,
		"labels": map[string]any{}, "label-property": map[string]any{},
	})
}

// setConfig is POST /config: with ?ttlSecond=N the TTL config BR sets
// while it restores (only PD's TTL items; 0 deletes them; not shown in
// GET, as PD keeps it apart), otherwise schedule and replication items by
// name or "schedule.<item>".
func (h *pdHTTP) setConfig(w http.ResponseWriter, r *http.Request, _ string) {
	data, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, err.Error())
		return
	}
	conf := map[string]any{}
	if err := json.Unmarshal(data, &conf); err != nil {
		writeJSON(w, http.StatusBadRequest, err.Error())
		return
	}
	now, err := h.srv.s.clock.now()
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, err.Error())
		return
	}
	st := h.httpState()
	st.mu.Lock()
	defer st.mu.Unlock()
	if s := r.URL.Query().Get("ttlSecond"); s != "" {
		ttl, err := strconv.Atoi(s)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, err.Error())
			return
		}
		for k := range conf {
			if item, ok := strings.CutPrefix(k, "schedule."); !ok || !slices.Contains(ttlConfigItems, item) {
				writeJSON(w, http.StatusBadRequest, fmt.Sprintf("unsupported ttl config %s", k))
				return
			}
		}
		for k, v := range conf {
			if ttl <= 0 {
				delete(st.ttl, k)
			} else {
				st.ttl[k] = ttlConfig{value: v, expires: now.Add(time.Duration(ttl) * time.Second)}
			}
		}
		if ttl == 0 {
			writeJSON(w, http.StatusOK, "The ttl config is deleted.")
		} else {
			writeJSON(w, http.StatusOK, "The ttl config is updated.")
		}
		return
	}
	// Check every item before changing any: a refused request changes
	// nothing.
	type change struct {
		section map[string]any
		item    string
		value   any
	}
	var changes []change
	for k, v := range conf {
		section, item := "", k
		if before, after, ok := strings.Cut(k, "."); ok {
			section, item = before, after
		}
		var target map[string]any
		isSchedule := section == "schedule" || (section == "" && st.schedule[item] != nil)
		switch {
		case isSchedule:
			target = st.schedule
		case section == "replication" || (section == "" && st.replication[item] != nil):
			target = st.replication
		case section != "":
			writeJSON(w, http.StatusBadRequest, fmt.Sprintf("config prefix %s not found", section))
			return
		}
		old, found := target[item]
		if target == nil || !found || item == "store-limit" || item == "schedulers-v2" {
			// PD names the item of a "section.item" key, or the key.
			writeJSON(w, http.StatusBadRequest, fmt.Sprintf("config item %s not found", item))
			return
		}
		if isSchedule {
			if t, ok := st.ttl["schedule."+item]; ok && now.Before(t.expires) {
				writeJSON(w, http.StatusBadRequest, fmt.Sprintf("need to clean up TTL first for schedule.%s", item))
				return
			}
		}
		if err := sameJSONKind(old, v); err != nil {
			writeJSON(w, http.StatusBadRequest, fmt.Sprintf("config item %s: %v", k, err))
			return
		}
		changes = append(changes, change{target, item, v})
	}
	for _, ch := range changes {
		ch.section[ch.item] = ch.value
	}
	writeJSON(w, http.StatusOK, "The config is updated.")
}

// sameJSONKind refuses a value of another JSON type than the item has.
// PD keeps booleans as "true"/"false" strings in its JSON and accepts
// either form.
func sameJSONKind(old, v any) error {
	kind := func(x any) string {
		switch x := x.(type) {
		case float64:
			return "number"
		case bool:
			return "boolean"
		case string:
			if x == "true" || x == "false" {
				return "boolean"
			}
			return "string"
		}
		return fmt.Sprintf("%T", x)
	}
	if kind(old) != kind(v) {
		return fmt.Errorf("want a %s, got %v", kind(old), v)
	}
	return nil
}

// schedulers lists the schedulers (?status=paused: those paused now;
// ?status=disabled: none are).
func (h *pdHTTP) schedulers(w http.ResponseWriter, r *http.Request, _ string) {
	now, err := h.srv.s.clock.now()
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, err.Error())
		return
	}
	st := h.httpState()
	st.mu.Lock()
	defer st.mu.Unlock()
	out := []string{}
	switch r.URL.Query().Get("status") {
	case "paused":
		for _, name := range defaultSchedulers {
			if until, ok := st.paused[name]; ok && now.Before(until) {
				out = append(out, name)
			}
		}
	case "disabled":
	default:
		out = append(out, defaultSchedulers...)
	}
	writeJSON(w, http.StatusOK, out)
}

// pauseScheduler is POST /schedulers/<name> {"delay": seconds}: pause for
// that long, or resume with 0, as BR does around a restore.
func (h *pdHTTP) pauseScheduler(w http.ResponseWriter, r *http.Request, name string) {
	var body map[string]any
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&body); err != nil {
		inputError(w, err)
		return
	}
	delay, ok := body["delay"].(float64)
	if !ok {
		writeJSON(w, http.StatusBadRequest, "missing pause time")
		return
	}
	if !slices.Contains(defaultSchedulers, name) {
		writeJSON(w, http.StatusInternalServerError, "[PD:scheduler:ErrSchedulerNotFound]scheduler not found")
		return
	}
	now, err := h.srv.s.clock.now()
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, err.Error())
		return
	}
	st := h.httpState()
	st.mu.Lock()
	defer st.mu.Unlock()
	if delay <= 0 {
		delete(st.paused, name)
	} else {
		st.paused[name] = now.Add(time.Duration(delay) * time.Second)
	}
	writeJSON(w, http.StatusOK, "Pause or resume the scheduler successfully.")
}

// regionStats is GET /stats/region?start_key=&end_key=[&count]: the
// regions overlapping the range of encoded keys, as BR counts them; every
// region is PD's smallest approximate size (1 MiB, "empty").
func (h *pdHTTP) regionStats(w http.ResponseWriter, r *http.Request, _ string) {
	q := r.URL.Query()
	regions := h.srv.c.regionSnapshot().scan([]byte(q.Get("start_key")), []byte(q.Get("end_key")), 0)
	type stats struct {
		Count                   int            `json:"count"`
		EmptyCount              int            `json:"empty_count"`
		StorageSize             int64          `json:"storage_size"`
		UserStorageSize         int64          `json:"user_storage_size"`
		UserColumnarStorageSize int64          `json:"user_columnar_storage_size"`
		StorageKeys             int64          `json:"storage_keys"`
		StoreLeaderCount        map[uint64]int `json:"store_leader_count"`
		StorePeerCount          map[uint64]int `json:"store_peer_count"`
		StoreLeaderSize         map[uint64]int `json:"store_leader_size"`
		StoreLeaderKeys         map[uint64]int `json:"store_leader_keys"`
		StorePeerSize           map[uint64]int `json:"store_peer_size"`
		StorePeerKeys           map[uint64]int `json:"store_peer_keys,omitempty"`
	}
	out := stats{Count: len(regions)}
	if _, onlyCount := q["count"]; !onlyCount {
		out.EmptyCount, out.StorageSize = len(regions), int64(len(regions))
		out.StoreLeaderCount, out.StorePeerCount = map[uint64]int{}, map[uint64]int{}
		out.StoreLeaderSize, out.StoreLeaderKeys = map[uint64]int{}, map[uint64]int{}
		out.StorePeerSize, out.StorePeerKeys = map[uint64]int{}, map[uint64]int{}
		for _, rg := range regions {
			if l := rg.Leader.GetStoreId(); l != 0 {
				out.StoreLeaderCount[l]++
				out.StoreLeaderSize[l]++
				out.StoreLeaderKeys[l] = 0 // the simulated regions report no key counts
			}
			for _, p := range rg.Meta.GetPeers() {
				out.StorePeerCount[p.GetStoreId()]++
				out.StorePeerSize[p.GetStoreId()]++
				out.StorePeerKeys[p.GetStoreId()] = 0
			}
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// PDURL is PD's client URL, where its HTTP API lives beside pdpb.PD:
// http://PDAddr, or https:// with Config.TLS, as TiDB's tools and curl
// reach PD. It is "" when PD is not served.
func (c *Cluster) PDURL() string {
	if c.etcd == nil {
		return ""
	}
	return c.etcd.Member().ClientURL
}
