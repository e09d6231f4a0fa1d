// Package simcluster starts a simulated multi-store TiKV cluster in one
// process, speaking the real protocols, for tests and the playground:
//
//   - PD and the stores come from client-go's mock cluster (mocktikv): regions
//     with three peers, leaders, split, merge, leader transfer, store
//     down/up. Agents reach PD through the ordinary pd.Client.
//   - Writes go through client-go's real transaction client. A hook on its
//     RPC client records every prewrite, commit and rollback that a store
//     acknowledged into a ledger: committed versions per key and the current
//     locks. The ledger is the ground truth for initial scans and for tests.
//   - Every store serves kvproto's cdcpb.ChangeData EventFeed on its own
//     loopback gRPC port, with TiKV's semantics: registration checks (leader,
//     epoch, region, cluster id), an initial scan of COMMITTED rows with
//     commit_ts > checkpoint_ts plus PREWRITE rows for held locks, then
//     INITIALIZED, then live PREWRITE/COMMIT/ROLLBACK rows in order,
//     store-level resolved-ts batches that never pass a held lock's start_ts
//     and never go back, and region errors on the stream when a region's
//     leader moves, it splits or merges. EventFeedV2 answers Unimplemented.
//
// Keys. Three forms appear and each function says which it takes:
//   - raw keys: what applications write and what CDC rows carry (TiKV's CDC
//     decodes keys before sending them);
//   - encoded keys: memcomparable (codec.EncodeBytes) — region boundaries in
//     PD and in mocktikv, and the start/end keys of a ChangeDataRequest, as
//     TiCDC sends them;
//   - EncodeKey/DecodeKey convert between the two.
//
// What is simulated and what is not: raft, replication and persistence are
// not (the mock applies writes to one in-memory MVCC store); async commit
// and 1PC are disabled, so every write is a classic two-phase commit; pessimistic
// locks and lock-type (SELECT FOR UPDATE) mutations produce no rows, as in
// TiKV. Old values (extra_op ReadOldValue) are not filled.
package simcluster
