package storage

import (
	"fmt"
	"strings"
	"testing"
)

func TestParseURL(t *testing.T) {
	cases := []struct {
		in   string
		want string // Redacted(); "" = must fail
	}{
		{"local:///data/backup", "local:///data/backup"},
		{"file:///data/backup/", "local:///data/backup"},
		{"mem://", "mem://"},
		{"s3://bk/log/p?endpoint=http://127.0.0.1:9000&region=us-east-1", "s3://bk/log/p?endpoint=http://127.0.0.1:9000&region=us-east-1"},
		{"s3://bk?access_key=A&secret_access_key=S&force_path_style=false", "s3://bk?force-path-style=false"},
		{"s3://bk/p?use_path_style=true&access-key=A&secret-access-key=S&session-token=T", "s3://bk/p"},
		{"gcs://bk/p", "gcs://bk/p"},
		{"gs://bk/p?credentials-file=/x.json", "gcs://bk/p"},
		{"azblob://ctr/p?account-name=acc&account-key=KEY", "azblob://ctr/p?account-name=acc"},
		{"local://relative/path", ""},
		{"local:", ""},
		{"ftp://host/x", ""},
		{"/no/scheme", ""},
		{"", ""},
		{"s3:///prefix", ""},
		{"s3://bk?endpoint=127.0.0.1:9000", ""},
		{"s3://bk?access-key=A", ""},
		{"s3://bk?bogus=1", ""},
		{"s3://bk?force-path-style=maybe", ""},
		{"s3://user:pass@bk/p", ""},
		{"azblob://ctr?account-key=K", ""},
		{"s3://bk/p?%zz", ""},
	}
	for _, c := range cases {
		loc, err := ParseURL(c.in)
		if c.want == "" {
			if err == nil {
				t.Errorf("ParseURL(%q) accepted: %s", c.in, loc)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseURL(%q): %v", c.in, err)
			continue
		}
		if got := loc.Redacted(); got != c.want {
			t.Errorf("ParseURL(%q).Redacted() = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestBackendRoundTrip(t *testing.T) {
	for _, in := range []string{
		"local:///data/backup",
		"s3://bk/log/p?endpoint=http://127.0.0.1:9000&region=us-east-1&access-key=AK&secret-access-key=SK&storage-class=STANDARD",
		"s3://bk?force-path-style=false&provider=ceph",
		"gcs://bk/p?storage-class=NEARLINE",
		"azblob://ctr/p?account-name=acc&account-key=KEY&endpoint=https://acc.blob.example",
	} {
		loc, err := ParseURL(in)
		if err != nil {
			t.Fatal(err)
		}
		be, err := loc.Backend()
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := be.Marshal()
		back, err := LocationFromBackend(be)
		if err != nil {
			t.Fatal(err)
		}
		if back.Redacted() != loc.Redacted() || back.secret != loc.secret {
			t.Errorf("round trip of %q: %s vs %s", in, back.Redacted(), loc.Redacted())
		}
		if len(raw) == 0 {
			t.Errorf("empty backend for %q", in)
		}
	}
	if _, err := (&Location{Scheme: "mem"}).Backend(); err == nil {
		t.Error("mem:// must not become a task backend")
	}
}

func TestSecretsNeverPrinted(t *testing.T) {
	const secret = "TOPSECRETvalue123"
	urls := []string{
		"s3://bk/p?access-key=AKID&secret-access-key=" + secret,
		"s3://bk/p?access_key=AKID&secret_access_key=" + secret + "&session_token=" + secret,
		"azblob://ctr/p?account-name=acc&account-key=" + secret,
	}
	for _, u := range urls {
		loc, err := ParseURL(u)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{loc.String(), loc.Redacted(), fmt.Sprintf("%v", loc), fmt.Sprintf("%v", *loc), fmt.Sprintf("%+v", loc), fmt.Sprintf("%#v", loc), fmt.Sprint(loc)} {
			if strings.Contains(s, secret) {
				t.Errorf("printed form leaks the secret: %s", s)
			}
		}
		if r := Redact(u); strings.Contains(r, secret) {
			t.Errorf("Redact leaks: %s", r)
		}
		// Parse errors must not echo the secret either.
		if _, err := ParseURL(u + "&bogus=1"); err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("parse error leaks or is missing: %v", err)
		}
	}
	if r := Redact("GET https://bk.s3.amazonaws.com/x?X-Amz-Credential=AKID%2F2024&X-Amz-Signature=abc"); strings.Contains(r, "abc") || strings.Contains(r, "AKID") {
		t.Errorf("Redact leaves a presigned credential: %s", r)
	}
}

func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"s3://bk/p?access-key=a&secret-access-key=b", "local:///x", "gcs://b", "azblob://c?account-name=a&account-key=k", "mem://"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		loc, err := ParseURL(raw)
		if err != nil {
			return
		}
		if loc.secret.secretAccessKey != "" && strings.Contains(loc.Redacted(), loc.secret.secretAccessKey) && len(loc.secret.secretAccessKey) > 6 {
			t.Fatalf("redacted form contains the secret: %s", loc.Redacted())
		}
		if loc.Scheme != "mem" {
			if _, err := loc.Backend(); err != nil && loc.Scheme != "gcs" {
				t.Fatalf("parsed %q but cannot build a backend: %v", raw, err)
			}
		}
	})
}
