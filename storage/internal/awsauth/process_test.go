package awsauth

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func processProfile(t *testing.T, command string) map[string]string {
	env := testEnv(t)
	writeAWSFile(t, env, "config", "[profile proc]\ncredential_process = "+command+"\n")
	return env
}

func TestCredentialProcess(t *testing.T) {
	counter := filepath.Join(t.TempDir(), "runs")
	exp := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	env := processProfile(t, `sh -c 'echo run >> `+counter+`; printf "%s" "$0"' '{"Version": 1, "AccessKeyId": "AKIDPROC", "SecretAccessKey": "`+
		roleSecret+`", "SessionToken": "`+roleToken+`", "Expiration": "`+exp+`"}'`)
	p, _ := mustResolve(t, Config{Env: envFunc(env), Profile: "proc"})
	c := mustRetrieve(t, p)
	if c.AccessKeyID != "AKIDPROC" || c.SecretAccessKey != roleSecret || c.SessionToken != roleToken ||
		c.Expires.Format(time.RFC3339) != exp || !strings.Contains(c.Source, `"proc"`) {
		t.Errorf("got %+v", c)
	}
	mustRetrieve(t, p) // cached until near expiry
	if runs, _ := os.ReadFile(counter); strings.Count(string(runs), "run") != 1 {
		t.Errorf("the process ran %d times, want 1", strings.Count(string(runs), "run"))
	}
}

func TestCredentialProcessWithoutExpiration(t *testing.T) {
	env := processProfile(t, `printf '{"Version":1,"AccessKeyId":"AKIDPROC","SecretAccessKey":"s"}'`)
	p, _ := mustResolve(t, Config{Env: envFunc(env), Profile: "proc"})
	if c := mustRetrieve(t, p); c.AccessKeyID != "AKIDPROC" || !c.Expires.IsZero() || c.SessionToken != "" {
		t.Errorf("got %+v", c)
	}
}

func TestCredentialProcessFailures(t *testing.T) {
	leak := "printf '" + roleSecret + " " + roleToken + "'; printf '" + roleSecret + "' >&2"
	for _, tc := range []struct{ name, command, want string }{
		{"exit status", leak + "; exit 3", "exited with status 3"},
		{"not JSON", leak, "are not its JSON document"},
		{"wrong version", `printf '{"Version":2,"AccessKeyId":"A","SecretAccessKey":"` + roleSecret + `"}'`, "Version 2"},
		{"no keys", `printf '{"Version":1,"SessionToken":"` + roleToken + `"}'`, "no AccessKeyId or no SecretAccessKey"},
		{"too much output", `head -c 100000 /dev/zero`, "more than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := mustResolve(t, Config{Env: envFunc(processProfile(t, tc.command)), Profile: "proc"})
			_, err := p.Retrieve(ctxT(t))
			noSecrets(t, err)
			if !strings.Contains(err.Error(), `credential_process of profile "proc"`) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "printf") {
				t.Errorf("the command is in the error: %v", err)
			}
		})
	}
}

func TestCredentialProcessHonoursContext(t *testing.T) {
	// A child that outlives the shell must not hold Retrieve up either.
	p, _ := mustResolve(t, Config{Env: envFunc(processProfile(t, "sleep 3 & sleep 3")), Profile: "proc"})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := p.Retrieve(ctx)
	noSecrets(t, err)
	if !isDeadline(err) || time.Since(start) > 1500*time.Millisecond {
		t.Errorf("err = %v after %v", err, time.Since(start))
	}
}
