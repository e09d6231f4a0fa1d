package playground

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"logbackup/br"
	"logbackup/storage"
	"logbackup/tests/simcluster"
)

// finalCheck is the verdict of reading the whole storage back.
type finalCheck struct {
	rep     *br.VerifyReport
	checked int      // versions committed in (start, global]
	lost    int      // of those, missing from storage or with another value
	samples []string // the first few lost versions
}

// verifyStorage decodes the whole storage (meta files, data files,
// checksums) and checks it holds every version the cluster committed
// between the task start and the global checkpoint, with its value.
func verifyStorage(ctx context.Context, url string, c *simcluster.Cluster, startTS, global uint64) (*finalCheck, error) {
	st, err := storage.OpenURL(ctx, url)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	rep, err := br.Verify(ctx, st, true)
	if err != nil {
		return nil, err
	}
	have := map[string][]byte{}
	for _, d := range rep.Decoded() {
		have[versionKey(d.Key, d.CommitTS)] = d.Value
	}
	fc := &finalCheck{rep: rep}
	for _, v := range c.Committed(startTS, global) {
		fc.checked++
		got, ok := have[versionKey(v.Key, v.CommitTS)]
		if !ok || (!v.Delete && !bytes.Equal(got, v.Value)) {
			fc.lost++
			if len(fc.samples) < 5 {
				fc.samples = append(fc.samples, fmt.Sprintf("%q@%d (in storage: %v)", v.Key, v.CommitTS, ok))
			}
		}
	}
	return fc, nil
}

func versionKey(key []byte, commitTS uint64) string { return fmt.Sprintf("%x@%d", key, commitTS) }

// print writes the verdict; it returns an error unless the storage is
// complete and sound.
func (fc *finalCheck) print(out io.Writer) error {
	rep := fc.rep
	fmt.Fprintf(out, "verify: %d meta files, %d data files (checksums match), %d changes over %d keys in %s\n",
		rep.MetaFiles, rep.DataFiles, rep.Changes, rep.Keys, rep.Storage)
	if fc.lost > 0 || len(rep.Problems) > 0 {
		return fmt.Errorf("verify FAILED: %d of %d committed versions up to the checkpoint are missing or differ (first: %v); problems: %v",
			fc.lost, fc.checked, fc.samples, rep.Problems)
	}
	fmt.Fprintf(out, "verify: OK — all %d versions committed up to the global checkpoint are in storage\n", fc.checked)
	return nil
}
