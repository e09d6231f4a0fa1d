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
	o := agentOptions(t, c.PDAddr())
	o.storeID, o.dialTimeout = store, time.Second
	_, r, stop := startAgent(t, o)
	defer stop()

	// The scenario needs the dial timeout to have passed (see keepsRunning).
	keepsRunning(t, r, 2*o.dialTimeout, "before its dial timeout had passed twice")
	var last uint64
	for i := 0; i < 10; i++ {
		if last, err = c.Put(ctx, []byte(fmt.Sprintf("t%03d", i)), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	waitRunning(t, fmt.Sprintf("the store checkpoint to reach %d after the dial timeout passed", last), 60*time.Second, r, func() bool {
		cps, err := m.Checkpoints(ctx, "pitr")
		if err != nil {
			t.Fatal(err)
		}
		for _, cp := range cps {
			if cp.Kind == meta.CheckpointStore && cp.StoreID == store && cp.TS >= last {
				return true
			}
		}
		return false
	})
}
