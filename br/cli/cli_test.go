package cli

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// TestTLSFlagsValidatedBeforeDialling: --cert/--key without --ca, or an
// unreadable CA, is an error naming the flag and file, and nothing
// connects (no silent plaintext).
func TestTLSFlagsValidatedBeforeDialling(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	accepted := make(chan struct{}, 8)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			c.Close()
		}
	}()
	for _, c := range []struct {
		flags []string
		want  string
	}{
		{[]string{"--cert", "/etc/client.pem", "--key", "/etc/client-key.pem"}, "--cert and --key are given without --ca"},
		{[]string{"--key", "/etc/client-key.pem"}, "--key is given without --ca"},
		{[]string{"--ca", "/nonexistent/ca.pem"}, "--ca /nonexistent/ca.pem: cannot read"},
	} {
		var stdout, stderr bytes.Buffer
		args := append([]string{"stream", "status", "-u", lis.Addr().String(), "--dial-timeout", "10s"}, c.flags...)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		code := Main(ctx, args, &stdout, &stderr)
		cancel()
		if code == 0 || !strings.Contains(stderr.String(), c.want) || !strings.Contains(stderr.String(), "invalid TLS flags") {
			t.Errorf("br %v: exit %d, stderr %q; want an error containing %q", c.flags, code, stderr.String(), c.want)
		}
	}
	select {
	case <-accepted:
		t.Fatal("br connected although its TLS flags were invalid")
	default:
	}
}
