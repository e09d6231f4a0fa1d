// Package simcluster starts a simulated multi-store TiKV cluster in one
// process, speaking the real protocols, for tests and the playground. It is
// meant to be strict: a CDC client that would misbehave against TiKV should
// misbehave against it, so every behaviour below follows TiKV's code
// (components/cdc/src/{service,endpoint,delegate,initializer,observer}.rs,
// checked against tikv/tikv master of 2026-08), not a friendlier reading.
//
// # Model
//
//   - The topology comes from client-go's mock cluster (mocktikv): N
//     stores, regions with one peer per store, leaders, split, merge, leader
//     transfer, store down/up. PD answers from it, in process (PD) and, with
//     Config.ServePD, over the network (PDAddr; see PD below); its store
//     addresses are the stores' loopback CDC gRPC servers. Each of those also
//     serves gRPC health, which client-go's store liveness check asks.
//   - Writes go through client-go's real transaction client (Txn, Put,
//     Delete; async commit and 1PC off, so every write is a classic two-phase
//     commit) or through hand-made prewrites held open (Prewrite → OpenTxn,
//     with Commit, Rollback, Heartbeat). A hook on client-go's RPC client
//     applies every write RPC (Prewrite, Commit, BatchRollback, Cleanup,
//     CheckTxnStatus, ResolveLock, TxnHeartBeat) and records what the store
//     acknowledged in a ledger under one mutex, mirroring mocktikv's rules;
//     CheckLedger compares the ledger with mocktikv's MVCC data. The ledger
//     (versions per key, locks) is the source of initial scans and of
//     Committed, the ground truth tests compare against.
//   - A BulkWriter (bulk.go) is the fast source: it commits transactions of
//     Put rows straight into the ledger and the CDC streams, without
//     client-go or mocktikv, at over a million rows a second of its own
//     CPU, with start and commit ts from the same TSO and under the same
//     mutex as the hook, so its rows, scans and resolved ts obey every rule
//     below. It owns its key range; client-go prewrites there are refused.
//   - Every store serves kvproto's cdcpb.ChangeData EventFeed; EventFeedV2
//     answers Unimplemented so clients fall back (TiKV itself implements V2).
//   - Every store also serves TiKV's KV API (tikvpb.Tikv, kvservice.go) for
//     clients outside the process, such as br reading TiDB's schema with
//     client-go: KvGet, KvScan, KvBatchGet, KvScanLock and lock resolution
//     (CheckTxnStatus, Cleanup, ResolveLock, TxnHeartBeat, BatchRollback,
//     PessimisticRollback), unary and over BatchCommands. Each request goes
//     to the writer's own client (mocktikv behind the hook) as this store, so
//     region, epoch and leader are checked as TiKV checks them and lock
//     resolution is recorded like any write. Writes (Prewrite, Commit, …)
//     answer Unimplemented: they stay in process.
//
// # EventFeed semantics
//
//   - A connection's features come from the ticdc_version in its first
//     request header, as in TiKV: ≥ 4.0.8 gets store-level ResolvedTs
//     batches, older (or empty, or unparsable such as "v8.5.0") gets one
//     deprecated Event.resolved_ts per region; ≥ 5.3.0 gets cluster-id checks.
//   - Registration checks, in TiKV's order: cluster id (cluster_id_mismatch),
//     kv_api other than TiDB (compatibility), injected failures
//     (FailRegistrations), no peer on this store (region_not_found), the same
//     region and request id already on the stream (duplicate_request), not the
//     leader (not_leader naming the leader), stale epoch version
//     (epoch_not_match with the current region; conf_ver is not compared).
//   - The snapshot for the initial scan is taken under the write mutex, so no
//     write is lost or duplicated between scan and live rows. The scan is
//     then sent asynchronously in events of ≤ 32 KiB of rows: COMMITTED rows
//     (self-contained, with value) for versions with commit_ts > checkpoint
//     and PREWRITE rows for held Put/Delete locks, keys ascending and, per
//     key, the lock first and then versions newest first (TiKV's delta
//     scanner); INITIALIZED ends the last event. Live rows of later writes
//     are sent meanwhile, so they can precede scan rows — a COMMIT can arrive
//     before the scanned PREWRITE it joins (HoldScans makes that certain).
//   - Live rows, one Event per request and region: PREWRITE with the value;
//     COMMIT with the value only if it is short (≤ 255 bytes, TiKV's write
//     record keeps it) and none otherwise; ROLLBACK (op UNKNOWN, commit_ts 0)
//     for every rollback record, even without a prior PREWRITE; a heartbeat or
//     min_commit_ts push resends the lock as PREWRITE (with a short value or a
//     delete; a long-value Put lock is not resent). A transaction whose commit
//     ts is below a registration's checkpoint but commits after its snapshot
//     is sent live anyway; clients drop it. Rows only inside the request's key
//     range ∩ region. Lock-type (SELECT FOR UPDATE) and pessimistic locks
//     produce no rows.
//   - Resolved ts (ResolveOnce, every Config.ResolvedTsInterval): see
//     ResolveOnce. Per subscription after INITIALIZED, never backwards, held at
//     the oldest lock in its range, starting from 0 (so it can be below the
//     checkpoint), sent every round; batches carry request_id 0 on EventFeed,
//     so a client must not subscribe one region twice on one stream.
//   - ChangeDataEvents batch events up to 6 MiB (TiKV's limit), past gRPC's
//     default 4 MiB: clients must raise MaxCallRecvMsgSize.
//   - Region errors end the subscription: TransferLeader → not_leader with
//     the new leader; Split → epoch_not_match (both halves) or
//     region_not_found; Merge → region_not_found for the absorbed region and
//     epoch_not_match with no regions or region_not_found for the survivor
//     (TiKV sends whichever of two notices wins; Config.Seed decides here).
//   - Deregister with a region id drops that subscription, without one every
//     region of the request id; a closed stream drops all of its own. Any
//     other request kind ends the stream (TiKV hits unreachable!()).
//   - Faults: DropStreams, StallStreams (queue builds; past
//     Config.StreamQueueLimit subscriptions end with congested), DelayEvents,
//     HoldScans, FailRegistrations (server_is_busy, congested, any error),
//     RestartCDC on the same port, StoreDown/StoreUp (leaders move to live
//     peers, health says NOT_SERVING), SetPDDown (PD's API answers
//     Unavailable), AdvancePDClock.
//
// # PD
//
// PD owns the cluster id (made as PD makes one: bootstrap seconds and
// random bits), one TSO clock and the GC state; the in-process PD() and the
// network PD are two doors to that one state, so timestamps are unique and
// increasing across both (client-go's writer, TSO and the Tso stream all
// allocate from it) and both see the same safepoints. Regions, leaders and
// stores are mocktikv's, read at each request.
//
//   - Network (Config.ServePD): an embedded etcd (meta/embedetcd) whose
//     client port also serves kvproto's pdpb.PD, as PD serves both on its
//     client URL. PDAddr is "127.0.0.1:port" for pd.NewClient and etcd
//     clients alike; DataDir keeps the etcd data (default: a temp dir).
//   - Calls served, with PD's rules (tikv/pd server/grpc_service.go,
//     gc_service.go, pkg/core): GetMembers and GetClusterInfo (one member,
//     PD service mode, no cluster id check, as the client learns it there),
//     Tso (a batch of count timestamps answered by its last, the client
//     derives the rest), GetRegion, GetPrevRegion (the adjacent region before
//     the one holding the key), GetRegionByID, ScanRegions (from the region
//     holding the start key, limit, old and new response fields),
//     BatchScanRegions (sorted non-overlapping ranges, adjacent ones merged,
//     a region shared by two ranges once, limit, contain-all-key-range),
//     QueryRegion (the router client's stream), GetStore, GetAllStores,
//     GetGCSafePoint, UpdateGCSafePoint, UpdateServiceGCSafePoint. Every
//     other call answers Unimplemented. A request with another cluster id
//     gets FailedPrecondition; "no such region" is a response without a
//     region, as PD's leader sends.
//   - GC, as current PD keeps it behind the service-safepoint API: the txn
//     safe point is the service safepoint "gc_worker" (infinite TTL only);
//     every other service safepoint is a barrier expiring ttl seconds (rounded
//     up) after PD's clock, removed by ttl <= 0, refused when below the txn
//     safe point; the answer is the minimum, gc_worker's. The GC safe point
//     never passes the txn safe point, which never passes a live barrier.
//     UpdateGCSafePoint below the current value answers it (0 reads it) and
//     past the txn safe point fails. SetGCSafePoint plays TiDB's GC worker;
//     GCSafePoint and ServiceSafePoints show the state. With ServePD each
//     change is first written to the etcd in PD's layout (/pd/cluster_id,
//     /pd/<id>/gc/safe_point in hex, /pd/<id>/gc/safe_point/service/<id> as
//     JSON, the txn safe point at /tidb/store/gcworker/saved_safe_point).
//   - TLS (Config.TLS, files from tests/certtest): PD, its etcd and every
//     store's CDC server serve mutual TLS; clients need a certificate from
//     the same CA. client-go's store liveness check dials plain text, so
//     with TLS a store marked down for the writer (StoreDown) is not seen
//     healthy again unless client-go's global security config is set.
//   - HTTP API (pdhttp.go): PD's /pd/api/v1/ on the same port (PDURL;
//     HTTPS with Config.TLS), what TiDB's BR (pdutil, log restore), pd-ctl
//     and curl read, answered from the sim's state in PD v8.5's JSON shapes
//     and status codes: version, status, health, members, leader, cluster
//     (and /status), stores (?state=) and store/{id} (mocktikv's stores,
//     leader and region counts from the topology, no disk statistics; a
//     StoreDown store is Up and "Disconnected"), gc/safepoint (barriers by
//     id, then gc_worker's txn safe point, their minimum, the GC safe point),
//     config (the part the sim has), config/schedule, config/replicate,
//     config/cluster-version, POST config (items, or PD's TTL items with
//     ?ttlSecond, kept apart as PD keeps them), schedulers (?status=paused)
//     and POST schedulers/{name} {"delay": s} (pause on PD's clock, 0
//     resumes), stats/region. Everything else answers 404 as PD does for an
//     unknown path (regions, operators, placement and label rules are not
//     served). The config and paused schedulers outlast StopPD/StartPD.
//     pdhttp_test.go compares every answer with a real PD's, field by field.
//   - SetPDDown fails PD's API only (gRPC and HTTP, 503): etcd and the
//     in-process PD keep serving, so the workload goes on while agents lose
//     PD.
//
// # External PD
//
// With Config.ExternalPD the stores join a PD server of their own (a real
// pd-server; tests/realpd runs one) as TiKV stores do, and the cluster
// serves no PD: Bootstrap with the first store and region, PutStore at
// the CDC servers' addresses, store heartbeats (none from a down store, so
// PD shows it disconnected) and region heartbeats from leaders on every
// topology change and periodically, with mocktikv's epochs and a term that
// grows on leader change; merges raise the survivor's version above the
// absorbed region's as TiKV does, or PD would refuse it as stale. The
// cluster id and every timestamp (client-go's writer, TSO, the
// BulkWriter, resolved ts) are that PD's; PDAddr is its address, where
// its etcd serves too. WaitPDSynced waits until PD lists the cluster's
// regions; JoinPDLater and JoinPD leave PD unbootstrapped until a test
// says. See extpd.go.
//
// # Keys
//
// Three forms appear and each function says which it takes:
//   - raw keys: what applications write and what CDC rows carry — TiKV's
//     delegate decodes the stored key (Key::from_encoded(..).into_raw()) for
//     kv_api TiDB;
//   - encoded keys: memcomparable (codec.EncodeBytes) — region boundaries in
//     PD and mocktikv (RegionInfo.Meta), and ChangeDataRequest start/end keys
//     (TiKV's ObservedRange decodes them; invalid ones observe the whole
//     region);
//   - EncodeKey/DecodeKey convert between the two.
//
// # Not simulated
//
// Raft, replication, persistence and learners; GC of versions (PD's GC
// state is kept, TiKV collects nothing); PD members other than one, PD
// restarts with the same data, keyspaces, region buckets, store stats and
// heartbeats (a down store shows mocktikv's Offline state, where PD would
// keep it Up and mark it disconnected); old values (extra_op
// ReadOldValue leaves old_value empty); RawKV/TxnKV feeds; EventFeedV2 and
// stream multiplexing; filter_loop/txn_source; NotifyTxnStatus; TiKV's
// per-connection memory quota (approximated by a queue length); async commit
// and 1PC (the mock falls back to two-phase commit; Txn turns them off).
package simcluster
