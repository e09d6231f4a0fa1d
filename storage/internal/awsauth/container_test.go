package awsauth

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeContainer is the ECS credentials endpoint: it wants token in
// Authorization and answers on path.
type fakeContainer struct {
	*httptest.Server
	mu    sync.Mutex
	auths []string
	paths []string
}

func newFakeContainer(t *testing.T, token, path string) *fakeContainer {
	f := &fakeContainer{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.auths = append(f.auths, r.Header.Get("Authorization"))
		f.paths = append(f.paths, r.URL.Path)
		f.mu.Unlock()
		if r.Header.Get("Authorization") != token {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintf(w, `{"code":"Unauthorized","message":"wrong token %s"}`, r.Header.Get("Authorization"))
			return
		}
		if r.URL.Path != path {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		fmt.Fprintf(w, `{"AccessKeyId":"AKIDECS","SecretAccessKey":%q,"Token":%q,"Expiration":%q,"RoleArn":%q}`,
			roleSecret, roleToken, time.Now().Add(time.Hour).UTC().Format(time.RFC3339), testRoleARN)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeContainer) seen() ([]string, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.auths...), append([]string(nil), f.paths...)
}

func TestContainerFullURIWithToken(t *testing.T) {
	f := newFakeContainer(t, ecsToken, "/v1/credentials")
	env := testEnv(t, "AWS_CONTAINER_CREDENTIALS_FULL_URI", f.URL+"/v1/credentials", "AWS_CONTAINER_AUTHORIZATION_TOKEN", ecsToken)
	p, _ := mustResolve(t, Config{Env: envFunc(env)})
	c := mustRetrieve(t, p)
	if c.AccessKeyID != "AKIDECS" || c.SecretAccessKey != roleSecret || c.SessionToken != roleToken || c.Expires.IsZero() {
		t.Errorf("got %+v", c)
	}
	mustRetrieve(t, p) // cached
	if auths, _ := f.seen(); len(auths) != 1 || auths[0] != ecsToken {
		t.Errorf("endpoint saw Authorization %q", auths)
	}
}

// The token file (EKS Pod Identity) wins over the variable, and is read
// on each refresh.
func TestContainerTokenFile(t *testing.T) {
	f := newFakeContainer(t, "from-file-"+ecsToken, "/v1/credentials")
	tokenFile := writeFile(t, "from-file-"+ecsToken+"\n")
	env := testEnv(t, "AWS_CONTAINER_CREDENTIALS_FULL_URI", f.URL+"/v1/credentials",
		"AWS_CONTAINER_AUTHORIZATION_TOKEN", ecsToken, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", tokenFile)
	p, _ := mustResolve(t, Config{Env: envFunc(env)})
	mustRetrieve(t, p)
	if err := writeFileAt(tokenFile, "rotated"); err != nil {
		t.Fatal(err)
	}
	// A direct call (the cache would not ask again for an hour).
	p.(*cachedProvider).p.Retrieve(ctxT(t))
	if auths, _ := f.seen(); len(auths) != 2 || auths[0] != "from-file-"+ecsToken || auths[1] != "rotated" {
		t.Errorf("endpoint saw Authorization %q", auths)
	}
}

func TestContainerRelativeURI(t *testing.T) {
	f := newFakeContainer(t, "", "/v2/credentials/task-uuid")
	opts := defaultOptions()
	opts.ecsEndpoint = f.URL
	env := testEnv(t, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/credentials/task-uuid",
		// RELATIVE_URI wins over FULL_URI.
		"AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:1/elsewhere")
	p, _, err := resolve(Config{Env: envFunc(env)}, opts)
	if err != nil {
		t.Fatal(err)
	}
	if c := mustRetrieve(t, p); c.AccessKeyID != "AKIDECS" {
		t.Errorf("got %+v", c)
	}
	if auths, paths := f.seen(); len(paths) != 1 || paths[0] != "/v2/credentials/task-uuid" || auths[0] != "" {
		t.Errorf("endpoint saw %q %q", paths, auths)
	}
	if got := defaultOptions().ecsEndpoint; got != "http://169.254.170.2" {
		t.Errorf("ECS endpoint %s", got)
	}
}

// Container credentials come after the shared files' and before the
// instance role's.
func TestContainerPlaceInChain(t *testing.T) {
	f := newFakeContainer(t, "", "/c")
	env := testEnv(t, "AWS_CONTAINER_CREDENTIALS_FULL_URI", f.URL+"/c")
	delete(env, "AWS_EC2_METADATA_DISABLED") // and IMDS on, but not reached
	env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = "http://127.0.0.1:1"
	p, _ := mustResolve(t, Config{Env: envFunc(env)})
	if c := mustRetrieve(t, p); c.AccessKeyID != "AKIDECS" {
		t.Errorf("got %s, want the container's", c.AccessKeyID)
	}
	writeAWSFile(t, env, "credentials", "[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = s\n")
	p, _ = mustResolve(t, Config{Env: envFunc(env)})
	if c := mustRetrieve(t, p); c.AccessKeyID != "AKIDFILE" {
		t.Errorf("got %s, want the file's", c.AccessKeyID)
	}
}

func TestContainerErrors(t *testing.T) {
	t.Run("plain http off this host", func(t *testing.T) {
		env := testEnv(t, "AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://10.1.2.3/creds?token="+ecsToken)
		_, _, err := Resolve(Config{Env: envFunc(env)})
		noSecrets(t, err)
		if !strings.Contains(err.Error(), "plain http is allowed only") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("https anywhere is allowed", func(t *testing.T) {
		env := testEnv(t, "AWS_CONTAINER_CREDENTIALS_FULL_URI", "https://10.1.2.3/creds")
		if _, _, err := Resolve(Config{Env: envFunc(env)}); err != nil {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("not a URL", func(t *testing.T) {
		env := testEnv(t, "AWS_CONTAINER_CREDENTIALS_FULL_URI", "ftp://x/"+ecsToken)
		_, _, err := Resolve(Config{Env: envFunc(env)})
		noSecrets(t, err)
	})
	t.Run("refused, with the token echoed", func(t *testing.T) {
		f := newFakeContainer(t, "another", "/c")
		env := testEnv(t, "AWS_CONTAINER_CREDENTIALS_FULL_URI", f.URL+"/c", "AWS_CONTAINER_AUTHORIZATION_TOKEN", ecsToken)
		p, _ := mustResolve(t, Config{Env: envFunc(env)})
		_, err := p.Retrieve(ctxT(t))
		noSecrets(t, err)
		if !strings.Contains(err.Error(), "container credentials endpoint "+f.URL+": 401 Unauthorized: wrong token [redacted]") {
			t.Errorf("err = %v", err)
		}
	})
	// The URL may carry a capability: a failed request must not show it.
	t.Run("unreachable, with a secret in the URL", func(t *testing.T) {
		env := testEnv(t, "AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:1/creds/"+ecsToken+"?t="+ecsToken)
		p, _ := mustResolve(t, Config{Env: envFunc(env)})
		_, err := p.Retrieve(ctxT(t))
		noSecrets(t, err)
		if !strings.Contains(err.Error(), "container credentials endpoint http://127.0.0.1:1: ") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("token with a line break", func(t *testing.T) {
		f := newFakeContainer(t, "", "/c")
		env := testEnv(t, "AWS_CONTAINER_CREDENTIALS_FULL_URI", f.URL+"/c", "AWS_CONTAINER_AUTHORIZATION_TOKEN", ecsToken+"\r\nX-Evil: 1")
		p, _ := mustResolve(t, Config{Env: envFunc(env)})
		_, err := p.Retrieve(ctxT(t))
		noSecrets(t, err)
		if auths, _ := f.seen(); len(auths) != 0 {
			t.Errorf("a request was sent: %q", auths)
		}
	})
}
