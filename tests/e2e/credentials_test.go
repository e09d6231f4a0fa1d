package e2e

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"logbackup/meta"
	"logbackup/tests/s3test"
	"logbackup/tests/simcluster"
)

// agentEnvKey is the access key the process environment holds: what the
// agents (and br, when its URL has none) find in AWS_* variables.
const agentEnvKey = "AKIAAGENTENVIRONMENT"

// s3Env puts static AWS credentials in the environment and shuts the
// other sources of the AWS default chain (shared files, instance role).
func s3Env(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", agentEnvKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "agent-environment-secret")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_CONFIG_FILE", "/nonexistent/config")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
}

// signedBy is the access key a request was signed with ("" if unsigned).
func signedBy(r s3test.Request) string {
	auth := r.Header.Get("Authorization")
	_, cred, ok := strings.Cut(auth, "Credential=")
	if !ok {
		return ""
	}
	key, _, _ := strings.Cut(cred, "/")
	return key
}

// withoutKeys is an s3test URL with its static credentials removed.
func withoutKeys(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Del("access-key")
	q.Del("secret-access-key")
	u.RawQuery = q.Encode()
	return u.String()
}

// TestSendCredentialsToTiKV runs -c/--send-credentials-to-tikv both ways on
// the loopback S3 server, with agents writing:
//   - false: the task's StorageBackend carries no credentials although the
//     URL has keys; br writes its own files with the URL's keys and the
//     agent signs every request with its environment's (AWS_* variables),
//     and the backup is complete;
//   - true (BR's default) with a URL without keys: br sends the credentials
//     it finds in its environment with the task, as BR does.
func TestSendCredentialsToTiKV(t *testing.T) {
	s3Env(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s3 := s3test.Start(t, "bk")
	c := startPDCluster(t, ctx, simcluster.Config{Stores: 1})
	r := brRun{t: t, ep: c.PDAddr()}
	m := meta.NewClient(pdEtcd{c}.Client(t))
	withKeys := s3.URL("bk", "withheld")

	r.ok("log", "start", "--task-name", "pitr", "-s", withKeys, "--send-credentials-to-tikv=false")
	task, err := m.GetTask(ctx, "pitr")
	if err != nil {
		t.Fatal(err)
	}
	if b := task.Info.Storage.GetS3(); b == nil || b.AccessKey != "" || b.SecretAccessKey != "" || b.SessionToken != "" || b.Bucket != "bk" {
		t.Fatalf("-c=false: the task carries %+v", b)
	}
	for _, req := range s3.Log() {
		if k := signedBy(req); k != s3test.AccessKey {
			t.Fatalf("br's own request %s %s signed by %q, want the URL's key", req.Method, req.Path, k)
		}
	}
	s3.ResetLog()

	h := &harness{t: t, ctx: ctx, c: c, etcd: pdEtcd{c}, m: m, startTS: task.Info.StartTs}
	_, stop := h.agent(c.StoreIDs()[0], nil, nil)
	for _, k := range []string{"t1", "t2", "t3"} {
		if _, err := c.Put(ctx, []byte(k), []byte("v-"+k)); err != nil {
			t.Fatal(err)
		}
	}
	end, _ := c.TSO(ctx)
	global := h.waitGlobal(end)
	stop()
	if n := assertBackedUp(t, ctx, withKeys, c, task.Info.StartTs, global); n != 3 {
		t.Fatalf("%d versions backed up, want 3", n)
	}
	writes := 0
	for _, req := range s3.Log() {
		if req.Method != "PUT" || !strings.Contains(req.Path, "/withheld/v1/") {
			continue
		}
		writes++
		if k := signedBy(req); k != agentEnvKey {
			t.Fatalf("agent write %s signed by %q, want the environment's %q", req.Path, k, agentEnvKey)
		}
	}
	if writes == 0 {
		t.Fatal("no agent write reached S3")
	}
	r.ok("log", "stop", "--task-name", "pitr")

	// BR's default: no keys in the URL, so br sends its environment's.
	r.ok("log", "start", "--task-name", "pitr", "-s", withoutKeys(t, s3.URL("bk", "sent")))
	task, err = m.GetTask(ctx, "pitr")
	if err != nil {
		t.Fatal(err)
	}
	if b := task.Info.Storage.GetS3(); b.AccessKey != agentEnvKey || b.SecretAccessKey != "agent-environment-secret" {
		t.Fatalf("-c=true: the task carries access key %q, want the environment's", b.AccessKey)
	}
	// The status never shows what was sent.
	if js := r.ok("log", "status", "--json"); strings.Contains(js, "agent-environment-secret") {
		t.Fatalf("status shows the secret: %s", js)
	}
	r.ok("log", "stop", "--task-name", "pitr")

	// With nothing in the environment and nothing in the URL there is
	// nothing to send: BR's error, with the way out.
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	res := r.fails("no AWS credentials", "log", "start", "--task-name", "pitr", "-s", withoutKeys(t, s3.URL("bk", "none")))
	if !strings.Contains(res.stderr, "--send-credentials-to-tikv=false") {
		t.Fatalf("no hint at -c=false: %s", res.stderr)
	}
}
