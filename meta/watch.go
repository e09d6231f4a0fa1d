package meta

import (
	"context"
	"errors"
	"fmt"
	"github.com/cenkalti/backoff/v5"
	"sort"
	"strings"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// EventType is what happened to a task.
type EventType int

const (
	EventAdd    EventType = iota + 1 // info/<task> put (new or changed); run unless an EventPause follows
	EventDelete                      // info/<task> deleted
	EventPause                       // pause/<task> put (any value) while the task exists
	EventResume                      // pause/<task> deleted while the task exists
	EventError                       // an undecodable info value; the watch goes on
)

func (t EventType) String() string {
	switch t {
	case EventAdd:
		return "add"
	case EventDelete:
		return "delete"
	case EventPause:
		return "pause"
	case EventResume:
		return "resume"
	case EventError:
		return "error"
	}
	return "unknown"
}

// TaskEvent is one change to a task's expected state.
type TaskEvent struct {
	Type EventType
	Name string
	// Info and Incarnation (the info key's create revision) are set on
	// EventAdd.
	Info        *brpb.StreamBackupTaskInfo
	Incarnation int64
	// Pause is set on EventPause (nil for a legacy empty value).
	Pause *PauseV2
	// Err is set on EventError, and on EventPause when the pause value is
	// corrupt: the task is paused all the same, as TiKV treats any put.
	Err error
	// Revision is the change's etcd revision; events made up by a re-list
	// after a compaction all carry the list's revision.
	Revision int64
}

// String names the event without the task info, whose storage backend can
// carry credentials.
func (e TaskEvent) String() string {
	s := fmt.Sprintf("%s %q @%d", e.Type, e.Name, e.Revision)
	if e.Type == EventPause && e.Pause != nil {
		s += " severity=" + e.Pause.Severity
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// watchEnd is the end of the key range the watch covers: [info/, pause0)
// holds info/, last-error/, owner/ and pause/ (nothing as busy as
// checkpoints), so one watch delivers task and pause events in revision
// order, which two watches could not.
var watchStart, watchEnd = infoDir, pauseDir[:len(pauseDir)-1] + "0"

// trackedTask is what the consumer has been told about a name (exists,
// paused), plus the ModRevisions a resync compares against. A name with a
// pause key but no info is tracked too, so that when its info appears the
// Add is followed by the Pause that already holds.
type trackedTask struct {
	exists   bool // info/<name> exists (even if undecodable)
	infoRev  int64
	paused   bool
	pauseRev int64
	pause    *PauseV2
	pauseErr error
}

// WatchTasks reports task and pause changes from fromRev on. known is the
// state at fromRev-1 (what ListTasks returned); the watcher tracks it so that
// after a compaction it can re-list and emit exactly the difference. With
// fromRev <= 0 it first re-lists and emits the difference against known.
// The watch survives stream errors and etcd restarts; the channel is closed
// only when ctx is done.
//
// Events follow TiKV's reading of the keys: an EventAdd means the task is
// to run unless an EventPause follows it; any put of pause/<task> is an
// EventPause (again, if it was already paused; with Err set and Pause nil if
// the value is corrupt, since the task is paused all the same); deleting it
// is an EventResume. Pause keys of names without a task give no events.
func (c *Client) WatchTasks(ctx context.Context, known []*TaskStatus, fromRev int64) <-chan TaskEvent {
	out := make(chan TaskEvent, 64)
	w := &taskWatcher{c: c, out: out, state: map[string]trackedTask{}}
	for _, t := range known {
		if t == nil || t.Info == nil {
			continue
		}
		w.state[t.Info.Name] = trackedTask{exists: true, infoRev: t.infoRev,
			paused: t.Pause.Paused, pauseRev: t.pauseRev, pause: t.Pause.V2}
	}
	go func() {
		defer close(out)
		w.run(ctx, fromRev)
	}()
	return out
}

type taskWatcher struct {
	c     *Client
	out   chan<- TaskEvent
	state map[string]trackedTask
}

func (w *taskWatcher) emit(ctx context.Context, evs ...TaskEvent) bool {
	for _, ev := range evs {
		select {
		case w.out <- ev:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

func (w *taskWatcher) run(ctx context.Context, rev int64) {
	bo := newBackoff()
	needResync := rev <= 0
	for ctx.Err() == nil {
		if needResync {
			if newRev, ok := w.resync(ctx); ok {
				rev, needResync = newRev, false
				bo.Reset()
				continue
			}
		} else {
			next, err := w.watchOnce(ctx, rev)
			if next > rev {
				rev = next
				bo.Reset()
			}
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, rpctypes.ErrCompacted) {
				// The events since rev are gone: re-list instead.
				needResync = true
				continue
			}
		}
		select {
		case <-time.After(bo.NextBackOff()):
		case <-ctx.Done():
			return
		}
	}
}

// watchOnce watches from rev until the stream ends; it returns the revision
// to continue from.
func (w *taskWatcher) watchOnce(ctx context.Context, rev int64) (int64, error) {
	// WithRequireLeader: a member cut off from its cluster ends the stream
	// instead of going silent, so we re-watch through another member.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	ch := w.c.cli.Watch(wctx, watchStart, clientv3.WithRange(watchEnd), clientv3.WithRev(rev), clientv3.WithProgressNotify())
	for resp := range ch {
		if err := resp.Err(); err != nil {
			return rev, err
		}
		for _, ev := range resp.Events {
			if !w.handle(ctx, ev) {
				return rev, ctx.Err()
			}
			rev = ev.Kv.ModRevision + 1
		}
		// A progress notification says nothing changed up to its revision;
		// moving on keeps a later re-watch clear of compactions.
		if len(resp.Events) == 0 && resp.IsProgressNotify() && resp.Header.Revision >= rev {
			rev = resp.Header.Revision + 1
		}
	}
	return rev, fmt.Errorf("watch stream closed")
}

func (w *taskWatcher) handle(ctx context.Context, ev *clientv3.Event) bool {
	key := string(ev.Kv.Key)
	rev := ev.Kv.ModRevision
	switch {
	case strings.HasPrefix(key, infoDir):
		return w.handleInfo(ctx, taskFromKey(infoDir, key), ev, rev)
	case strings.HasPrefix(key, pauseDir):
		return w.handlePause(ctx, taskFromKey(pauseDir, key), ev, rev)
	default:
		return true // last-error/ and owner/ lie inside the watched range
	}
}

func (w *taskWatcher) handleInfo(ctx context.Context, name string, ev *clientv3.Event, rev int64) bool {
	st := w.state[name]
	if ev.Type == mvccpb.DELETE {
		st.exists, st.infoRev = false, 0
		w.put(name, st)
		return w.emit(ctx, TaskEvent{Type: EventDelete, Name: name, Revision: rev})
	}
	st.exists, st.infoRev = true, rev
	w.put(name, st)
	info, err := decodeTaskInfoAt(string(ev.Kv.Key), ev.Kv.Value)
	if err != nil {
		return w.emit(ctx, TaskEvent{Type: EventError, Name: name, Err: err, Revision: rev})
	}
	evs := []TaskEvent{{Type: EventAdd, Name: name, Info: info, Incarnation: ev.Kv.CreateRevision, Revision: rev}}
	if st.paused {
		evs = append(evs, st.pauseEvent(name, rev))
	}
	return w.emit(ctx, evs...)
}

func (w *taskWatcher) handlePause(ctx context.Context, name string, ev *clientv3.Event, rev int64) bool {
	st := w.state[name]
	if ev.Type == mvccpb.DELETE {
		was := st.paused
		st.paused, st.pauseRev, st.pause, st.pauseErr = false, 0, nil, nil
		w.put(name, st)
		if !st.exists || !was {
			// E.g. DeleteTask removes info/ then pause/ in one txn: the
			// task is gone, a Resume would be invented.
			return true
		}
		return w.emit(ctx, TaskEvent{Type: EventResume, Name: name, Revision: rev})
	}
	st.paused, st.pauseRev = true, rev
	st.pause, st.pauseErr = DecodePause(string(ev.Kv.Key), ev.Kv.Value)
	w.put(name, st)
	if !st.exists {
		return true
	}
	return w.emit(ctx, st.pauseEvent(name, rev))
}

func (st trackedTask) pauseEvent(name string, rev int64) TaskEvent {
	return TaskEvent{Type: EventPause, Name: name, Pause: st.pause, Err: st.pauseErr, Revision: rev}
}

// put stores st, dropping names that have neither key.
func (w *taskWatcher) put(name string, st trackedTask) {
	if !st.exists && !st.paused {
		delete(w.state, name)
		return
	}
	w.state[name] = st
}

// resync re-lists after a compaction and emits the difference between the
// tracked state and etcd's, then continues from the list's revision + 1.
func (w *taskWatcher) resync(ctx context.Context) (int64, bool) {
	listed, rev, err := w.c.listTasks(ctx)
	if err != nil {
		return 0, false
	}
	seen := map[string]bool{}
	for _, t := range listed {
		seen[t.name] = true
		if !w.emit(ctx, w.diff(t.name, t, rev)...) {
			return 0, false
		}
	}
	var gone []string
	for name := range w.state {
		if !seen[name] {
			gone = append(gone, name)
		}
	}
	sort.Strings(gone)
	for _, name := range gone {
		if !w.emit(ctx, w.diff(name, &listedTask{name: name}, rev)...) {
			return 0, false
		}
	}
	return rev + 1, true
}

// diff updates the tracked state of name to t and returns the events that
// take a consumer from the old state to the new one.
func (w *taskWatcher) diff(name string, t *listedTask, rev int64) []TaskEvent {
	old := w.state[name]
	now := trackedTask{exists: t.hasInfo, infoRev: t.infoRev, paused: t.paused,
		pauseRev: t.pauseRev, pause: t.pause, pauseErr: t.pauseErr}
	w.put(name, now)
	var evs []TaskEvent
	added := false
	switch {
	case !now.exists && old.exists:
		return []TaskEvent{{Type: EventDelete, Name: name, Revision: rev}}
	case !now.exists:
		return nil
	case !old.exists || old.infoRev != now.infoRev:
		if t.infoErr != nil {
			evs = append(evs, TaskEvent{Type: EventError, Name: name, Err: t.infoErr, Revision: rev})
		} else {
			evs = append(evs, TaskEvent{Type: EventAdd, Name: name, Info: t.info, Incarnation: t.inc, Revision: rev})
			added = true
		}
	}
	switch {
	case now.paused && (added || !old.paused || old.pauseRev != now.pauseRev):
		evs = append(evs, now.pauseEvent(name, rev))
	case !now.paused && old.paused && !added:
		evs = append(evs, TaskEvent{Type: EventResume, Name: name, Revision: rev})
	}
	return evs
}

// newBackoff paces watch retries: 100 ms doubling to 5 s, with jitter.
func newBackoff() *backoff.ExponentialBackOff {
	b := &backoff.ExponentialBackOff{InitialInterval: 100 * time.Millisecond, RandomizationFactor: 0.5, Multiplier: 2, MaxInterval: 5 * time.Second}
	b.Reset()
	return b
}
