package meta

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
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
	EventAdd    EventType = iota + 1 // info/<task> put (new or changed)
	EventDelete                      // info/<task> deleted
	EventPause                       // pause/<task> put (any value)
	EventResume                      // pause/<task> deleted
	EventError                       // an undecodable value; the watch goes on
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
	// Info is set on EventAdd.
	Info *brpb.StreamBackupTaskInfo
	// Pause is set on EventPause (nil for a legacy empty value).
	Pause *PauseV2
	// Err is set on EventError, and on EventPause when the pause value is
	// corrupt: the task is paused all the same, as TiKV treats any put.
	Err      error
	Revision int64
}

// watchEnd is the end of the key range the watch covers: [info/, pause0)
// holds info/, last-error/, pause/ (and nothing busy such as checkpoints), so
// one watch delivers task and pause events in revision order.
var watchStart, watchEnd = infoDir, pauseDir[:len(pauseDir)-1] + "0"

type trackedTask struct {
	infoRev  int64
	paused   bool
	pauseRev int64
}

// WatchTasks reports task and pause changes from fromRev on. known is the
// state at fromRev-1 (what ListTasks returned); the watcher tracks it so that
// after a compaction it can re-list and emit exactly the difference. The
// watch survives stream errors and etcd restarts; the channel is closed only
// when ctx is done.
func (c *Client) WatchTasks(ctx context.Context, known []*TaskStatus, fromRev int64) <-chan TaskEvent {
	out := make(chan TaskEvent, 64)
	w := &taskWatcher{c: c, out: out, state: map[string]trackedTask{}}
	for _, t := range known {
		w.state[t.Info.Name] = trackedTask{infoRev: t.infoRev, paused: t.Pause.Paused, pauseRev: t.pauseRev}
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

func (w *taskWatcher) emit(ctx context.Context, ev TaskEvent) bool {
	select {
	case w.out <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

func (w *taskWatcher) run(ctx context.Context, rev int64) {
	backoff := newBackoff()
	for ctx.Err() == nil {
		next, err := w.watchOnce(ctx, rev)
		if next > rev {
			rev = next
			backoff.reset()
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, rpctypes.ErrCompacted) {
			if newRev, ok := w.resync(ctx); ok {
				rev = newRev
				continue
			}
		}
		select {
		case <-time.After(backoff.next()):
		case <-ctx.Done():
			return
		}
	}
}

// watchOnce watches from rev until the stream ends; it returns the revision
// to continue from.
func (w *taskWatcher) watchOnce(ctx context.Context, rev int64) (int64, error) {
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
		if resp.Header.Revision >= rev && len(resp.Events) == 0 && resp.IsProgressNotify() {
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
		name := taskFromKey(infoDir, key)
		if ev.Type == mvccpb.DELETE {
			delete(w.state, name)
			return w.emit(ctx, TaskEvent{Type: EventDelete, Name: name, Revision: rev})
		}
		info, err := DecodeTaskInfo(key, ev.Kv.Value)
		if err != nil {
			return w.emit(ctx, TaskEvent{Type: EventError, Name: name, Err: err, Revision: rev})
		}
		st := w.state[name]
		st.infoRev = rev
		w.state[name] = st
		return w.emit(ctx, TaskEvent{Type: EventAdd, Name: name, Info: info, Revision: rev})
	case strings.HasPrefix(key, pauseDir):
		name := taskFromKey(pauseDir, key)
		st, tracked := w.state[name]
		if ev.Type == mvccpb.DELETE {
			if tracked {
				st.paused, st.pauseRev = false, 0
				w.state[name] = st
			}
			return w.emit(ctx, TaskEvent{Type: EventResume, Name: name, Revision: rev})
		}
		if tracked {
			st.paused, st.pauseRev = true, rev
			w.state[name] = st
		}
		p, err := DecodePause(key, ev.Kv.Value)
		return w.emit(ctx, TaskEvent{Type: EventPause, Name: name, Pause: p, Err: err, Revision: rev})
	default:
		return true // last-error/ and others inside the range
	}
}

// resync re-lists after a compaction and emits the difference between the
// tracked state and etcd's, then continues from the list's revision.
func (w *taskWatcher) resync(ctx context.Context) (int64, bool) {
	tasks, rev, errs, err := w.c.listTasks(ctx)
	if err != nil {
		return 0, false
	}
	for _, e := range errs {
		var me *MalformedError
		name := ""
		if errors.As(e, &me) {
			name = taskFromKey(infoDir, me.Key)
		}
		if !w.emit(ctx, TaskEvent{Type: EventError, Name: name, Err: e, Revision: rev}) {
			return 0, false
		}
	}
	seen := map[string]bool{}
	for _, t := range tasks {
		name := t.Info.Name
		seen[name] = true
		old, had := w.state[name]
		w.state[name] = trackedTask{infoRev: t.infoRev, paused: t.Pause.Paused, pauseRev: t.pauseRev}
		var evs []TaskEvent
		if !had || old.infoRev != t.infoRev {
			evs = append(evs, TaskEvent{Type: EventAdd, Name: name, Info: t.Info, Revision: rev})
		}
		switch {
		case t.Pause.Paused && (!old.paused || old.pauseRev != t.pauseRev || !had):
			evs = append(evs, TaskEvent{Type: EventPause, Name: name, Pause: t.Pause.V2, Revision: rev})
		case !t.Pause.Paused && had && old.paused:
			evs = append(evs, TaskEvent{Type: EventResume, Name: name, Revision: rev})
		}
		for _, ev := range evs {
			if !w.emit(ctx, ev) {
				return 0, false
			}
		}
	}
	for name := range w.state {
		if !seen[name] {
			delete(w.state, name)
			if !w.emit(ctx, TaskEvent{Type: EventDelete, Name: name, Revision: rev}) {
				return 0, false
			}
		}
	}
	return rev + 1, true
}

// backoff is exponential with full jitter, 100 ms to 5 s.
type backoff struct{ cur time.Duration }

func newBackoff() *backoff { return &backoff{cur: 100 * time.Millisecond} }

func (b *backoff) reset() { b.cur = 100 * time.Millisecond }

func (b *backoff) next() time.Duration {
	d := b.cur/2 + rand.N(b.cur/2+1)
	b.cur = min(b.cur*2, 5*time.Second)
	return d
}
