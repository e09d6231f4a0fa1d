package e2e

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"logbackup/storage"
	"logbackup/streamagent/logfile"
	"logbackup/tests/simcluster"
)

// assertBackedUp decodes the storage and requires every version the
// cluster committed in (from, to] to be there with its value.
func assertBackedUp(t *testing.T, ctx context.Context, url string, c *simcluster.Cluster, from, to uint64) int {
	t.Helper()
	st, err := storage.OpenURL(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	have := map[string][]byte{}
	if _, err := logfile.Walk(ctx, st, func(d logfile.Decoded) error {
		have[fmt.Sprintf("%s@%d", d.Key, d.CommitTS)] = d.Value
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := c.Committed(from, to)
	for _, v := range want {
		if got, ok := have[fmt.Sprintf("%s@%d", v.Key, v.CommitTS)]; !ok || !bytes.Equal(got, v.Value) {
			t.Fatalf("%s@%d (%s) is not in storage", v.Key, v.CommitTS, v.Value)
		}
	}
	return len(want)
}
