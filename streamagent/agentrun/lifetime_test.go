package agentrun

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"testing"
	"time"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/tests/simcluster"
)

// TestPDClientOutlivesDialTimeout: the agent keeps working after
// --dial-timeout has passed. (Failed before: the PD client was made with a
// context that ended after the dial timeout, and a PD client dies with its
// context, so every flush after that failed to get a timestamp.)
func TestPDClientOutlivesDialTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := simcluster.Start(ctx, simcluster.Config{Stores: 1, ServePD: true, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cli, err := meta.Dial(ctx, meta.DialConfig{Endpoints: []string{c.PDAddr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	m := meta.NewClient(cli)
	if err := br.Start(ctx, br.NewEnv(m).WithPD(c.PD()), br.StartOptions{TaskName: "pitr",
		Storage: "local://" + filepath.Join(t.TempDir(), "backup")}, io.Discard); err != nil {
		t.Fatal(err)
	}
	store := c.StoreIDs()[0]
	actx, stopAgent := context.WithCancel(ctx)
	done := make(chan error, 1)
	dial := time.Second
	began := time.Now()
	go func() {
		done <- run(actx, options{pd: c.PDAddr(), storeID: store, statusAddr: "127.0.0.1:0", flushInterval: time.Second,
			reconcileInterval: 200 * time.Millisecond, coordinatorInterval: 200 * time.Millisecond,
			fileSizeLimit: 1 << 20, memoryQuota: 64 << 20, tempDir: t.TempDir(), dialTimeout: dial}, io.Discard)
	}()
	ended := false
	defer func() {
		stopAgent()
		if !ended {
			<-done
		}
	}()

	// The scenario needs the dial timeout to have passed: wait it out.
	time.Sleep(time.Until(began.Add(2 * dial)))
	var last uint64
	for i := 0; i < 10; i++ {
		if last, err = c.Put(ctx, []byte(fmt.Sprintf("t%03d", i)), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		cps, err := m.Checkpoints(ctx, "pitr")
		if err != nil {
			t.Fatal(err)
		}
		for _, cp := range cps {
			if cp.Kind == meta.CheckpointStore && cp.StoreID == store && cp.TS >= last {
				return
			}
		}
		select {
		case err := <-done:
			ended = true
			t.Fatalf("the agent ended: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the store checkpoint never reached %d after the dial timeout passed", last)
		}
	}
}
