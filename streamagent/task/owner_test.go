package task

import (
	"context"
	"strings"
	"testing"

	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/storage"
	"logbackup/streamagent/errs"
	"logbackup/streamagent/logfile"
)

// TestCheckOwner: what the agents accept of a storage's owner record
// before a flush: none (legacy), their own cluster and task, an earlier
// task of their cluster; and what they refuse, with the fatal
// StorageOwnedElsewhere naming the owner: another cluster, a later task of
// their cluster, a record that cannot be decoded.
func TestCheckOwner(t *testing.T) {
	ctx := context.Background()
	info := &brpb.StreamBackupTaskInfo{Name: "pitr", StartTs: 1000}
	rec := func(cluster uint64, task string, start uint64) string {
		raw, err := logfile.EncodeOwner(&logfile.Owner{Version: logfile.OwnerVersion, ClusterID: cluster, Task: task, TaskStartTS: start, Since: "2026-01-01T00:00:00.000Z"})
		if err != nil {
			t.Fatal(err)
		}
		return string(raw)
	}
	cases := []struct {
		name    string
		record  string // "" = none
		cluster uint64 // the agent's
		refused []string
	}{
		{"no record", "", 7, nil},
		{"own", rec(7, "pitr", 1000), 7, nil},
		{"earlier task of this cluster (restarted by another tool)", rec(7, "old", 900), 7, nil},
		{"another cluster", rec(8, "pitr", 1000), 7, []string{"cluster 8", "taken over", `"pitr"`}},
		{"another cluster, earlier", rec(8, "x", 1), 7, []string{"cluster 8"}},
		{"later task of this cluster", rec(7, "next", 1001), 7, []string{"later task", `"next"`}},
		{"cluster unknown to the agent", rec(8, "pitr", 1000), 0, nil},
		{"corrupt", "{", 7, []string{logfile.OwnerFile, "cannot be told"}},
		{"other version", `{"version":2,"cluster_id":7,"task":"pitr"}`, 7, []string{"version 2"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, err := storage.OpenURL(ctx, "mem://")
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if c.record != "" {
				if err := st.WriteFile(ctx, logfile.OwnerFile, []byte(c.record)); err != nil {
					t.Fatal(err)
				}
			}
			err = checkOwner(ctx, st, c.cluster, info)
			if c.refused == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if info := errs.Classify(err); info.Code != errs.CodeStorageOwned || info.Class != errs.Fatal {
				t.Fatalf("%v classified %s (%s), want fatal %s", err, info.Code, info.Class, errs.CodeStorageOwned)
			}
			for _, w := range c.refused {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("%q does not say %q", err, w)
				}
			}
		})
	}
}
