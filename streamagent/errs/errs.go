// Package errs gives every error the agent can meet a stable code, a class
// and an operator action. Classification is a pure function over typed
// errors (errors.Is/As, gRPC status codes, cdcpb error variants, gocloud
// error codes) — never over message text — so it can be table-tested and
// cannot drift when a library rewords a message.
package errs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"syscall"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"logbackup/meta"
	"logbackup/storage"
)

// Class says what the agent does about an error.
type Class int

const (
	// Retryable errors are retried with backoff and never need a person,
	// unless they persist past the retry budget.
	Retryable Class = iota
	// Fatal errors pause the task and report a LastError.
	Fatal
)

func (c Class) String() string {
	if c == Fatal {
		return "fatal"
	}
	return "retryable"
}

// Code is a stable error code in TiKV's `KV:LogBackup:` namespace, so
// dashboards and runbooks written for TiKV's log backup keep working.
type Code string

// Info is what the code table says about one code.
type Info struct {
	Code  Code
	Class Class
	// Cause and Action are shown in docs/ERRORS.md and appended to LastError
	// messages as the operator hint.
	Cause  string
	Action string
}

// The codes. TiKV's own spellings (Io, gRPC, Pd, RaftReq, Encryption,
// MalformedMetadata, Unknown) are kept where the meaning is the same;
// TiKVCode names the TiKV code each one corresponds to.
const (
	CodeNetwork             Code = "KV:LogBackup:Network"
	CodeDeadline            Code = "KV:LogBackup:Deadline"
	CodeGRPC                Code = "KV:LogBackup:gRPC"
	CodeEtcdUnavailable     Code = "KV:LogBackup:EtcdUnavailable"
	CodePD                  Code = "KV:LogBackup:Pd"
	CodeServerBusy          Code = "KV:LogBackup:ServerIsBusy"
	CodeCongested           Code = "KV:LogBackup:Congested"
	CodeNotLeader           Code = "KV:LogBackup:NotLeader"
	CodeEpochNotMatch       Code = "KV:LogBackup:EpochNotMatch"
	CodeRegionNotFound      Code = "KV:LogBackup:RegionNotFound"
	CodeRaftReq             Code = "KV:LogBackup:RaftReq"
	CodeStorageUnavailable  Code = "KV:LogBackup:StorageUnavailable"
	CodeStorageThrottled    Code = "KV:LogBackup:StorageThrottled"
	CodeStorageAccessDenied Code = "KV:LogBackup:StorageAccessDenied"
	CodeStorageNotFound     Code = "KV:LogBackup:StorageNotFound"
	CodeStorageQuota        Code = "KV:LogBackup:StorageQuotaExceeded"
	CodeMalformedMetadata   Code = "KV:LogBackup:MalformedMetadata"
	CodeChecksumMismatch    Code = "KV:LogBackup:ChecksumMismatch"
	CodeGCSafepointExceeded Code = "KV:LogBackup:GCSafepointExceeded"
	CodeClusterIDMismatch   Code = "KV:LogBackup:ClusterIDMismatch"
	CodeIncompatible        Code = "KV:LogBackup:Incompatible"
	CodeIo                  Code = "KV:LogBackup:Io"
	CodeEncryption          Code = "KV:LogBackup:Encryption"
	CodeCheckpointLag       Code = "KV:LogBackup:CheckpointLagTooLarge"
	CodeStorageOwned        Code = "KV:LogBackup:StorageOwnedElsewhere"
	CodeCheckpointStalled   Code = "KV:LogBackup:CheckpointStalled"
	CodeUnknown             Code = "KV:LogBackup:Unknown"
)

var table = map[Code]Info{
	CodeNetwork:             {CodeNetwork, Retryable, "a connection was reset, refused or had no route", "none: retried; check the network if it persists"},
	CodeDeadline:            {CodeDeadline, Retryable, "a request did not finish within its deadline", "none: retried; check the latency of PD, TiKV, etcd and storage if it persists"},
	CodeGRPC:                {CodeGRPC, Retryable, "a gRPC call to TiKV or PD failed transiently", "none: retried; check TiKV/PD health and TLS settings if it persists"},
	CodeEtcdUnavailable:     {CodeEtcdUnavailable, Retryable, "etcd (PD) could not be reached or has no leader", "none: retried, checkpoints wait; check PD health if it persists"},
	CodePD:                  {CodePD, Retryable, "PD refused or failed a request", "none: retried; check PD health if it persists"},
	CodeServerBusy:          {CodeServerBusy, Retryable, "TiKV answered server-is-busy", "none: retried with backoff"},
	CodeCongested:           {CodeCongested, Retryable, "TiKV's CDC memory quota is exceeded and it dropped the subscription", "none: resubscribed with backoff; raise TiKV's cdc.sink-memory-quota if it persists"},
	CodeNotLeader:           {CodeNotLeader, Retryable, "the region's leader moved", "none: the region is re-resolved and the new leader's agent takes it"},
	CodeEpochNotMatch:       {CodeEpochNotMatch, Retryable, "the region split or merged", "none: the range is re-resolved from PD"},
	CodeRegionNotFound:      {CodeRegionNotFound, Retryable, "the region no longer exists on this store", "none: the range is re-resolved from PD"},
	CodeRaftReq:             {CodeRaftReq, Retryable, "TiKV returned a region error", "none: retried"},
	CodeStorageUnavailable:  {CodeStorageUnavailable, Retryable, "external storage failed with a server error or timed out", "none: retried; check the storage service if it persists"},
	CodeStorageThrottled:    {CodeStorageThrottled, Retryable, "external storage throttled requests", "none: retried with backoff"},
	CodeStorageAccessDenied: {CodeStorageAccessDenied, Fatal, "external storage denied access", "fix the credentials or bucket policy, then `br stream resume --clear-error`"},
	CodeStorageNotFound:     {CodeStorageNotFound, Fatal, "the bucket or container does not exist", "create it or fix the task's storage URL, then `br stream resume --clear-error`"},
	CodeStorageQuota:        {CodeStorageQuota, Fatal, "external storage is out of space or quota", "free space or raise the quota, then `br stream resume --clear-error`"},
	CodeMalformedMetadata:   {CodeMalformedMetadata, Fatal, "a value under /tidb/br-stream/ could not be decoded", "check which tool wrote the key named in the message; fix or stop and restart the task"},
	CodeChecksumMismatch:    {CodeChecksumMismatch, Fatal, "data read back did not match its checksum", "check the storage and the agent's disk; resume with --clear-error to rescan"},
	CodeGCSafepointExceeded: {CodeGCSafepointExceeded, Fatal, "the checkpoint fell below the GC safepoint: the changes since it are gone", "stop the task and start a new one (with a new full backup) in another storage path"},
	CodeClusterIDMismatch:   {CodeClusterIDMismatch, Fatal, "TiKV belongs to another cluster than PD says", "check the --pd endpoints and the store the agent runs beside"},
	CodeIncompatible:        {CodeIncompatible, Fatal, "TiKV's CDC service is incompatible with this agent", "upgrade TiKV or use a matching agent version"},
	CodeIo:                  {CodeIo, Fatal, "a local file operation failed (temp files)", "check the agent's temp directory: space and permissions; then resume with --clear-error"},
	CodeEncryption: {CodeEncryption, Fatal, "the task asks for log encryption, which this agent does not write",
		"stop the task and start it without encryption, or back it up with TiKV's built-in log backup; never written in plaintext"},
	CodeCheckpointLag: {CodeCheckpointLag, Fatal, "the checkpoint lag passed the limit, so the task was paused to stop holding back GC",
		"find why the checkpoint stopped (status, agent logs), fix it, then resume with --clear-error"},
	CodeStorageOwned: {CodeStorageOwned, Fatal, "the storage's owner record (logbackup.owner) names another cluster or a later task: the storage was taken over (br stream start --take-over), or the record cannot be read",
		"this task must not write there any more: stop it (br stream stop) and start it on another storage path; if the takeover was a mistake, stop the other cluster's task, then stop this one and start it again with --take-over"},
	CodeCheckpointStalled: {CodeCheckpointStalled, Fatal, "the global checkpoint stood longer than the retry budget although every flush and advance succeeded, held back by stores that had no live agent as long: part of the key space has no agent flushing it",
		"the message names the store that holds it back: start (or restart) that store's agent, then resume with --clear-error"},
	CodeUnknown: {CodeUnknown, Fatal, "an error the agent does not recognise", "read the message and the agent log; report it if the cause is unclear"},
}

// tikvCodes maps each code to the TiKV code (components/error_code
// backup_stream.rs) a runbook written for TiKV's log backup knows it by.
// Storage faults are Io in TiKV, region errors RaftReq, PD and its etcd Pd;
// codes of TiDB's side have no TiKV counterpart.
var tikvCodes = map[Code]string{
	CodeNetwork:             "KV:LogBackup:Io (storage) or KV:LogBackup:gRPC (TiKV, PD)",
	CodeDeadline:            "KV:LogBackup:Io (storage) or KV:LogBackup:gRPC (TiKV, PD)",
	CodeGRPC:                "KV:LogBackup:gRPC",
	CodeEtcdUnavailable:     "KV:LogBackup:Pd",
	CodePD:                  "KV:LogBackup:Pd",
	CodeServerBusy:          "KV:LogBackup:RaftReq",
	CodeCongested:           "KV:LogBackup:OutOfQuota",
	CodeNotLeader:           "KV:LogBackup:RaftReq",
	CodeEpochNotMatch:       "KV:LogBackup:RaftReq",
	CodeRegionNotFound:      "KV:LogBackup:RaftReq",
	CodeRaftReq:             "KV:LogBackup:RaftReq",
	CodeStorageUnavailable:  "KV:LogBackup:Io",
	CodeStorageThrottled:    "KV:LogBackup:Io",
	CodeStorageAccessDenied: "KV:LogBackup:Io",
	CodeStorageNotFound:     "KV:LogBackup:Io",
	CodeStorageQuota:        "KV:LogBackup:Io",
	CodeMalformedMetadata:   "KV:LogBackup:MalformedMetadata",
	CodeChecksumMismatch:    "KV:LogBackup:Io",
	CodeGCSafepointExceeded: "none (BR: ErrBackupGCSafepointExceeded)",
	CodeClusterIDMismatch:   "KV:LogBackup:gRPC",
	CodeIncompatible:        "KV:LogBackup:gRPC",
	CodeIo:                  "KV:LogBackup:Io",
	CodeEncryption:          "KV:LogBackup:Encryption",
	CodeCheckpointLag:       "none (TiDB's advancer pauses with this message)",
	CodeStorageOwned:        "none (TiKV does not check who owns a storage)",
	CodeCheckpointStalled:   "none (TiKV's log backup has no such check)",
	CodeUnknown:             "KV:LogBackup:Unknown",
}

// TiKVCode is the TiKV code a code corresponds to, for runbooks keyed on
// TiKV's codes.
func TiKVCode(c Code) string { return tikvCodes[c] }

// Lookup returns the table entry of a code (Unknown's for an unknown code).
func Lookup(c Code) Info {
	if info, ok := table[c]; ok {
		return info
	}
	return table[CodeUnknown]
}

// Codes returns every code in the table (for docs and tests).
func Codes() []Code {
	out := make([]Code, 0, len(table))
	for c := range table {
		out = append(out, c)
	}
	return out
}

// Error attaches a code to an error explicitly, for errors the agent raises
// itself (a checksum mismatch, a budget exhausted, a lagging checkpoint).
type Error struct {
	Code Code
	Err  error
}

func (e *Error) Error() string { return fmt.Sprintf("[%s] %v", e.Code, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// Wrap tags err with a code.
func Wrap(code Code, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Code: code, Err: err}
}

// RegionError carries a cdcpb region-level error so it can be classified by
// its variant.
type RegionError struct {
	RegionID uint64
	Err      *cdcpb.Error
}

func (e *RegionError) Error() string {
	return fmt.Sprintf("region %d: %s", e.RegionID, e.Err.String())
}

// Classify maps an error to its table entry. The first explicit code found
// in the chain wins; then typed causes are tried from the most specific.
// Context cancellation is not an error of the task and is not classified
// here: callers check ctx.Err() first.
func Classify(err error) Info {
	return Lookup(classify(err))
}

func classify(err error) Code {
	if err == nil {
		return CodeUnknown
	}
	var coded *Error
	if errors.As(err, &coded) {
		return coded.Code
	}
	var re *RegionError
	if errors.As(err, &re) && re.Err != nil {
		return regionCode(re.Err)
	}
	if errors.Is(err, meta.ErrMalformed) {
		return CodeMalformedMetadata
	}
	// Storage errors: the storage layer decides the kind alike for every
	// backend (a read-only disk and an S3 or Azure 403 are one kind).
	if errors.As(err, new(*storage.OpError)) {
		switch storage.KindOf(err) {
		case storage.KindAccessDenied:
			return CodeStorageAccessDenied
		case storage.KindQuota:
			return CodeStorageQuota
		case storage.KindNotFound:
			// A missing object is handled where it is read; one reaching
			// here means the bucket itself is missing.
			return CodeStorageNotFound
		case storage.KindThrottled:
			return CodeStorageThrottled
		case storage.KindTransient:
			return CodeStorageUnavailable
		}
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return CodeDeadline
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return CodeStorageQuota
	}
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, io.ErrUnexpectedEOF) {
		return CodeNetwork
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return CodeDeadline
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return CodeNetwork
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.OK && s.Code() != codes.Unknown {
		return grpcCode(s.Code())
	}
	var pathErr *fs.PathError
	if errors.As(err, &pathErr) {
		return CodeIo
	}
	return CodeUnknown
}

func grpcCode(c codes.Code) Code {
	switch c {
	case codes.Unavailable, codes.Aborted, codes.Canceled:
		return CodeGRPC
	case codes.DeadlineExceeded:
		return CodeDeadline
	case codes.ResourceExhausted:
		return CodeServerBusy
	case codes.Unimplemented, codes.FailedPrecondition:
		return CodeIncompatible
	case codes.PermissionDenied, codes.Unauthenticated:
		return CodeUnknown
	default:
		return CodeGRPC
	}
}

func regionCode(e *cdcpb.Error) Code {
	switch {
	case e.NotLeader != nil:
		return CodeNotLeader
	case e.EpochNotMatch != nil:
		return CodeEpochNotMatch
	case e.RegionNotFound != nil:
		return CodeRegionNotFound
	case e.ServerIsBusy != nil:
		return CodeServerBusy
	case e.Congested != nil:
		return CodeCongested
	case e.ClusterIdMismatch != nil:
		return CodeClusterIDMismatch
	case e.Compatibility != nil:
		return CodeIncompatible
	case e.DuplicateRequest != nil:
		// Our own bookkeeping sent a region twice; the subscription is
		// rebuilt, which is safe.
		return CodeRaftReq
	default:
		return CodeRaftReq
	}
}

// RegionErrorKind names a cdcpb region error for metrics and logs.
func RegionErrorKind(e *cdcpb.Error) string {
	switch {
	case e.NotLeader != nil:
		return "not-leader"
	case e.EpochNotMatch != nil:
		return "epoch-not-match"
	case e.RegionNotFound != nil:
		return "region-not-found"
	case e.ServerIsBusy != nil:
		return "server-is-busy"
	case e.Congested != nil:
		return "congested"
	}
	return "other"
}
