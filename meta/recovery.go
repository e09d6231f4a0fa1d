package meta

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The coordinator's automatic recovery publishes what it is doing for a
// task paused by a recoverable error, so `br stream status` can say it
// (the coordinator is one agent among many; the CLI reads etcd only). One
// key per task incarnation, written through the incarnation's fence and
// removed with the rest of the agents' state.

// Recovery phases.
const (
	// RecoveryProbing: the task is paused by a recoverable error and the
	// failing dependency is probed until it answers.
	RecoveryProbing = "probing"
	// RecoveryResumed: a healthy probe resumed the task; the resume holds
	// once the global checkpoint passes the time of the resume.
	RecoveryResumed = "resumed"
	// RecoveryGaveUp: resumes kept failing again after healthy probes; the
	// task stays paused until a person resumes it.
	RecoveryGaveUp = "gave-up"
)

// RecoveryGaveUpMarker is in the pause payload, the LastError and the
// history event the coordinator writes when it gives up on an incident,
// for people to read; the pause itself says so by PauseV2.RecoveryGaveUp.
const RecoveryGaveUpMarker = "automatic recovery gave up"

// RecoveryState is the published state of one task incarnation's
// automatic recovery. Times are wall-clock times of the coordinator.
type RecoveryState struct {
	Phase     string `json:"phase"`
	ErrorCode string `json:"error_code"`
	// Dependencies are what is probed: "storage", "pd", "etcd".
	Dependencies    []string  `json:"dependencies"`
	ProbeIntervalMs int64     `json:"probe_interval_ms"`
	PausedAt        time.Time `json:"paused_at"`
	// Probes counts the probes since the current pause began.
	Probes         int64     `json:"probes"`
	LastProbeAt    time.Time `json:"last_probe_at,omitzero"`
	LastProbeOK    bool      `json:"last_probe_ok"`
	LastProbeError string    `json:"last_probe_error,omitempty"`
	// ResumesAttempted counts every automatic resume of this incident;
	// FailedResumes those the task did not hold (it paused again before its
	// checkpoint passed the resume). Reaching MaxFailedResumes gives up.
	ResumesAttempted int       `json:"resumes_attempted"`
	FailedResumes    int       `json:"failed_resumes"`
	MaxFailedResumes int       `json:"max_failed_resumes"`
	LastResumeAt     time.Time `json:"last_resume_at,omitzero"`
	// ResumeRevision is the etcd revision of the last resume: a pause
	// written after it is the resumed task failing again.
	ResumeRevision int64 `json:"resume_revision,omitempty"`
	// NextResumeAt: after a failed resume, no resume before this time, even
	// after a healthy probe.
	NextResumeAt     time.Time `json:"next_resume_at,omitzero"`
	CoordinatorStore uint64    `json:"coordinator_store"`
	UpdatedAt        time.Time `json:"updated_at"`
}

// ProbeInterval is the published base interval between probes.
func (s *RecoveryState) ProbeInterval() time.Duration {
	return time.Duration(s.ProbeIntervalMs) * time.Millisecond
}

// RecoveryKey holds one incarnation's published recovery state.
func RecoveryKey(task string, inc int64) string {
	return incarnationPrefix("recovery/", task, inc) + "state"
}

// PutRecoveryState publishes the recovery state of one incarnation.
func (c *Client) PutRecoveryState(ctx context.Context, task string, inc int64, s *RecoveryState) error {
	raw, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode recovery state: %w", err)
	}
	if err := c.put(ctx, task, RecoveryKey(task, inc), string(raw)); err != nil {
		return fmt.Errorf("publish recovery state of %q: %w", task, err)
	}
	return nil
}

// GetRecoveryState reads the published recovery state; nil when there is
// none.
func (c *Client) GetRecoveryState(ctx context.Context, task string, inc int64) (*RecoveryState, error) {
	rctx, cancel := c.ctx(ctx)
	defer cancel()
	key := RecoveryKey(task, inc)
	resp, err := c.cli.Get(rctx, key)
	if err != nil {
		return nil, fmt.Errorf("read recovery state of %q: %w", task, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	s := &RecoveryState{}
	if err := json.Unmarshal(resp.Kvs[0].Value, s); err != nil {
		return nil, malformed(key, fmt.Errorf("recovery state: %w", err))
	}
	return s, nil
}

// DeleteRecoveryState removes the published state: the incident is over.
func (c *Client) DeleteRecoveryState(ctx context.Context, task string, inc int64) error {
	if _, err := c.commit(ctx, task, nil, clientv3.OpDelete(RecoveryKey(task, inc))); err != nil {
		return fmt.Errorf("delete recovery state of %q: %w", task, err)
	}
	return nil
}

// PauseRevision is the etcd revision at which the pause key was last
// written (0 when the task is not paused): a write conditional on it fails
// if anyone paused the task again since it was read.
func (s *TaskStatus) PauseRevision() int64 { return s.pauseRev }

// ErrPauseChanged: the pause key was rewritten or removed since it was
// read; the caller reads the task again and decides anew.
var ErrPauseChanged = errors.New("the task's pause changed since it was read")

// ResumeFromErrorPause clears every store's last error and removes the pause
// key in one transaction, only if the pause key is still the one written
// at pauseRev (so a person's pause, or a new error, written meanwhile is
// never resumed by mistake). It returns the revision of the resume. Through
// a fenced client, a stopped or restarted task gives ErrStaleIncarnation.
func (c *Client) ResumeFromErrorPause(ctx context.Context, task string, pauseRev int64) (int64, error) {
	fc, err := c.fenceCmps(task)
	if err != nil {
		return 0, err
	}
	rctx, cancel := c.ctx(ctx)
	defer cancel()
	resp, err := c.cli.Txn(rctx).
		If(append(fc, clientv3.Compare(clientv3.ModRevision(PauseKey(task)), "=", pauseRev))...).
		Then(clientv3.OpDelete(LastErrorPrefix(task), clientv3.WithPrefix()), clientv3.OpDelete(PauseKey(task))).
		Commit()
	if err != nil {
		return 0, fmt.Errorf("resume task %q: %w", task, err)
	}
	if !resp.Succeeded {
		if err := c.checkFence(ctx, task); err != nil {
			return 0, err
		}
		return 0, fmt.Errorf("resume task %q: %w", task, ErrPauseChanged)
	}
	return resp.Header.Revision, nil
}

// ReplaceErrorPause writes a store's last error and a new pause record in
// one transaction, only if the pause key is still the one written at
// pauseRev.
func (c *Client) ReplaceErrorPause(ctx context.Context, task string, pauseRev int64, p *PauseV2, e *brpb.StreamBackupError) error {
	rawPause, err := EncodePause(p)
	if err != nil {
		return err
	}
	rawErr, err := EncodeLastError(e)
	if err != nil {
		return err
	}
	fc, err := c.fenceCmps(task)
	if err != nil {
		return err
	}
	rctx, cancel := c.ctx(ctx)
	defer cancel()
	resp, err := c.cli.Txn(rctx).
		If(append(fc, clientv3.Compare(clientv3.ModRevision(PauseKey(task)), "=", pauseRev))...).
		Then(clientv3.OpPut(LastErrorKey(task, e.StoreId), string(rawErr)), clientv3.OpPut(PauseKey(task), string(rawPause))).
		Commit()
	if err != nil {
		return fmt.Errorf("replace the pause of %q: %w", task, err)
	}
	if !resp.Succeeded {
		if err := c.checkFence(ctx, task); err != nil {
			return err
		}
		return fmt.Errorf("replace the pause of %q: %w", task, ErrPauseChanged)
	}
	return nil
}

// checkFence tells a failed fence from a failed condition of the caller's.
func (c *Client) checkFence(ctx context.Context, task string) error {
	if c.fence == nil {
		return nil
	}
	rctx, cancel := c.ctx(ctx)
	defer cancel()
	resp, err := c.cli.Get(rctx, InfoKey(task), clientv3.WithKeysOnly())
	if err != nil {
		return fmt.Errorf("task %q: %w", task, err)
	}
	if len(resp.Kvs) == 0 || resp.Kvs[0].CreateRevision != c.fence.inc {
		return fmt.Errorf("task %q incarnation %d: %w", task, c.fence.inc, ErrStaleIncarnation)
	}
	return nil
}

// ProbeEtcd asks etcd one linearizable question about the task (does its
// info key exist), which needs a quorum: cheap, and only answered by a
// healthy cluster. ctx bounds it.
func (c *Client) ProbeEtcd(ctx context.Context, task string) error {
	rctx, cancel := c.ctx(ctx)
	defer cancel()
	if _, err := c.cli.Get(rctx, InfoKey(task), clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("etcd probe: %w", err)
	}
	return nil
}
