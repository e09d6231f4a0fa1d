// Package simcluster starts a simulated multi-store TiKV cluster in one
// process, speaking the real protocols, for tests and the playground. It is
// meant to be strict: a CDC client that would misbehave against TiKV should
// misbehave against it, so every behaviour below follows TiKV's code
// (components/cdc/src/{service,endpoint,delegate,initializer,observer}.rs,
// checked against tikv/tikv master of 2026-08), not a friendlier reading.
//
// # Model
//
//   - PD and the stores come from client-go's mock cluster (mocktikv): N
//     stores, regions with one peer per store, leaders, split, merge, leader
//     transfer, store down/up. Agents use the ordinary pd.Client (PD), whose
//     store addresses are the stores' loopback CDC gRPC servers. Each of those
//     also serves gRPC health, which client-go's store liveness check asks.
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
//     peers, health says NOT_SERVING), TSO (the mock PD oracle).
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
// Raft, replication, persistence and learners; GC; old values (extra_op
// ReadOldValue leaves old_value empty); RawKV/TxnKV feeds; EventFeedV2 and
// stream multiplexing; filter_loop/txn_source; NotifyTxnStatus; TiKV's
// per-connection memory quota (approximated by a queue length); async commit
// and 1PC (the mock falls back to two-phase commit; Txn turns them off).
package simcluster
