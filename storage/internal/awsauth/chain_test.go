package awsauth

import (
	"strings"
	"testing"
)

func TestStaticWinsAndLooksNothingUp(t *testing.T) {
	env := testEnv(t, "AWS_ACCESS_KEY_ID", "AKIDENV", "AWS_SECRET_ACCESS_KEY", "envsecret")
	writeAWSFile(t, env, "credentials", "[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = filesecret\n")
	static := &Credentials{AccessKeyID: "AKIDURL", SecretAccessKey: "urlsecret", SessionToken: "urltoken"}
	p, _ := mustResolve(t, Config{Static: static, Env: envFunc(env)})
	c := mustRetrieve(t, p)
	if c.AccessKeyID != "AKIDURL" || c.SecretAccessKey != "urlsecret" || c.SessionToken != "urltoken" || c.Source == "" {
		t.Errorf("got %+v, want the static keys", c)
	}
}

func TestEnvironmentKeys(t *testing.T) {
	for _, tc := range []struct {
		name   string
		kv     []string
		wantID string
	}{
		{"AWS_ACCESS_KEY_ID", []string{"AWS_ACCESS_KEY_ID", "AKIDENV", "AWS_SECRET_ACCESS_KEY", "envsecret", "AWS_SESSION_TOKEN", "envtoken"}, "AKIDENV"},
		{"legacy AWS_ACCESS_KEY", []string{"AWS_ACCESS_KEY", "AKIDLEGACY", "AWS_SECRET_KEY", "envsecret", "AWS_SESSION_TOKEN", "envtoken"}, "AKIDLEGACY"},
		{"empty counts as unset", []string{"AWS_ACCESS_KEY_ID", "", "AWS_ACCESS_KEY", "AKIDLEGACY", "AWS_SECRET_ACCESS_KEY", "", "AWS_SECRET_KEY", "envsecret", "AWS_SESSION_TOKEN", "envtoken"}, "AKIDLEGACY"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := testEnv(t, tc.kv...)
			// The environment comes before the shared files.
			writeAWSFile(t, env, "credentials", "[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = filesecret\n")
			p, _ := mustResolve(t, Config{Env: envFunc(env)})
			c := mustRetrieve(t, p)
			if c.AccessKeyID != tc.wantID || c.SecretAccessKey != "envsecret" || c.SessionToken != "envtoken" || c.Source != "environment" {
				t.Errorf("got %+v", c)
			}
		})
	}
	t.Run("half a pair is not used", func(t *testing.T) {
		env := testEnv(t, "AWS_ACCESS_KEY_ID", "AKIDENV")
		writeAWSFile(t, env, "credentials", "[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = filesecret\n")
		p, _ := mustResolve(t, Config{Env: envFunc(env)})
		if c := mustRetrieve(t, p); c.AccessKeyID != "AKIDFILE" {
			t.Errorf("got %s, want the file's keys", c.AccessKeyID)
		}
	})
}

func TestCredentialsFileWinsOverConfigFile(t *testing.T) {
	env := testEnv(t)
	writeAWSFile(t, env, "config", "[default]\naws_access_key_id = AKIDCONFIG\naws_secret_access_key = configsecret\naws_session_token = configtoken\n"+
		"[profile onlyconfig]\naws_access_key_id = AKIDONLYCONFIG\naws_secret_access_key = s\n")
	writeAWSFile(t, env, "credentials", "[default]\naws_access_key_id = AKIDCRED\naws_secret_access_key = credsecret\n")
	p, _ := mustResolve(t, Config{Env: envFunc(env)})
	c := mustRetrieve(t, p)
	// The pair comes whole from the credentials file: not the config's token.
	if c.AccessKeyID != "AKIDCRED" || c.SecretAccessKey != "credsecret" || c.SessionToken != "" {
		t.Errorf("got %+v, want the credentials file's keys", c)
	}
	p, _ = mustResolve(t, Config{Env: envFunc(env), Profile: "onlyconfig"})
	if c := mustRetrieve(t, p); c.AccessKeyID != "AKIDONLYCONFIG" {
		t.Errorf("got %s, want the config file's keys", c.AccessKeyID)
	}
}

func TestNamedProfile(t *testing.T) {
	setup := func(t *testing.T, kv ...string) map[string]string {
		env := testEnv(t, kv...)
		writeAWSFile(t, env, "credentials", "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = s\n"+
			"[backup]\naws_access_key_id = AKIDBACKUP\naws_secret_access_key = s\n")
		return env
	}
	t.Run("Config.Profile", func(t *testing.T) {
		p, _ := mustResolve(t, Config{Env: envFunc(setup(t)), Profile: "backup"})
		if c := mustRetrieve(t, p); c.AccessKeyID != "AKIDBACKUP" || !strings.Contains(c.Source, `"backup"`) {
			t.Errorf("got %s from %s", c.AccessKeyID, c.Source)
		}
	})
	t.Run("AWS_PROFILE", func(t *testing.T) {
		p, _ := mustResolve(t, Config{Env: envFunc(setup(t, "AWS_PROFILE", "backup"))})
		if c := mustRetrieve(t, p); c.AccessKeyID != "AKIDBACKUP" {
			t.Errorf("got %s", c.AccessKeyID)
		}
	})
	t.Run("Config.Profile wins over AWS_PROFILE", func(t *testing.T) {
		p, _ := mustResolve(t, Config{Env: envFunc(setup(t, "AWS_PROFILE", "nonesuch")), Profile: "backup"})
		if c := mustRetrieve(t, p); c.AccessKeyID != "AKIDBACKUP" {
			t.Errorf("got %s", c.AccessKeyID)
		}
	})
	// As with the SDK's WithSharedConfigProfile: a profile named in code
	// (profile= in the storage URL) is used even when the environment
	// has keys; one named by AWS_PROFILE is not.
	t.Run("Config.Profile wins over environment keys", func(t *testing.T) {
		env := setup(t, "AWS_ACCESS_KEY_ID", "AKIDENV", "AWS_SECRET_ACCESS_KEY", "s")
		p, _ := mustResolve(t, Config{Env: envFunc(env), Profile: "backup"})
		if c := mustRetrieve(t, p); c.AccessKeyID != "AKIDBACKUP" {
			t.Errorf("got %s", c.AccessKeyID)
		}
	})
	t.Run("environment keys win over AWS_PROFILE", func(t *testing.T) {
		env := setup(t, "AWS_ACCESS_KEY_ID", "AKIDENV", "AWS_SECRET_ACCESS_KEY", "s", "AWS_PROFILE", "backup")
		p, _ := mustResolve(t, Config{Env: envFunc(env)})
		if c := mustRetrieve(t, p); c.AccessKeyID != "AKIDENV" {
			t.Errorf("got %s", c.AccessKeyID)
		}
	})
}

func TestProfileSectionNames(t *testing.T) {
	env := testEnv(t)
	writeAWSFile(t, env, "config", `[profile prefixed]
aws_access_key_id = AKIDPREFIXED
aws_secret_access_key = s
# In the config file a bare [name] is not a profile.
[bare]
aws_access_key_id = AKIDBARE
aws_secret_access_key = s
[profile default]
aws_access_key_id = AKIDPROFILEDEFAULT
aws_secret_access_key = s
[default]
aws_access_key_id = AKIDDEFAULT
aws_secret_access_key = s
`)
	writeAWSFile(t, env, "credentials", `# In the credentials file [profile name] is not a profile.
[profile credprefixed]
aws_access_key_id = AKIDCREDPREFIXED
aws_secret_access_key = s
[credbare]
aws_access_key_id = AKIDCREDBARE
aws_secret_access_key = s
`)
	for profile, want := range map[string]string{
		"prefixed": "AKIDPREFIXED",
		"credbare": "AKIDCREDBARE",
		"default":  "AKIDPROFILEDEFAULT", // [profile default] wins over [default]
	} {
		p, _ := mustResolve(t, Config{Env: envFunc(env), Profile: profile})
		if c := mustRetrieve(t, p); c.AccessKeyID != want {
			t.Errorf("profile %s: got %s, want %s", profile, c.AccessKeyID, want)
		}
	}
	for _, profile := range []string{"bare", "credprefixed"} {
		if _, _, err := Resolve(Config{Env: envFunc(env), Profile: profile}); err == nil || !strings.Contains(err.Error(), "not found in the shared files") {
			t.Errorf("profile %s: err = %v, want it not found", profile, err)
		}
	}
}

func TestProfileNotFound(t *testing.T) {
	env := testEnv(t)
	credPath := writeAWSFile(t, env, "credentials", "[other]\naws_access_key_id = A\naws_secret_access_key = s\n")
	for _, cfg := range []Config{
		{Env: envFunc(env), Profile: "nonesuch"},
		{Env: envFunc(testEnvWith(env, "AWS_PROFILE", "nonesuch"))},
	} {
		_, _, err := Resolve(cfg)
		noSecrets(t, err)
		if !strings.Contains(err.Error(), `"nonesuch"`) || !strings.Contains(err.Error(), credPath) {
			t.Errorf("err = %v, want it to name the profile and the files", err)
		}
	}
	// "default" not being there is no error: the chain goes on.
	if _, _, err := Resolve(Config{Env: envFunc(env)}); err != nil {
		t.Errorf("Resolve without a default profile: %v", err)
	}
}

func testEnvWith(env map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range env {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

func TestNoCredentialsSaysWhereItLooked(t *testing.T) {
	env := testEnv(t)
	writeAWSFile(t, env, "config", "[default]\nregion = eu-west-1\n")
	p, _ := mustResolve(t, Config{Env: envFunc(env)})
	_, err := p.Retrieve(ctxT(t))
	noSecrets(t, err)
	for _, want := range []string{"no credentials found", "AWS_ACCESS_KEY_ID", "AWS_WEB_IDENTITY_TOKEN_FILE",
		`profile "default"`, env["HOME"] + "/.aws/credentials", env["HOME"] + "/.aws/config", "EC2 instance metadata", "AWS_EC2_METADATA_DISABLED"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

func TestRegion(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    string
		kv     []string
		config string
		want   string
	}{
		{"Config.Region first", "ap-south-1", []string{"AWS_REGION", "eu-west-1", "AWS_DEFAULT_REGION", "eu-west-2"}, "[default]\nregion = eu-west-3\n", "ap-south-1"},
		{"AWS_REGION", "", []string{"AWS_REGION", "eu-west-1", "AWS_DEFAULT_REGION", "eu-west-2"}, "[default]\nregion = eu-west-3\n", "eu-west-1"},
		{"AWS_DEFAULT_REGION", "", []string{"AWS_DEFAULT_REGION", "eu-west-2"}, "[default]\nregion = eu-west-3\n", "eu-west-2"},
		{"the profile's region", "", nil, "[default]\nregion = eu-west-3\n", "eu-west-3"},
		{"the named profile's region", "", []string{"AWS_PROFILE", "x"}, "[default]\nregion = eu-west-3\n[profile x]\nregion = eu-north-1\n", "eu-north-1"},
		{"us-east-1 otherwise", "", nil, "", "us-east-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := testEnv(t, tc.kv...)
			if tc.config != "" {
				writeAWSFile(t, env, "config", tc.config)
			}
			_, region := mustResolve(t, Config{Env: envFunc(env), Region: tc.cfg})
			if region != tc.want {
				t.Errorf("region %q, want %q", region, tc.want)
			}
		})
	}
}

func TestFilesFromEnvironment(t *testing.T) {
	env := testEnv(t)
	env["AWS_SHARED_CREDENTIALS_FILE"] = writeFile(t, "[default]\naws_access_key_id = AKIDELSEWHERE\naws_secret_access_key = s\n")
	env["AWS_CONFIG_FILE"] = writeFile(t, "[default]\nregion = sa-east-1\n")
	writeAWSFile(t, env, "credentials", "[default]\naws_access_key_id = AKIDHOME\naws_secret_access_key = s\n")
	p, region := mustResolve(t, Config{Env: envFunc(env)})
	if c := mustRetrieve(t, p); c.AccessKeyID != "AKIDELSEWHERE" || region != "sa-east-1" {
		t.Errorf("got %s in %s, want the files the environment names", c.AccessKeyID, region)
	}
}

func TestSSOProfileIsAClearError(t *testing.T) {
	for name, profile := range map[string]string{
		"sso-session": "[profile dev]\nsso_session = corp\nsso_account_id = 111122223333\nsso_role_name = Admin\n[sso-session corp]\nsso_start_url = https://corp.awsapps.com/start\nsso_region = us-east-1\n",
		"legacy":      "[profile dev]\nsso_start_url = https://corp.awsapps.com/start\nsso_region = us-east-1\nsso_account_id = 111122223333\nsso_role_name = Admin\n",
	} {
		t.Run(name, func(t *testing.T) {
			env := testEnv(t)
			writeAWSFile(t, env, "config", profile)
			_, _, err := Resolve(Config{Env: envFunc(env), Profile: "dev"})
			noSecrets(t, err)
			for _, want := range []string{`profile "dev"`, "SSO", "not support", "credential_process", "export-credentials"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q: %v", want, err)
				}
			}
		})
	}
}

func TestMalformedFiles(t *testing.T) {
	for name, content := range map[string]string{
		"unclosed section":    "[default\naws_access_key_id = A\n",
		"line without =":      "[default]\naws_secret_access_key " + srcSecret + "\n",
		"key before sections": "aws_secret_access_key = " + srcSecret + "\n[default]\n",
		"empty section name":  "[ ]\n",
		"empty key":           "[default]\n = " + srcSecret + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			for _, file := range []string{"config", "credentials"} {
				env := testEnv(t)
				path := writeAWSFile(t, env, file, content)
				_, _, err := Resolve(Config{Env: envFunc(env)})
				noSecrets(t, err)
				if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "line ") {
					t.Errorf("%s: error does not name the file and line: %v", file, err)
				}
			}
		})
	}
	t.Run("half a key pair", func(t *testing.T) {
		env := testEnv(t)
		writeAWSFile(t, env, "credentials", "[default]\naws_secret_access_key = "+srcSecret+"\n")
		_, _, err := Resolve(Config{Env: envFunc(env)})
		noSecrets(t, err)
		if !strings.Contains(err.Error(), "only one of aws_access_key_id and aws_secret_access_key") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("unreadable file", func(t *testing.T) {
		env := testEnv(t, "AWS_CONFIG_FILE", t.TempDir()) // a directory
		if _, _, err := Resolve(Config{Env: envFunc(env)}); err == nil || !strings.Contains(err.Error(), "config file") {
			t.Errorf("err = %v", err)
		}
	})
}

func TestINISyntax(t *testing.T) {
	env := testEnv(t)
	writeAWSFile(t, env, "config", "\ufeff# comment\r\n; another\r\n"+
		"[ profile   spaced ]  # comment after a header\r\n"+
		"AWS_Access_Key_ID = AKIDSPACED   ; comment after a value\r\n"+
		"aws_secret_access_key: \"quoted secret\"\r\n"+
		"s3 =\r\n"+
		"  max_concurrent_requests = 10\r\n"+
		"  region = not-this-one\r\n"+
		"region = eu-central-1\r\n"+
		"credential_source_note = a#b;c kept\r\n")
	p, region := mustResolve(t, Config{Env: envFunc(env), Profile: "spaced"})
	c := mustRetrieve(t, p)
	if c.AccessKeyID != "AKIDSPACED" || c.SecretAccessKey != "quoted secret" || region != "eu-central-1" {
		t.Errorf("got %q %q %q", c.AccessKeyID, c.SecretAccessKey, region)
	}
	f, err := loadSharedFiles(envFunc(env))
	if err != nil {
		t.Fatal(err)
	}
	sec, _, _ := f.profile("spaced")
	if sec["credential_source_note"] != "a#b;c kept" {
		t.Errorf("a # or ; inside a value was cut: %q", sec["credential_source_note"])
	}
}

func TestProfileMistakes(t *testing.T) {
	for _, tc := range []struct{ name, config, want string }{
		{"two credential kinds", "[profile p]\nrole_arn = " + testRoleARN + "\nsource_profile = q\ncredential_process = true\n", "only one of"},
		{"source_profile without role_arn", "[profile p]\nsource_profile = q\n[profile q]\naws_access_key_id = A\naws_secret_access_key = s\n", "need role_arn"},
		{"missing source profile", "[profile p]\nrole_arn = " + testRoleARN + "\nsource_profile = q\n", `source_profile "q" does not exist`},
		{"source profile without credentials", "[profile p]\nrole_arn = " + testRoleARN + "\nsource_profile = q\n[profile q]\nregion = x\n", `source_profile "q" holds no credentials`},
		{"loop", "[profile p]\nrole_arn = " + testRoleARN + "\nsource_profile = q\n[profile q]\nrole_arn = " + testRoleARN + "\nsource_profile = p\n", "source_profile loop: p → q → p"},
		{"unknown credential_source", "[profile p]\nrole_arn = " + testRoleARN + "\ncredential_source = Elsewhere\n", `credential_source "Elsewhere"`},
		{"credential_source Environment without keys", "[profile p]\nrole_arn = " + testRoleARN + "\ncredential_source = Environment\n", "credential_source = Environment"},
		{"EcsContainer without its variables", "[profile p]\nrole_arn = " + testRoleARN + "\ncredential_source = EcsContainer\n", "credential_source = EcsContainer"},
		{"mfa_serial", "[profile p]\nrole_arn = " + testRoleARN + "\nsource_profile = q\nmfa_serial = arn:aws:iam::1:mfa/u\n[profile q]\naws_access_key_id = A\naws_secret_access_key = s\n", "mfa_serial"},
		{"bad duration_seconds", "[profile p]\nrole_arn = " + testRoleARN + "\nsource_profile = q\nduration_seconds = 1h\n[profile q]\naws_access_key_id = A\naws_secret_access_key = s\n", "duration_seconds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := testEnv(t)
			writeAWSFile(t, env, "config", tc.config)
			_, _, err := Resolve(Config{Env: envFunc(env), Profile: "p"})
			noSecrets(t, err)
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
