package storage

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
)

func TestParseURL(t *testing.T) {
	cases := []struct {
		in   string
		want string // Redacted()
	}{
		{"local:///data/backup", "local:///data/backup"},
		{"file:///data/backup/", "local:///data/backup"},
		{"file:///data//x/../backup", "local:///data/backup"},
		{"mem://", "mem://"},
		{"local:///data/odd%3Fname%23x%25y%20z", "local:///data/odd%3Fname%23x%25y%20z"},
		{"s3://bk?region=a&region=a&Region=a", "s3://bk?region=a"},
		{"s3://bk/log/p?endpoint=http://127.0.0.1:9000&region=us-east-1", "s3://bk/log/p?endpoint=http://127.0.0.1:9000&region=us-east-1"},
		{"s3://bk/log/p/?endpoint=http%3A%2F%2F127.0.0.1%3A9000%2F", "s3://bk/log/p?endpoint=http://127.0.0.1:9000"},
		{"S3://bk?access_key=A&secret_access_key=S&force_path_style=false", "s3://bk?force-path-style=false"},
		{"s3://bk/p?use_path_style=true&Access-Key=A&secret-access-key=S&session-token=T", "s3://bk/p"},
		{"s3://bk/p?s3ForcePathStyle=false", "s3://bk/p?force-path-style=false"},
		{"s3://bk/p?provider=alibaba", "s3://bk/p?force-path-style=false&provider=alibaba"},
		{"s3://bk/p?use-accelerate-endpoint=true", "s3://bk/p?force-path-style=false"},
		{"s3://bk/p?sse=aws:kms&sse_kms_key_id=k1&acl=private&storage_class=GLACIER_IR&profile=prod",
			"s3://bk/p?acl=private&profile=prod&sse=aws:kms&sse-kms-key-id=k1&storage-class=GLACIER_IR"},
		{"s3://bk/p?role-arn=arn:aws:iam::1:role/r&external-id=X", "s3://bk/p?role-arn=arn:aws:iam::1:role/r"},
		{"s3://bk/p?profile=p&access-key=A", "s3://bk/p?profile=p"}, // BR: a profile may hold the secret
		{"s3://bk/with%20space?region=x", "s3://bk/with%20space?region=x"},
		{"gcs://bk/p", "gcs://bk/p"},
		{"gs://bk/p?credentials-file=/x.json&predefined-acl=private", "gcs://bk/p?predefined-acl=private"},
		{"gcs://bk?endpoint=https://storage.example:8443/storage/v1/", "gcs://bk?endpoint=https://storage.example:8443/storage/v1"},
		{"azblob://ctr/p?account-name=acc&account-key=KEY", "azblob://ctr/p?account-name=acc"},
		{"azure://ctr/p?sas-token=sv%3D1%26sig%3Dabc&access_tier=Cool", "azblob://ctr/p?access-tier=Cool"},
	}
	for _, c := range cases {
		loc, err := ParseURL(c.in)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", c.in, err)
			continue
		}
		if got := loc.Redacted(); got != c.want {
			t.Errorf("ParseURL(%q).Redacted() = %q, want %q", c.in, got, c.want)
		}
		// The redacted URL is itself a valid URL for the same place.
		again, err := ParseURL(loc.Redacted())
		if err != nil || again.Redacted() != loc.Redacted() {
			t.Errorf("re-parsing %q: %v, %v", loc.Redacted(), again, err)
		}
	}
}

func TestParseURLRejects(t *testing.T) {
	cases := []struct{ in, why string }{
		{"", "empty"},
		{"   ", "blank"},
		{"/no/scheme", "no scheme"},
		{"ftp://host/x", "unknown scheme"},
		{"noop://", "unknown scheme"},
		{"local://relative/path", "relative local path"},
		{"local:relative", "relative local path"},
		{"file:", "no path"},
		{"local://", "no path"},
		{"mem://bucket", "mem with a bucket"},
		{"s3:///prefix", "missing bucket"},
		{"s3:bk", "missing bucket"},
		{"gcs://", "missing bucket"},
		{"azblob:///p", "missing container"},
		{"s3://bk?endpoint=127.0.0.1:9000", "endpoint without scheme"},
		{"s3://bk?endpoint=ftp://host", "endpoint not http"},
		{"s3://bk?endpoint=http://", "endpoint without host"},
		{"s3://bk?endpoint=http://u:p@host", "endpoint with user info"},
		{"s3://bk?endpoint=http://host/?x=1", "endpoint with a query"},
		{"s3://bk?endpoint=http://host:port", "endpoint with a bad port"},
		{"s3://bk?access-key=A", "half a key pair"},
		{"s3://bk?secret-access-key=S", "half a key pair"},
		{"s3://bk?session-token=T", "token without keys"},
		{"s3://bk?external-id=X", "external id without role"},
		{"s3://bk?sse=rot13", "unknown sse"},
		{"s3://bk?sse-kms-key-id=k", "kms key without kms"},
		{"s3://bk?access_key=A&access-key=B&secret-access-key=S", "one parameter, two values"},
		{"s3://bk?force-path-style=maybe", "bad boolean"},
		{"s3://user:pass@bk/p", "user info"},
		{"s3://bk/p#frag", "fragment"},
		{"s3://bk/p?%zz", "malformed query"},
		{"s3://bk/p?a=1;b=2", "malformed query"},
		{"s3://b k/p", "invalid URL"},
		{"azblob://ctr?account-key=K", "key without account"},
		{"azblob://ctr?access-tier=Premium", "a tier a block blob cannot take"},
		{"azblob://ctr?encryption-key=short", "an encryption key that is not 256 bits"},
		{"azblob://ctr?encryption-key=0123456789abcdef0123456789abcdef&encryption-scope=s", "key and scope together"},
	}
	for _, c := range cases {
		if loc, err := ParseURL(c.in); err == nil {
			t.Errorf("ParseURL(%q) accepted (%s): %s", c.in, c.why, loc)
		}
	}
}

// TestParseURLWarnings: unknown parameters are ignored, as BR ignores
// them, with a warning that names the parameter and never its value.
func TestParseURLWarnings(t *testing.T) {
	cases := []struct {
		in, want string // want: Redacted()
		warnings []string
	}{
		{"s3://bk?bogus=1", "s3://bk", []string{`ignored unknown parameter "bogus" of the s3 storage URL`}},
		{"s3://bk?acess-key=SECRETVALUE&secret-access-key=S&access-key=A", "s3://bk",
			[]string{`ignored unknown parameter "acess-key" of the s3 storage URL`}},
		{"gcs://bk?account-name=x", "gcs://bk", []string{`ignored unknown parameter "account-name" of the gcs storage URL`}},
		{"local:///x?endpoint=http://h", "local:///x", []string{`ignored unknown parameter "endpoint" of the local storage URL`}},
		{"mem://?zz=1", "mem://", []string{`ignored unknown parameter "zz" of the mem storage URL`}},
		// A pasted secret arrives as a parameter name with no value.
		{"s3://bk?AKIAPASTEDSECRET&b=1", "s3://bk", []string{`ignored a malformed parameter of the s3 storage URL`,
			`ignored unknown parameter "b" of the s3 storage URL`}},
		{"s3://bk?x%2Fy%3DSECRETVALUE=2", "s3://bk", []string{`ignored a malformed parameter of the s3 storage URL`}},
		{"s3://bk?region=r", "s3://bk?region=r", nil},
	}
	for _, c := range cases {
		loc, err := ParseURL(c.in)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", c.in, err)
			continue
		}
		if loc.Redacted() != c.want || fmt.Sprint(loc.Warnings()) != fmt.Sprint(c.warnings) {
			t.Errorf("ParseURL(%q) = %s, warnings %q; want %s, %q", c.in, loc.Redacted(), loc.Warnings(), c.want, c.warnings)
		}
		for _, w := range loc.Warnings() {
			if strings.Contains(w, "SECRET") {
				t.Errorf("warning repeats a value: %q", w)
			}
		}
	}
}

func TestBackendRoundTrip(t *testing.T) {
	creds := filepath.Join(t.TempDir(), "gcs.json")
	if err := os.WriteFile(creds, []byte(`{"type":"service_account"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, in := range []string{
		"local:///data/backup",
		"s3://bk/log/p?endpoint=http://127.0.0.1:9000&region=us-east-1&access-key=AK&secret-access-key=SK&storage-class=STANDARD",
		"s3://bk?force-path-style=false&provider=ceph&session-token=T&access-key=AK&secret-access-key=SK",
		"s3://bk/p?role-arn=arn:aws:iam::1:role/r&external-id=EXT&sse=aws:kms&sse-kms-key-id=K&acl=private&profile=x&object-lock-enabled=true",
		"gcs://bk/p?storage-class=NEARLINE&endpoint=https://gcs.example&predefined-acl=private",
		"gcs://bk/p?credentials-file=" + creds,
		"azblob://ctr/p?account-name=acc&account-key=KEY&endpoint=https://acc.blob.example&access-tier=Cool",
		"azblob://ctr/p?sas-token=sv%3D1%26sig%3Dabc&encryption-scope=scope1",
		"azblob://ctr/p?account-name=acc&account-key=KEY&encryption-key=0123456789abcdef0123456789abcdef&access-tier=cold",
	} {
		loc, err := ParseURL(in)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		be, err := loc.Backend()
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		// Through the wire form, as etcd stores it.
		raw, err := be.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		var decoded brpb.StorageBackend
		if err := decoded.Unmarshal(raw); err != nil {
			t.Fatal(err)
		}
		back, err := LocationFromBackend(&decoded)
		if err != nil {
			t.Fatalf("%s: back: %v", in, err)
		}
		want := *loc
		if want.secret.gcsCredentialsFile != "" { // shipped as content
			b, _ := os.ReadFile(creds)
			want.secret = secrets{gcsCredentialsBlob: string(b)}
		}
		if back.Redacted() != loc.Redacted() || back.secret != want.secret || fmt.Sprintf("%+v", *back) != fmt.Sprintf("%+v", want) {
			t.Errorf("round trip of %q: %s vs %s", in, back.Redacted(), loc.Redacted())
		}
		if *back != want {
			t.Errorf("round trip of %q changed a field", in)
		}
	}
	if _, err := (&Location{Scheme: "mem"}).Backend(); err == nil || !strings.Contains(err.Error(), "mem://") {
		t.Errorf("mem:// must not become a task backend: %v", err)
	}
	if _, err := ParseURL("gcs://bk?credentials-file=/nonexistent/x.json"); err != nil {
		t.Fatal(err) // the file is read only when the backend is built
	}
	loc, _ := ParseURL("gcs://bk?credentials-file=/nonexistent/x.json")
	if _, err := loc.Backend(); err == nil {
		t.Error("unreadable credentials-file accepted")
	}
}

func TestLocationFromBackendRejects(t *testing.T) {
	for _, be := range []*brpb.StorageBackend{
		nil,
		{},
		{Backend: &brpb.StorageBackend_Local{}},
		{Backend: &brpb.StorageBackend_Local{Local: &brpb.Local{Path: "rel/path"}}},
		{Backend: &brpb.StorageBackend_S3{}},
		{Backend: &brpb.StorageBackend_S3{S3: &brpb.S3{}}},
		{Backend: &brpb.StorageBackend_S3{S3: &brpb.S3{Bucket: "bk", Endpoint: "no-scheme:9000"}}},
		{Backend: &brpb.StorageBackend_S3{S3: &brpb.S3{Bucket: "bk", AccessKey: "only-half"}}},
		{Backend: &brpb.StorageBackend_Gcs{}},
		{Backend: &brpb.StorageBackend_Gcs{Gcs: &brpb.GCS{}}},
		{Backend: &brpb.StorageBackend_AzureBlobStorage{}},
		{Backend: &brpb.StorageBackend_AzureBlobStorage{AzureBlobStorage: &brpb.AzureBlobStorage{Bucket: "c", EncryptionKey: &brpb.AzureCustomerKey{}}}},
		{Backend: &brpb.StorageBackend_Noop{Noop: &brpb.Noop{}}},
		{Backend: &brpb.StorageBackend_Hdfs{Hdfs: &brpb.HDFS{Remote: "hdfs://x"}}},
	} {
		if loc, err := LocationFromBackend(be); err == nil {
			t.Errorf("LocationFromBackend(%v) accepted: %s", be, loc)
		}
	}
}

func TestSecretsNeverPrinted(t *testing.T) {
	const secret = "TOPSECRETvalue123"
	urls := []string{
		"s3://bk/p?access-key=AKID&secret-access-key=" + secret,
		"s3://bk/p?access_key=AKID&secret_access_key=" + secret + "&session_token=" + secret,
		"s3://bk/p?role-arn=r&external-id=" + secret,
		"azblob://ctr/p?account-name=acc&account-key=" + secret,
		"azblob://ctr/p?sas-token=sv%3D1%26sig%3D" + secret,
		"azblob://ctr/p?account-name=acc&account-key=k&encryption-key=" + secret + "-0123456789abcd",
	}
	for _, u := range urls {
		loc, err := ParseURL(u)
		if err != nil {
			t.Fatal(err)
		}
		if !loc.HasStaticCredentials() && !strings.Contains(u, "external-id") {
			t.Errorf("%s: credentials not recognised", u)
		}
		be, err := loc.Backend()
		if err != nil {
			t.Fatal(err)
		}
		back, _ := LocationFromBackend(be)
		for _, s := range []string{loc.String(), loc.Redacted(), fmt.Sprintf("%v", loc), fmt.Sprintf("%v", *loc),
			fmt.Sprintf("%+v", loc), fmt.Sprintf("%+v", *loc), fmt.Sprintf("%#v", loc), fmt.Sprintf("%#v", *loc),
			fmt.Sprint(loc), fmt.Sprintf("%s", []*Location{loc}), back.String(), Redact(u)} {
			if strings.Contains(s, secret) {
				t.Errorf("printed form leaks the secret: %s", s)
			}
		}
		// Errors and warnings about the URL must not echo the secret either.
		for _, bad := range []string{u + "&%zz", u + "#frag", strings.Replace(u, "://", "://user:"+secret+"@", 1)} {
			if _, err := ParseURL(bad); err == nil || strings.Contains(err.Error(), secret) {
				t.Errorf("parse error leaks or is missing for %q: %v", Redact(bad), err)
			}
		}
		for _, odd := range []string{u + "&bogus=1", u + "&" + secret + "/+x", u + "&" + secret + "Tail", u + "&x=" + secret} {
			loc, err := ParseURL(odd)
			if err != nil || len(loc.Warnings()) != 1 || strings.Contains(strings.Join(loc.Warnings(), " "), secret) {
				t.Errorf("warning leaks or is missing for %q: %v, %q", Redact(odd), err, loc.Warnings())
			}
		}
	}
	for _, s := range []string{
		"GET https://bk.s3.amazonaws.com/x?X-Amz-Credential=AKID%2F2024&X-Amz-Signature=" + secret,
		"https://acc.blob.core.windows.net/c?sv=2020&sig=" + secret,
		"s3://bk?ACCESS_KEY_ID=x&SecretKey=" + secret,
		"http://user:" + secret + "@host/x",
	} {
		if r := Redact(s); strings.Contains(r, secret) {
			t.Errorf("Redact leaves a credential: %s", r)
		}
	}
}

// FuzzParseURL: no input makes ParseURL panic or hang; what it accepts
// redacts every credential, re-parses to itself and survives the
// StorageBackend round trip; warnings never repeat a credential. Seeds:
// the f.Add list and testdata/fuzz/FuzzParseURL (real BR URLs).
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"s3://bk/p?access-key=a&secret-access-key=b", "local:///x", "gcs://b", "azblob://c?account-name=a&account-key=k", "mem://",
		"s3://bk/p?endpoint=http://h:1&region=r&sse=aws:kms&sse-kms-key-id=k", "azblob://c?sas-token=sig%3Dx", "local:///a%3Fb%23c",
		"azblob://c/p?account-name=a&account-key=k&encryption-key=0123456789abcdef0123456789abcdef&access-tier=cool",
		"s3://bk/p?unknown=1&AKIAPASTED", "s3://bk/p?role-arn=arn:aws:iam::1:role/r&external-id=secret-ext-id"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		type result struct {
			loc *Location
			err error
		}
		done := make(chan result, 1)
		go func() {
			loc, err := ParseURL(raw)
			done <- result{loc, err}
		}()
		var r result
		select {
		case r = <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("ParseURL(%q) did not return within 10s", raw)
		}
		loc, err := r.loc, r.err
		if err != nil {
			return
		}
		red := loc.Redacted()
		s := loc.secret
		for _, sec := range []string{s.secretAccessKey, s.accountKey, s.sessionToken, s.sasToken, s.externalID, s.azureEncryptionKey} {
			// Short secrets may occur by chance in the bucket or prefix.
			if len(sec) <= 8 || strings.Contains(loc.Bucket+loc.Prefix+loc.Endpoint+loc.RoleARN+loc.AccountName, sec) {
				continue
			}
			if strings.Contains(red, sec) {
				t.Fatalf("redacted form %q contains a secret", red)
			}
			if w := strings.Join(loc.Warnings(), "\n"); strings.Contains(w, sec) {
				t.Fatalf("warnings %q contain a secret", w)
			}
		}
		again, err := ParseURL(red)
		if err != nil {
			t.Fatalf("redacted form %q of %q does not parse: %v", red, raw, err)
		}
		if again.Redacted() != red || len(again.Warnings()) != 0 {
			t.Fatalf("redacted form not stable: %q then %q (warnings %q)", red, again.Redacted(), again.Warnings())
		}
		if loc.Scheme == "mem" || loc.secret.gcsCredentialsFile != "" {
			return
		}
		be, err := loc.Backend()
		if err != nil {
			t.Fatalf("parsed %q but cannot build a backend: %v", raw, err)
		}
		back, err := LocationFromBackend(be)
		if err != nil || back.Redacted() != red || back.secret != loc.secret {
			t.Fatalf("backend round trip of %q: %v, %v", raw, back, err)
		}
	})
}
