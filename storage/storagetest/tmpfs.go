package storagetest

import (
	"fmt"
	"os"
	"syscall"
	"testing"
)

// Tmpfs is a real, size-limited filesystem mounted for one test, for
// failures a temp directory cannot produce: ENOSPC, and EROFS (as root,
// chmod denies nothing, but a read-only remount does).
type Tmpfs struct {
	Dir  string
	size int64
}

// MountTmpfs mounts a tmpfs of size bytes on a new temp directory and
// unmounts it when the test ends. It skips the test, saying why, only
// where mounting is impossible (not root, no CAP_SYS_ADMIN, a sandbox).
func MountTmpfs(t testing.TB, size int64) *Tmpfs {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, fmt.Sprintf("size=%d,mode=0755", size)); err != nil {
		t.Skipf("cannot mount a tmpfs for a real full or read-only filesystem (needs root or CAP_SYS_ADMIN): %v (uid %d)", err, os.Getuid())
	}
	t.Cleanup(func() {
		// Lazy: a storage the test left open must not fail the unmount.
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return &Tmpfs{Dir: dir, size: size}
}

// ReadOnly remounts the filesystem read-only: every write then fails
// with EROFS, whoever the caller is.
func (fs *Tmpfs) ReadOnly(t testing.TB) {
	t.Helper()
	if err := syscall.Mount("tmpfs", fs.Dir, "tmpfs", syscall.MS_REMOUNT|syscall.MS_RDONLY|syscall.MS_NOSUID|syscall.MS_NODEV, ""); err != nil {
		t.Fatalf("remount %s read-only: %v", fs.Dir, err)
	}
}

// Fill writes a file that takes all the space left but keep bytes, so
// the next larger write fails with ENOSPC part way.
func (fs *Tmpfs) Fill(t testing.TB, keep int64) {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(fs.Dir, &st); err != nil {
		t.Fatal(err)
	}
	free := int64(st.Bavail) * st.Bsize
	if free <= keep {
		return
	}
	f, err := os.CreateTemp(fs.Dir, "filler-")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for left := free - keep; left > 0; {
		n := min(left, int64(len(buf)))
		if _, err := f.Write(buf[:n]); err != nil {
			t.Fatalf("fill %s: %v", fs.Dir, err)
		}
		left -= n
	}
}
