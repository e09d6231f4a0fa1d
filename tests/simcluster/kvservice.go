package simcluster

import (
	"context"
	"sync"
	"time"

	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/pingcap/kvproto/pkg/tikvpb"
	"github.com/tikv/client-go/v2/tikvrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// kvService is TiKV's KV API (tikvpb.Tikv) on a store's gRPC server, for
// clients outside the process: `br stream start` reads TiDB's schema through
// client-go's snapshot reads, exactly as against TiKV. It serves the reads
// (Get, Scan, BatchGet, ScanLock) and what a reader needs to get past the
// locks it meets (CheckTxnStatus, Cleanup, ResolveLock, TxnHeartBeat,
// BatchRollback, PessimisticRollback), unary and through BatchCommands, the
// stream client-go sends nearly everything on.
//
// Each request is handed to the client the cluster's own writer uses
// (mocktikv behind hookClient) with this store's address, so mocktikv checks
// the region, epoch and leader as TiKV would and answers region errors the
// remote client retries on; lock resolution goes through the hook like every
// write, so the ledger and the CDC streams see it. Writes themselves
// (Prewrite, Commit, …) stay in process: they answer Unimplemented.
type kvService struct {
	tikvpb.UnimplementedTikvServer
	s *storeServer
}

// kvTimeout bounds one forwarded request when the caller set no deadline.
const kvTimeout = 30 * time.Second

// forward runs one request against the simulated data as this store.
func (k *kvService) forward(ctx context.Context, typ tikvrpc.CmdType, req any, rctx *kvrpcpb.Context) (any, error) {
	k.s.mu.Lock()
	down := k.s.down
	k.s.mu.Unlock()
	if down {
		return nil, status.Errorf(codes.Unavailable, "store %d is down", k.s.id)
	}
	kv := k.s.c.kvStore.Load()
	if kv == nil {
		return nil, status.Error(codes.Unavailable, "simcluster: the cluster is still starting")
	}
	timeout := kvTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	var c kvrpcpb.Context
	if rctx != nil {
		c = *rctx
	}
	resp, err := kv.GetTiKVClient().SendRequest(ctx, k.s.address(), tikvrpc.NewRequest(typ, req, c), timeout)
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		return nil, status.Errorf(codes.Unknown, "store %d: %s: %v", k.s.id, typ, err)
	}
	if resp == nil || resp.Resp == nil {
		return nil, status.Errorf(codes.Internal, "store %d: %s: empty response", k.s.id, typ)
	}
	return resp.Resp, nil
}

// call is forward with the response's type checked.
func call[T any](k *kvService, ctx context.Context, typ tikvrpc.CmdType, req any, rctx *kvrpcpb.Context) (T, error) {
	var zero T
	resp, err := k.forward(ctx, typ, req, rctx)
	if err != nil {
		return zero, err
	}
	out, ok := resp.(T)
	if !ok {
		return zero, status.Errorf(codes.Internal, "store %d: %s answered %T", k.s.id, typ, resp)
	}
	return out, nil
}

func (k *kvService) KvGet(ctx context.Context, req *kvrpcpb.GetRequest) (*kvrpcpb.GetResponse, error) {
	return call[*kvrpcpb.GetResponse](k, ctx, tikvrpc.CmdGet, req, req.Context)
}

func (k *kvService) KvScan(ctx context.Context, req *kvrpcpb.ScanRequest) (*kvrpcpb.ScanResponse, error) {
	return call[*kvrpcpb.ScanResponse](k, ctx, tikvrpc.CmdScan, req, req.Context)
}

func (k *kvService) KvBatchGet(ctx context.Context, req *kvrpcpb.BatchGetRequest) (*kvrpcpb.BatchGetResponse, error) {
	return call[*kvrpcpb.BatchGetResponse](k, ctx, tikvrpc.CmdBatchGet, req, req.Context)
}

func (k *kvService) KvScanLock(ctx context.Context, req *kvrpcpb.ScanLockRequest) (*kvrpcpb.ScanLockResponse, error) {
	return call[*kvrpcpb.ScanLockResponse](k, ctx, tikvrpc.CmdScanLock, req, req.Context)
}

func (k *kvService) KvCheckTxnStatus(ctx context.Context, req *kvrpcpb.CheckTxnStatusRequest) (*kvrpcpb.CheckTxnStatusResponse, error) {
	return call[*kvrpcpb.CheckTxnStatusResponse](k, ctx, tikvrpc.CmdCheckTxnStatus, req, req.Context)
}

func (k *kvService) KvCleanup(ctx context.Context, req *kvrpcpb.CleanupRequest) (*kvrpcpb.CleanupResponse, error) {
	return call[*kvrpcpb.CleanupResponse](k, ctx, tikvrpc.CmdCleanup, req, req.Context)
}

func (k *kvService) KvResolveLock(ctx context.Context, req *kvrpcpb.ResolveLockRequest) (*kvrpcpb.ResolveLockResponse, error) {
	return call[*kvrpcpb.ResolveLockResponse](k, ctx, tikvrpc.CmdResolveLock, req, req.Context)
}

func (k *kvService) KvTxnHeartBeat(ctx context.Context, req *kvrpcpb.TxnHeartBeatRequest) (*kvrpcpb.TxnHeartBeatResponse, error) {
	return call[*kvrpcpb.TxnHeartBeatResponse](k, ctx, tikvrpc.CmdTxnHeartBeat, req, req.Context)
}

func (k *kvService) KvBatchRollback(ctx context.Context, req *kvrpcpb.BatchRollbackRequest) (*kvrpcpb.BatchRollbackResponse, error) {
	return call[*kvrpcpb.BatchRollbackResponse](k, ctx, tikvrpc.CmdBatchRollback, req, req.Context)
}

func (k *kvService) KVPessimisticRollback(ctx context.Context, req *kvrpcpb.PessimisticRollbackRequest) (*kvrpcpb.PessimisticRollbackResponse, error) {
	return call[*kvrpcpb.PessimisticRollbackResponse](k, ctx, tikvrpc.CmdPessimisticRollback, req, req.Context)
}

// GetStoreSafeTS answers client-go's periodic safe-ts poll: the simulator
// keeps no safe ts, and 0 means "unknown" to the client.
func (k *kvService) GetStoreSafeTS(context.Context, *kvrpcpb.StoreSafeTSRequest) (*kvrpcpb.StoreSafeTSResponse, error) {
	return &kvrpcpb.StoreSafeTSResponse{}, nil
}

// GetHealthFeedback answers client-go's health probe.
func (k *kvService) GetHealthFeedback(context.Context, *kvrpcpb.GetHealthFeedbackRequest) (*kvrpcpb.GetHealthFeedbackResponse, error) {
	return &kvrpcpb.GetHealthFeedbackResponse{HealthFeedback: k.healthFeedback()}, nil
}

func (k *kvService) healthFeedback() *kvrpcpb.HealthFeedback {
	return &kvrpcpb.HealthFeedback{StoreId: k.s.id, SlowScore: 1}
}

// BatchCommands serves client-go's request stream: every request of a
// batch runs on its own, and each answer goes back under its request id as
// soon as it is ready, as TiKV answers out of order.
func (k *kvService) BatchCommands(stream tikvpb.Tikv_BatchCommandsServer) error {
	ctx := stream.Context()
	var (
		sendMu  sync.Mutex
		sendErr error
		wg      sync.WaitGroup
	)
	defer wg.Wait()
	send := func(id uint64, resp *tikvpb.BatchCommandsResponse_Response) {
		sendMu.Lock()
		defer sendMu.Unlock()
		if sendErr != nil {
			return
		}
		sendErr = stream.Send(&tikvpb.BatchCommandsResponse{Responses: []*tikvpb.BatchCommandsResponse_Response{resp}, RequestIds: []uint64{id}})
	}
	for {
		batch, err := stream.Recv()
		if err != nil {
			// The client closing its side (or going away) ends the stream;
			// what is in flight still answers into the dead stream and is
			// dropped by gRPC.
			return nil
		}
		if len(batch.Requests) != len(batch.RequestIds) {
			return status.Errorf(codes.InvalidArgument, "batch of %d requests with %d ids", len(batch.Requests), len(batch.RequestIds))
		}
		for i, r := range batch.Requests {
			reqID := batch.RequestIds[i]
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := k.batchOne(ctx, r)
				if err != nil {
					// There is no error slot in a batch answer: a request
					// this store cannot serve fails the stream, and
					// client-go fails its requests and reconnects.
					sendMu.Lock()
					if sendErr == nil {
						sendErr = err
					}
					sendMu.Unlock()
					return
				}
				send(reqID, resp)
			}()
		}
		sendMu.Lock()
		err = sendErr
		sendMu.Unlock()
		if err != nil {
			return err
		}
	}
}

// batchOne serves one request of a BatchCommands stream.
func (k *kvService) batchOne(ctx context.Context, r *tikvpb.BatchCommandsRequest_Request) (*tikvpb.BatchCommandsResponse_Response, error) {
	type resp = tikvpb.BatchCommandsResponse_Response
	switch c := r.GetCmd().(type) {
	case *tikvpb.BatchCommandsRequest_Request_Get:
		out, err := k.KvGet(ctx, c.Get)
		return &resp{Cmd: &tikvpb.BatchCommandsResponse_Response_Get{Get: out}}, err
	case *tikvpb.BatchCommandsRequest_Request_Scan:
		out, err := k.KvScan(ctx, c.Scan)
		return &resp{Cmd: &tikvpb.BatchCommandsResponse_Response_Scan{Scan: out}}, err
	case *tikvpb.BatchCommandsRequest_Request_BatchGet:
		out, err := k.KvBatchGet(ctx, c.BatchGet)
		return &resp{Cmd: &tikvpb.BatchCommandsResponse_Response_BatchGet{BatchGet: out}}, err
	case *tikvpb.BatchCommandsRequest_Request_ScanLock:
		out, err := k.KvScanLock(ctx, c.ScanLock)
		return &resp{Cmd: &tikvpb.BatchCommandsResponse_Response_ScanLock{ScanLock: out}}, err
	case *tikvpb.BatchCommandsRequest_Request_CheckTxnStatus:
		out, err := k.KvCheckTxnStatus(ctx, c.CheckTxnStatus)
		return &resp{Cmd: &tikvpb.BatchCommandsResponse_Response_CheckTxnStatus{CheckTxnStatus: out}}, err
	case *tikvpb.BatchCommandsRequest_Request_Cleanup:
		out, err := k.KvCleanup(ctx, c.Cleanup)
		return &resp{Cmd: &tikvpb.BatchCommandsResponse_Response_Cleanup{Cleanup: out}}, err
	case *tikvpb.BatchCommandsRequest_Request_ResolveLock:
		out, err := k.KvResolveLock(ctx, c.ResolveLock)
		return &resp{Cmd: &tikvpb.BatchCommandsResponse_Response_ResolveLock{ResolveLock: out}}, err
	case *tikvpb.BatchCommandsRequest_Request_TxnHeartBeat:
		out, err := k.KvTxnHeartBeat(ctx, c.TxnHeartBeat)
		return &resp{Cmd: &tikvpb.BatchCommandsResponse_Response_TxnHeartBeat{TxnHeartBeat: out}}, err
	case *tikvpb.BatchCommandsRequest_Request_BatchRollback:
		out, err := k.KvBatchRollback(ctx, c.BatchRollback)
		return &resp{Cmd: &tikvpb.BatchCommandsResponse_Response_BatchRollback{BatchRollback: out}}, err
	case *tikvpb.BatchCommandsRequest_Request_PessimisticRollback:
		out, err := k.KVPessimisticRollback(ctx, c.PessimisticRollback)
		return &resp{Cmd: &tikvpb.BatchCommandsResponse_Response_PessimisticRollback{PessimisticRollback: out}}, err
	case *tikvpb.BatchCommandsRequest_Request_Empty:
		return &resp{Cmd: &tikvpb.BatchCommandsResponse_Response_Empty{Empty: &tikvpb.BatchCommandsEmptyResponse{TestId: c.Empty.GetTestId()}}}, nil
	case *tikvpb.BatchCommandsRequest_Request_GetHealthFeedback:
		return &resp{Cmd: &tikvpb.BatchCommandsResponse_Response_GetHealthFeedback{
			GetHealthFeedback: &kvrpcpb.GetHealthFeedbackResponse{HealthFeedback: k.healthFeedback()}}}, nil
	case nil:
		return nil, status.Error(codes.InvalidArgument, "batch request without a command")
	default:
		return nil, status.Errorf(codes.Unimplemented, "simcluster store %d does not serve %T over its KV API (reads and lock resolution only)", k.s.id, c)
	}
}
