package s3test_test

import (
	"context"
	"testing"

	"logbackup/storage"
	"logbackup/tests/s3test"
)

// TestNewServesWithoutTesting: a server made by New works like one made by
// Start, and Close stops it.
func TestNewServesWithoutTesting(t *testing.T) {
	s, err := s3test.New("bk")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := storage.OpenURL(ctx, s.URL("bk", "p"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.WriteFile(ctx, "a", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if b, err := st.ReadFile(ctx, "a"); err != nil || string(b) != "x" {
		t.Fatalf("read back %q, %v", b, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := st.WriteFile(ctx, "b", []byte("y")); err == nil {
		t.Fatal("a closed server accepted a write")
	}
}
