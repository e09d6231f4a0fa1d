package cli

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"logbackup/storage"
)

func backendFlagSet(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	defineBackendFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs
}

// TestStorageURLFlags: BR's --s3.*, --gcs.* and --azblob.* flags become the
// URL parameters of the storage of their scheme, which the storage layer
// then reads like any parameter; a parameter the URL gives wins (BR
// reads the URL's query over its flags); flags of another scheme are
// ignored with a warning naming the flag, never its value.
func TestStorageURLFlags(t *testing.T) {
	fs := backendFlagSet(t, "--s3.region=eu-west-1", "--s3.endpoint=http://127.0.0.1:9000", "--s3.storage-class=STANDARD_IA",
		"--s3.sse=aws:kms", "--s3.sse-kms-key-id=key-1", "--s3.acl=private", "--s3.provider=ceph", "--s3.role-arn=arn:aws:iam::1:role/r",
		"--s3.external-id=EXT-SECRET", "--gcs.predefined-acl=publicRead", "--azblob.account-key=QUtFWQ==")
	u, warnings, err := storageURL(fs, "s3://bucket/prefix?Region=us-east-1&access_key=AK&secret-access-key=SK")
	if err != nil {
		t.Fatal(err)
	}
	loc, err := storage.ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	if loc.Region != "us-east-1" || loc.Endpoint != "http://127.0.0.1:9000" || loc.StorageClass != "STANDARD_IA" || loc.SSE != "aws:kms" ||
		loc.SSEKMSKeyID != "key-1" || loc.ACL != "private" || loc.Provider != "ceph" || loc.RoleARN != "arn:aws:iam::1:role/r" {
		t.Fatalf("merged location %+v", loc)
	}
	b, err := loc.Backend()
	if err != nil {
		t.Fatal(err)
	}
	if s3 := b.GetS3(); s3.ExternalId != "EXT-SECRET" || s3.AccessKey != "AK" || s3.SecretAccessKey != "SK" || s3.Bucket != "bucket" || s3.Prefix != "prefix" {
		t.Fatalf("backend %+v", s3)
	}
	all := strings.Join(warnings, "\n")
	for _, want := range []string{"--s3.region is ignored: the storage URL sets region", "--gcs.predefined-acl is ignored", "--azblob.account-key is ignored"} {
		if !strings.Contains(all, want) {
			t.Errorf("warnings %q lack %q", all, want)
		}
	}
	if strings.Contains(all, "QUtFWQ") || strings.Contains(all, "EXT-SECRET") {
		t.Fatalf("a warning repeats a flag's value: %q", all)
	}

	// gcs and azblob, under their other scheme names.
	fs = backendFlagSet(t, "--gcs.storage-class=NEARLINE", "--gcs.endpoint=http://127.0.0.1:1")
	u, _, err = storageURL(fs, "gs://b/p")
	if err != nil {
		t.Fatal(err)
	}
	if loc, err := storage.ParseURL(u); err != nil || loc.StorageClass != "NEARLINE" || loc.Endpoint != "http://127.0.0.1:1" {
		t.Fatalf("gcs: %v %+v", err, loc)
	}
	fs = backendFlagSet(t, "--azblob.account-name=acct", "--azblob.access-tier=Cool", "--azblob.encryption-scope=scope1", "--azblob.sas-token=sv=1&sig=S")
	u, _, err = storageURL(fs, "azure://c/p")
	if err != nil {
		t.Fatal(err)
	}
	loc, err = storage.ParseURL(u)
	if err != nil || loc.AccountName != "acct" || loc.StorageClass != "Cool" || loc.EncryptionScope != "scope1" {
		t.Fatalf("azblob: %v %+v", err, loc)
	}
	if b, _ := loc.Backend(); b.GetAzureBlobStorage().AccessSig != "sv=1&sig=S" {
		t.Fatalf("azblob sas token %q", b.GetAzureBlobStorage().AccessSig)
	}

	// No flags: the URL is left exactly as given, whatever it holds.
	raw := "s3://b/p?access-key=a+b&odd=%zz"
	if u, w, err := storageURL(backendFlagSet(t), raw); u != raw || len(w) != 0 || err != nil {
		t.Fatalf("untouched URL: %q %q %v", u, w, err)
	}
	// Local storage takes none of them.
	u, w, err := storageURL(backendFlagSet(t, "--s3.region=x"), "local:///tmp/b")
	if err != nil || u != "local:///tmp/b" || len(w) != 1 || !strings.Contains(w[0], "--s3.region is ignored") {
		t.Fatalf("local: %q %q %v", u, w, err)
	}
	if _, _, err := storageURL(backendFlagSet(t, "--s3.region=x"), "s3://b/p?a=%zz"); err == nil {
		t.Fatal("a malformed query was merged into")
	}
}

// TestSecondsFlag: --gc-ttl takes BR's integer seconds and Go durations.
func TestSecondsFlag(t *testing.T) {
	var d time.Duration
	f := secondsFlag{&d}
	for in, want := range map[string]time.Duration{"86400": 24 * time.Hour, "1800": 30 * time.Minute, "90m": 90 * time.Minute, "0": 0} {
		if err := f.Set(in); err != nil || d != want {
			t.Errorf("Set(%q): %v, %v", in, d, err)
		}
	}
	for _, in := range []string{"-1", "soon", "1e9999", "99999999999999"} {
		if err := f.Set(in); err == nil {
			t.Errorf("Set(%q) accepted", in)
		}
	}
	d = 1800 * time.Second
	if f.String() != "1800" {
		t.Errorf("String() = %q", f.String())
	}
}

// TestLogFile: --log-file gets the command's log at --log-level, with every
// credential redacted — here a failing metadata command on an S3 URL with
// keys, whose error is logged.
func TestLogFile(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "br.log")
	secret := "s3cr3t-in-the-log-test"
	url := "s3://bucket/prefix?endpoint=http://127.0.0.1:1&access-key=AKIALOGTEST&secret-access-key=" + secret
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if code := Main(ctx, []string{"log", "metadata", "-s", url, "--log-file", logPath}, &stdout, &stderr); code == 0 {
		t.Fatalf("metadata of an unreachable storage succeeded: %s", stdout.String())
	}
	if !strings.Contains(stderr.String(), "Detail BR log in "+logPath) {
		t.Fatalf("stderr does not name the log file: %q", stderr.String())
	}
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	got := string(b)
	for _, want := range []string{"command started", "command failed", "br stream metadata", "level=ERROR"} {
		if !strings.Contains(got, want) {
			t.Errorf("log lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, secret) || strings.Contains(stderr.String(), secret) {
		t.Fatalf("the secret reached the log or stderr:\n%s\n%s", got, stderr.String())
	}
	if st, err := os.Stat(logPath); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("log file mode: %v %v", st.Mode(), err)
	}

	// Levels: -L error keeps the failure and drops the info lines.
	quiet := filepath.Join(dir, "quiet.log")
	Main(ctx, []string{"log", "metadata", "-s", url, "--log-file", quiet, "-L", "error"}, &stdout, &stderr)
	if b, _ := os.ReadFile(quiet); !strings.Contains(string(b), "command failed") || strings.Contains(string(b), "command started") {
		t.Fatalf("-L error log:\n%s", b)
	}
	stderr.Reset()
	if code := Main(ctx, []string{"log", "metadata", "-s", url, "-L", "chatty"}, &stdout, &stderr); code == 0 || !strings.Contains(stderr.String(), "invalid --log-level") {
		t.Fatalf("bad level: exit %d, %q", code, stderr.String())
	}
	stderr.Reset()
	if code := Main(ctx, []string{"log", "metadata", "-s", url, "--log-file", dir}, &stdout, &stderr); code == 0 || !strings.Contains(stderr.String(), "cannot open --log-file") {
		t.Fatalf("unwritable log file: exit %d, %q", code, stderr.String())
	}

	// The writer redacts whatever a handler hands it.
	var buf bytes.Buffer
	lg := slog.New(slog.NewTextHandler(&redactingWriter{w: &buf}, nil))
	lg.Info("opening "+url, "url", url, "err", "GET "+url+": 403")
	if strings.Contains(buf.String(), secret) || !strings.Contains(buf.String(), "secret-access-key=redacted") {
		t.Fatalf("redacting writer: %s", buf.String())
	}
}
