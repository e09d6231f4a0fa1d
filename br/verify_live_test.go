package br

import (
	"context"
	"testing"
	"time"

	"logbackup/storage"
	"logbackup/streamagent/logfile"
)

// flushDuringListing is a storage on which an agent finishes a flush and
// publishes the global checkpoint it covers right after the meta files
// have been listed, as happens when verify runs beside live agents.
type flushDuringListing struct {
	storage.Storage
	fired bool
	flush func(ctx context.Context)
}

func (s *flushDuringListing) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if err := s.Storage.List(ctx, prefix, fn); err != nil {
		return err
	}
	if prefix == logfile.MetaDir && !s.fired {
		s.fired = true
		s.flush(ctx)
	}
	return nil
}

// TestVerifyBesideLiveAgents: a flush and its global checkpoint landing
// while verify lists the meta files is no problem: the checkpoint verify
// judges is the one it read before listing, which the listed meta files
// cover. (Failed before: the global checkpoints were read after the
// listing, and the new one looked "beyond every flush in storage" — seen
// in the e2e recovery tests under load.)
func TestVerifyBesideLiveAgents(t *testing.T) {
	f := newFixture(t, fixtureOpts{stores: 1, flushes: 3, linked: true})
	ctx := context.Background()
	// Hold the store's last flush back: storage as it was just before it.
	last := f.metas[1][2]
	lastBody := f.get(t, last)
	f.del(t, last)
	covered := f.flushes[1][1].Metadata.ResolvedTs
	obj := logfile.GlobalCheckpointObject(1, covered)
	f.put(t, obj.Name, obj.Data)
	newer := f.flushes[1][2].Metadata.ResolvedTs
	live := &flushDuringListing{Storage: f.st, flush: func(ctx context.Context) {
		if err := f.st.WriteFile(ctx, last, lastBody); err != nil {
			t.Error(err)
		}
		obj := logfile.GlobalCheckpointObject(1, newer)
		if err := f.st.WriteFile(ctx, obj.Name, obj.Data); err != nil {
			t.Error(err)
		}
	}}
	rep, err := VerifyWith(ctx, live, VerifyConfig{Now: func() time.Time { return fixtureNow }})
	if err != nil {
		t.Fatal(err)
	}
	if !live.fired {
		t.Fatal("verify never listed the meta files")
	}
	if len(rep.Problems) > 0 {
		t.Fatalf("a flush landing during verify was reported: %v", rep.Problems)
	}
	if rep.GlobalCheckpoint != covered {
		t.Fatalf("global checkpoint %d, want the one read before the listing, %d", rep.GlobalCheckpoint, covered)
	}
}
