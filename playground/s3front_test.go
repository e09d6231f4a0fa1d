package playground

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"logbackup/storage"
	"logbackup/streamagent/logfile"
	"logbackup/tests/s3test"
)

func TestClassify(t *testing.T) {
	f := &s3Front{prefix: "/bk/log/"}
	meta := logfile.FormatMetaName(logfile.MetaName{FlushTS: 9, StoreID: 7, MinBeginTS: 1, MinTS: 1, MaxTS: 2})
	data := logfile.FormatDataName(logfile.DataName{StoreID: 3, MinTS: 1, MaxTS: 470850274661498881, ID: "x"})
	schema := logfile.FormatDataName(logfile.DataName{StoreID: 4, MinTS: 1, MaxTS: 470850274661498881, ID: "y", Schema: true})
	cases := []struct {
		path  string
		kind  objectKind
		store uint64
	}{
		{"/bk/log/" + meta, objMeta, 7},
		{"/bk/log/" + data, objData, 3},
		{"/bk/log/" + schema, objData, 4},
		{"/bk/log/" + logfile.GlobalCheckpointName(5), objGlobalCheckpoint, 5},
		{"/bk/log/backup.lock", objOther, 0},
		{"/bk/other/" + meta, objOther, 0},
		{"/bk/log/v1/backupmeta/garbage.meta", objOther, 0},
	}
	for _, c := range cases {
		if kind, store, _ := f.classify(c.path); kind != c.kind || store != c.store {
			t.Errorf("%s: kind %d store %d, want %d %d", c.path, kind, store, c.kind, c.store)
		}
	}
}

// TestFrontKillsBetweenStoredAndAnswered: an armed kill fires once the
// object is stored in S3 and before the writer gets its answer; a write of
// another store or kind does not fire it.
func TestFrontKillsBetweenStoredAndAnswered(t *testing.T) {
	s3 := s3test.Start(t, "bk")
	f, err := newS3Front(s3.Endpoint(), "bk", "log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	url, err := f.URL(s3.URL("bk", "log"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := storage.OpenURL(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	direct, err := storage.OpenURL(ctx, s3.URL("bk", "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()

	meta2 := logfile.FormatMetaName(logfile.MetaName{FlushTS: 9, StoreID: 2, MinBeginTS: 1, MinTS: 1, MaxTS: 2})
	meta3 := logfile.FormatMetaName(logfile.MetaName{FlushTS: 9, StoreID: 3, MinBeginTS: 1, MinTS: 1, MaxTS: 2})
	var answered atomic.Bool
	var storedWhenFired, answeredWhenFired bool
	release := make(chan struct{})
	wait := f.armKill(3, killAfterMeta, func() {
		_, err := direct.ReadFile(ctx, meta3)
		storedWhenFired, answeredWhenFired = err == nil, answered.Load()
		<-release // the writer waits for us, as a killed agent would forever
	})
	// Another store's meta file, and this store's data, do not fire it.
	if err := st.WriteFile(ctx, meta2, []byte("m")); err != nil {
		t.Fatal(err)
	}
	data3 := logfile.FormatDataName(logfile.DataName{StoreID: 3, MinTS: 1, MaxTS: 470850274661498881, ID: "x"})
	if err := st.WriteFile(ctx, data3, []byte("d")); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	if wait(short) {
		t.Fatal("fired by another store's or another kind's write")
	}
	cancelShort()
	fired := make(chan struct{})
	wait = f.armKill(3, killAfterMeta, func() {
		_, err := direct.ReadFile(ctx, meta3)
		storedWhenFired, answeredWhenFired = err == nil, answered.Load()
		close(fired)
		<-release
	})
	done := make(chan error, 1)
	go func() { err := st.WriteFile(ctx, meta3, []byte("m")); answered.Store(true); done <- err }()
	select {
	case <-fired:
	case <-ctx.Done():
		t.Fatal("the kill did not fire")
	}
	// While the kill runs, the writer stays unanswered.
	if answered.Load() {
		t.Fatal("the writer was answered while the kill held its write")
	}
	close(release)
	if !wait(ctx) {
		t.Fatal("the kill did not fire")
	}
	if !storedWhenFired || answeredWhenFired {
		t.Fatalf("fired with the object stored=%v and the writer answered=%v; want stored, not answered", storedWhenFired, answeredWhenFired)
	}
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

func TestPercentile(t *testing.T) {
	ds := []time.Duration{5, 1, 4, 2, 3}
	for p, want := range map[float64]time.Duration{50: 3, 99: 5, 100: 5, 1: 1} {
		if got := percentile(ds, p); got != want {
			t.Errorf("p%v = %d, want %d", p, got, want)
		}
	}
	if percentile(nil, 50) != 0 {
		t.Error("empty")
	}
}
