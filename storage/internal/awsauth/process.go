package awsauth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"time"
)

// processTimeout bounds a credential_process run (the SDK's default).
const processTimeout = time.Minute

// maxProcessOutput bounds what is kept of its standard output.
const maxProcessOutput = 64 << 10

// processProvider runs a profile's credential_process and reads the
// credentials it prints. Neither the command (it may carry a password)
// nor anything it prints goes into an error.
type processProvider struct {
	profile string
	command string
}

type processOutput struct {
	Version         int
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string
	SessionToken    string
	Expiration      *time.Time
}

func (p *processProvider) Retrieve(ctx context.Context) (Credentials, error) {
	op := fmt.Sprintf("credential_process of profile %q", p.profile)
	ctx, cancel := context.WithTimeout(ctx, processTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", p.command)
	out := &limitedBuffer{max: maxProcessOutput}
	cmd.Stdout = out
	// Stderr is left unread (nil: /dev/null): it may echo secrets, and
	// the process's own diagnostics belong to whoever runs it by hand.
	// A child that outlives the shell keeps stdout open: WaitDelay stops
	// waiting for it once the shell has been killed.
	cmd.WaitDelay = 500 * time.Millisecond
	err := cmd.Run()
	if ctx.Err() != nil {
		return Credentials{}, &Error{Op: op, Err: ctx.Err()}
	}
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return Credentials{}, &Error{Op: op, Message: fmt.Sprintf("exited with status %d (its output is not shown: it may hold secrets)", exit.ExitCode())}
		}
		return Credentials{}, &Error{Op: op, Err: err}
	}
	if out.overflow {
		return Credentials{}, &Error{Op: op, Message: fmt.Sprintf("printed more than %d bytes", maxProcessOutput)}
	}
	var o processOutput
	if json.Unmarshal(out.buf.Bytes(), &o) != nil {
		return Credentials{}, &Error{Op: op, Message: fmt.Sprintf("printed %d bytes that are not its JSON document", out.buf.Len())}
	}
	switch {
	case o.Version != 1:
		return Credentials{}, &Error{Op: op, Message: fmt.Sprintf("printed Version %d; only Version 1 is known", o.Version)}
	case o.AccessKeyID == "" || o.SecretAccessKey == "":
		return Credentials{}, &Error{Op: op, Message: "printed no AccessKeyId or no SecretAccessKey"}
	}
	c := Credentials{
		AccessKeyID:     o.AccessKeyID,
		SecretAccessKey: o.SecretAccessKey,
		SessionToken:    o.SessionToken,
		Source:          op,
	}
	if o.Expiration != nil {
		c.Expires = *o.Expiration
	}
	return c, nil
}

// limitedBuffer keeps at most max bytes and notes whether there were more.
type limitedBuffer struct {
	buf      bytes.Buffer
	max      int
	overflow bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.buf.Len(); len(p) > room {
		b.buf.Write(p[:max(room, 0)])
		b.overflow = true
		return len(p), nil
	}
	return b.buf.Write(p)
}
