package logfile

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"logbackup/storage"
)

// mapReader is storage in a map: the Reader the tests decode from. Objects
// can be mangled in place between writing and reading.
type mapReader struct {
	mu      sync.Mutex
	objects map[string][]byte
}

func newMapReader() *mapReader { return &mapReader{objects: map[string][]byte{}} }

func (m *mapReader) put(o Object) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.objects[o.Name] = bytes.Clone(o.Data)
}

func (m *mapReader) upload(f *Flush) {
	for _, o := range f.Data {
		m.put(Object{Name: o.Name, Data: mustBytes(o)})
	}
	m.put(f.Meta)
}

// mustBytes is a data object's bytes; tests only read flushes they have
// not closed.
func mustBytes(o DataObject) []byte {
	b, err := o.Bytes()
	if err != nil {
		panic(fmt.Sprintf("test flush object unreadable: %v", err))
	}
	return b
}

func (m *mapReader) ReadFile(_ context.Context, name string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.objects[name]
	if !ok {
		return nil, fmt.Errorf("read %s: %w", name, storage.ErrNotExist)
	}
	return bytes.Clone(b), nil
}

func (m *mapReader) ReadRange(_ context.Context, name string, off, n int64) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.objects[name]
	if !ok {
		return nil, fmt.Errorf("read %s: %w", name, storage.ErrNotExist)
	}
	if off < 0 || n < 0 || off > int64(len(b)) {
		return nil, fmt.Errorf("read %s: bad range %d+%d", name, off, n)
	}
	return bytes.Clone(b[off:min(int64(len(b)), off+n)]), nil
}

func (m *mapReader) List(_ context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	m.mu.Lock()
	var names []string
	for n := range m.objects {
		if strings.HasPrefix(n, prefix) {
			names = append(names, n)
		}
	}
	sizes := map[string]int64{}
	for _, n := range names {
		sizes[n] = int64(len(m.objects[n]))
	}
	m.mu.Unlock()
	sort.Strings(names)
	for _, n := range names {
		if err := fn(storage.ObjectInfo{Name: n, Size: sizes[n]}); err != nil {
			return err
		}
	}
	return nil
}

var _ Reader = (*mapReader)(nil)

// storage.Storage is what the agent and br hand the decoder.
var _ Reader = storage.Storage(nil)

func tso(t time.Time, logical uint64) uint64 { return uint64(t.UnixMilli())<<18 | logical }

// tableKey is a TiDB record key: t{table}_r{handle}, ids as comparable
// int64.
func tableKey(table, handle int64) []byte {
	k := []byte{'t'}
	k = binary.BigEndian.AppendUint64(k, uint64(table)^1<<63)
	k = append(k, "_r"...)
	return binary.BigEndian.AppendUint64(k, uint64(handle)^1<<63)
}

// randomChanges makes n changes of every shape: empty, short, 255- and
// 256-byte and 1 MiB values, deletes, binary keys (with 0x00 and 0xff and
// lengths around the 8-byte group), table keys, meta keys and an empty
// key. Start and commit ts grow from base.
func randomChanges(r *rand.Rand, n int, base uint64) []Change {
	out := make([]Change, 0, n)
	sizes := []int{0, 1, 8, 100, 255, 256, 4000}
	for i := 0; i < n; i++ {
		var key []byte
		switch r.Intn(6) {
		case 0:
			key = tableKey(int64(r.Intn(5)+1), int64(r.Intn(1000))-500)
		case 1:
			key = []byte(fmt.Sprintf("mDB:%d", r.Intn(10)))
		case 2:
			key = make([]byte, r.Intn(18))
			for j := range key {
				key[j] = []byte{0, 0xff, byte(r.Intn(256))}[r.Intn(3)]
			}
		case 3:
			key = tableKey(-int64(r.Intn(3)+1), int64(r.Intn(100)))
		default:
			key = []byte(fmt.Sprintf("k%05d", r.Intn(100000)))
		}
		size := sizes[r.Intn(len(sizes))]
		if i == 3 {
			size = 1 << 20
		}
		v := make([]byte, size)
		r.Read(v)
		c := Change{Key: key, Value: v, StartTS: base + uint64(2*i), CommitTS: base + uint64(2*i+1), Op: OpPut}
		if r.Intn(6) == 0 {
			c.Op, c.Value = OpDelete, nil
		}
		out = append(out, c)
	}
	return out
}

func sortChanges(cs []Change) {
	sort.Slice(cs, func(i, j int) bool {
		if c := bytes.Compare(cs[i].Key, cs[j].Key); c != 0 {
			return c < 0
		}
		return cs[i].CommitTS < cs[j].CommitTS
	})
}

func sameChange(a, b Change) bool {
	return bytes.Equal(a.Key, b.Key) && a.StartTS == b.StartTS && a.CommitTS == b.CommitTS && a.Op == b.Op && bytes.Equal(a.Value, b.Value)
}

// seqIDs is an id source for deterministic names.
func seqIDs() func() string {
	n := 0
	return func() string {
		n++
		return fmt.Sprintf("00000000-0000-4000-8000-%012d", n)
	}
}

func walkAll(t testing.TB, r Reader) ([]Change, Summary) {
	t.Helper()
	var got []Change
	sum, err := Walk(context.Background(), r, func(d Decoded) error {
		got = append(got, d.Change)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got, sum
}

func openMem(ctx context.Context) (storage.Storage, error) { return storage.OpenURL(ctx, "mem://") }
