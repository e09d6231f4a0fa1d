package awsauth

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

var sourceKeys = Credentials{AccessKeyID: srcKeyID, SecretAccessKey: srcSecret, SessionToken: srcToken}

func TestAssumeRoleFromSourceProfile(t *testing.T) {
	sts := newFakeSTS(t, sourceKeys, "eu-west-1")
	env := testEnv(t, "AWS_ENDPOINT_URL_STS", sts.URL)
	writeAWSFile(t, env, "config", "[profile app]\nregion = eu-west-1\nrole_arn = "+testRoleARN+
		"\nsource_profile = base\nexternal_id = "+extID+"\nrole_session_name = nightly\nduration_seconds = 7200\n")
	writeAWSFile(t, env, "credentials", "[base]\naws_access_key_id = "+srcKeyID+
		"\naws_secret_access_key = "+srcSecret+"\naws_session_token = "+srcToken+"\n")
	p, region := mustResolve(t, Config{Env: envFunc(env), Profile: "app"})
	c := mustRetrieve(t, p)
	if c.AccessKeyID != "AKIDROLE1" || c.SecretAccessKey != roleSecret || c.SessionToken != roleToken ||
		c.Expires.IsZero() || region != "eu-west-1" {
		t.Errorf("got %+v in %s", c, region)
	}
	if !strings.Contains(c.Source, testRoleARN) || !strings.Contains(c.Source, `"base"`) {
		t.Errorf("Source = %q", c.Source)
	}
	req := sts.last(t)
	if !strings.Contains(req.auth, "Credential="+srcKeyID+"/") || !strings.Contains(req.auth, "/eu-west-1/sts/aws4_request") ||
		!req.signatureOK || req.token != srcToken {
		t.Errorf("AssumeRole not signed with the source profile's keys: auth %q, token %q, verifies %v", req.auth, req.token, req.signatureOK)
	}
	for k, want := range map[string]string{"Action": "AssumeRole", "RoleArn": testRoleARN, "ExternalId": extID,
		"RoleSessionName": "nightly", "DurationSeconds": "7200"} {
		if got := req.form.Get(k); got != want {
			t.Errorf("form %s = %q, want %q", k, got, want)
		}
	}
	// Cached: no second call.
	mustRetrieve(t, p)
	if n := sts.count(); n != 1 {
		t.Errorf("STS called %d times, want 1", n)
	}
}

// role_arn with source_profile naming itself: the profile's own keys
// assume its role (the SDK's rule for a self-reference).
func TestAssumeRoleSourceProfileSelf(t *testing.T) {
	sts := newFakeSTS(t, Credentials{AccessKeyID: srcKeyID, SecretAccessKey: srcSecret}, "us-east-1")
	env := testEnv(t, "AWS_ENDPOINT_URL", sts.URL)
	writeAWSFile(t, env, "credentials", "[self]\nrole_arn = "+testRoleARN+"\nsource_profile = self\naws_access_key_id = "+srcKeyID+
		"\naws_secret_access_key = "+srcSecret+"\n")
	p, _ := mustResolve(t, Config{Env: envFunc(env), Profile: "self"})
	if c := mustRetrieve(t, p); c.AccessKeyID != "AKIDROLE1" || !sts.last(t).signatureOK {
		t.Errorf("got %s, STS signature verifies %v", c.AccessKeyID, sts.last(t).signatureOK)
	}
}

// Config.RoleARN wraps whatever the chain found, here keys from the URL.
func TestConfigRoleARN(t *testing.T) {
	sts := newFakeSTS(t, Credentials{AccessKeyID: srcKeyID, SecretAccessKey: srcSecret}, "ap-northeast-1")
	env := testEnv(t, "AWS_ENDPOINT_URL_STS", sts.URL)
	p, _ := mustResolve(t, Config{Env: envFunc(env), Region: "ap-northeast-1", RoleARN: testRoleARN, ExternalID: extID,
		Static: &Credentials{AccessKeyID: srcKeyID, SecretAccessKey: srcSecret}})
	c := mustRetrieve(t, p)
	req := sts.last(t)
	if c.SecretAccessKey != roleSecret || !req.signatureOK || req.form.Get("ExternalId") != extID ||
		req.form.Get("RoleArn") != testRoleARN || !strings.HasPrefix(req.form.Get("RoleSessionName"), "logbackup-") ||
		req.form.Has("DurationSeconds") {
		t.Errorf("creds %+v; STS saw %v (signature verifies %v)", c, req.form, req.signatureOK)
	}
}

func TestSTSEndpoint(t *testing.T) {
	for _, tc := range []struct {
		kv     []string
		region string
		want   string
	}{
		{[]string{"AWS_ENDPOINT_URL_STS", "http://sts.local", "AWS_ENDPOINT_URL", "http://all.local"}, "eu-west-1", "http://sts.local"},
		{[]string{"AWS_ENDPOINT_URL", "http://all.local"}, "eu-west-1", "http://all.local"},
		{nil, "eu-west-1", "https://sts.eu-west-1.amazonaws.com"},
		{nil, "cn-north-1", "https://sts.cn-north-1.amazonaws.com.cn"},
	} {
		if got := stsEndpoint(envFunc(testEnvWith(nil, tc.kv...)), tc.region); got != tc.want {
			t.Errorf("%v %s: %s, want %s", tc.kv, tc.region, got, tc.want)
		}
	}
}

func TestWebIdentityFromEnvironment(t *testing.T) {
	sts := newFakeSTS(t, Credentials{}, "us-east-1")
	sts.expires = time.Now().Add(-time.Minute) // already stale: every Retrieve refreshes
	tokenFile := writeFile(t, webToken+"\n")
	env := testEnv(t, "AWS_ENDPOINT_URL_STS", sts.URL, "AWS_WEB_IDENTITY_TOKEN_FILE", tokenFile,
		"AWS_ROLE_ARN", testRoleARN, "AWS_ROLE_SESSION_NAME", "pod-1")
	// Web identity in the environment comes before the shared files.
	writeAWSFile(t, env, "credentials", "[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = s\n")
	p, _ := mustResolve(t, Config{Env: envFunc(env)})
	c := mustRetrieve(t, p)
	req := sts.last(t)
	if c.SecretAccessKey != roleSecret || req.form.Get("Action") != "AssumeRoleWithWebIdentity" ||
		req.form.Get("WebIdentityToken") != webToken || req.form.Get("RoleArn") != testRoleARN ||
		req.form.Get("RoleSessionName") != "pod-1" || req.auth != "" {
		t.Errorf("creds %+v; STS saw %v, Authorization %q", c, req.form, req.auth)
	}
	// The token is read again on refresh: its owner rotates it.
	if err := writeFileAt(tokenFile, "rotated-"+webToken); err != nil {
		t.Fatal(err)
	}
	mustRetrieve(t, p)
	if got := sts.last(t).form.Get("WebIdentityToken"); got != "rotated-"+webToken || sts.count() != 2 {
		t.Errorf("after rotation STS saw token %q in %d calls", got, sts.count())
	}
}

func TestWebIdentityFromProfile(t *testing.T) {
	sts := newFakeSTS(t, Credentials{}, "us-east-1")
	tokenFile := writeFile(t, webToken)
	env := testEnv(t, "AWS_ENDPOINT_URL_STS", sts.URL)
	writeAWSFile(t, env, "config", "[profile w]\nrole_arn = "+testRoleARN+"\nweb_identity_token_file = "+tokenFile+"\nrole_session_name = from-profile\n")
	p, _ := mustResolve(t, Config{Env: envFunc(env), Profile: "w"})
	c := mustRetrieve(t, p)
	req := sts.last(t)
	if c.SecretAccessKey != roleSecret || req.form.Get("WebIdentityToken") != webToken ||
		req.form.Get("RoleSessionName") != "from-profile" || sts.count() != 1 {
		t.Errorf("creds %+v; STS saw %v in %d calls", c, req.form, sts.count())
	}
}

func TestWebIdentityNeedsRoleARN(t *testing.T) {
	env := testEnv(t, "AWS_WEB_IDENTITY_TOKEN_FILE", writeFile(t, webToken))
	_, _, err := Resolve(Config{Env: envFunc(env)})
	noSecrets(t, err)
	if !strings.Contains(err.Error(), "AWS_ROLE_ARN") {
		t.Errorf("err = %v", err)
	}
}

// STS's error answers give status, code and message, but never what the
// request carried, even when the answer echoes it.
func TestSTSErrors(t *testing.T) {
	// What a service could echo is what the request carried.
	echo := "key " + srcSecret + " token " + srcToken + " external " + extID
	webEcho := "token " + webToken
	t.Run("AssumeRole AccessDenied", func(t *testing.T) {
		sts := newFakeSTS(t, sourceKeys, "us-east-1")
		sts.fail(http.StatusForbidden, `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>`+
			`<Code>AccessDenied</Code><Message>not authorized to perform sts:AssumeRole; you sent `+echo+`</Message></Error>`+
			`<RequestId>x</RequestId></ErrorResponse>`)
		env := testEnv(t, "AWS_ENDPOINT_URL_STS", sts.URL)
		p, _ := mustResolve(t, Config{Env: envFunc(env), Static: &sourceKeys, RoleARN: testRoleARN, ExternalID: extID})
		_, err := p.Retrieve(ctxT(t))
		noSecrets(t, err)
		want := "aws credentials: STS AssumeRole for " + testRoleARN + ": 403 AccessDenied: not authorized to perform sts:AssumeRole"
		if !strings.HasPrefix(err.Error(), want) {
			t.Errorf("err = %v\nwant it to start %s", err, want)
		}
		var e *Error
		if !errorsAs(err, &e) || e.Status != 403 || e.Code != "AccessDenied" {
			t.Errorf("err is not an *Error with the status and code: %#v", err)
		}
		// A failure is not cached.
		sts.fail(0, "")
		if c := mustRetrieve(t, p); c.SecretAccessKey != roleSecret {
			t.Errorf("after STS recovered: %+v", c)
		}
	})
	t.Run("not STS's document", func(t *testing.T) {
		sts := newFakeSTS(t, sourceKeys, "us-east-1")
		sts.fail(http.StatusBadGateway, "<html>proxy says "+echo+"</html")
		env := testEnv(t, "AWS_ENDPOINT_URL_STS", sts.URL)
		p, _ := mustResolve(t, Config{Env: envFunc(env), Static: &sourceKeys, RoleARN: testRoleARN, ExternalID: extID})
		_, err := p.Retrieve(ctxT(t))
		noSecrets(t, err)
		if !strings.HasSuffix(err.Error(), ": 502") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("web identity InvalidIdentityToken", func(t *testing.T) {
		sts := newFakeSTS(t, Credentials{}, "us-east-1")
		sts.fail(http.StatusBadRequest, `<ErrorResponse><Error><Code>InvalidIdentityToken</Code><Message>bad token `+webEcho+`</Message></Error></ErrorResponse>`)
		env := testEnv(t, "AWS_ENDPOINT_URL_STS", sts.URL, "AWS_WEB_IDENTITY_TOKEN_FILE", writeFile(t, webToken), "AWS_ROLE_ARN", testRoleARN)
		p, _ := mustResolve(t, Config{Env: envFunc(env)})
		_, err := p.Retrieve(ctxT(t))
		noSecrets(t, err)
		if !strings.Contains(err.Error(), "AssumeRoleWithWebIdentity for "+testRoleARN+": 400 InvalidIdentityToken: bad token") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("source credentials fail", func(t *testing.T) {
		env := testEnv(t, "AWS_ENDPOINT_URL_STS", "http://127.0.0.1:1")
		p, _ := mustResolve(t, Config{Env: envFunc(env), RoleARN: testRoleARN, ExternalID: extID})
		_, err := p.Retrieve(ctxT(t))
		noSecrets(t, err)
		if !strings.Contains(err.Error(), "STS AssumeRole for "+testRoleARN+": source credentials: no credentials found") ||
			strings.Count(err.Error(), "aws credentials:") != 1 {
			t.Errorf("err = %v", err)
		}
	})
}

// The caller's ctx bounds the STS call.
func TestSTSHonoursContext(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	defer srv.Close()
	defer close(release)
	env := testEnv(t, "AWS_ENDPOINT_URL_STS", srv.URL)
	p, _ := mustResolve(t, Config{Env: envFunc(env), Static: &sourceKeys, RoleARN: testRoleARN})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := p.Retrieve(ctx)
	noSecrets(t, err)
	if !isDeadline(err) || time.Since(start) > time.Second {
		t.Errorf("err = %v after %v, want a deadline within the ctx's", err, time.Since(start))
	}
}
