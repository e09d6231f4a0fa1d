package storage_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"logbackup/storage"
	"logbackup/storage/storagetest"
	"logbackup/tests/azuretest"
	"logbackup/tests/s3test"
)

// big is over both backends' single-upload size, so it goes in parts.
var big = bytes.Repeat([]byte("0123456789abcdef"), (17<<20)/16+5)

// TestS3SecuritySettingsOnEveryWrite: sse, sse-kms-key-id, acl and
// storage-class reach S3 on every request that creates an object, single
// PutObject and multipart (CreateMultipartUpload) alike, read back from
// the headers the server received.
//
// Hand-written fault: what each request carried (sse, sse-kms-key-id, acl, storage class): MinIO does not
// report it, and refuses SSE-KMS without a KMS.
func TestS3SecuritySettingsOnEveryWrite(t *testing.T) {
	for _, c := range []struct {
		params string
		want   map[string]string
	}{
		{"&sse=aws:kms&sse-kms-key-id=arn:aws:kms:us-east-1:1:key/k1&acl=bucket-owner-full-control&storage-class=STANDARD_IA",
			map[string]string{"X-Amz-Server-Side-Encryption": "aws:kms", "X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id": "arn:aws:kms:us-east-1:1:key/k1",
				"X-Amz-Acl": "bucket-owner-full-control", "X-Amz-Storage-Class": "STANDARD_IA"}},
		{"&sse=aes256&acl=private&storage-class=GLACIER_IR",
			map[string]string{"X-Amz-Server-Side-Encryption": "AES256", "X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id": "",
				"X-Amz-Acl": "private", "X-Amz-Storage-Class": "GLACIER_IR"}},
	} {
		srv := s3test.Start(t, "bk")
		loc, err := storage.ParseURL(srv.URL("bk", "p") + c.params)
		if err != nil {
			t.Fatal(err)
		}
		// Through the task's StorageBackend, as an agent opens it.
		be, err := loc.Backend()
		if err != nil {
			t.Fatal(err)
		}
		s, err := storage.OpenBackend(context.Background(), be, bigRetry)
		if err != nil {
			t.Fatal(err)
		}
		mustWriteT(t, s, "small", []byte("x"))
		mustWriteT(t, s, "big", big)
		if err := storage.CheckWritable(context.Background(), s); err != nil {
			t.Fatal(err)
		}
		s.Close()
		creates := 0
		for _, r := range srv.Log() {
			isPut := r.Method == http.MethodPut && r.Query.Get("partNumber") == ""
			_, isCreateMultipart := r.Query["uploads"]
			if !isPut && !(r.Method == http.MethodPost && isCreateMultipart) {
				continue
			}
			creates++
			for h, v := range c.want {
				if got := r.Header.Get(h); got != v {
					t.Errorf("%s %s: %s = %q, want %q", r.Method, r.Path, h, got, v)
				}
			}
		}
		if creates != 3 { // small, the probe, CreateMultipartUpload of big
			t.Errorf("%d object-creating requests, want 3", creates)
		}
	}
}

// TestS3AssumeRole: role-arn and external-id make the storage call STS
// AssumeRole (signed with the URL's own keys) with that role and external
// id, and sign S3 requests with the role's temporary credentials.
//
// Hand-written fault: STS AssumeRole with role-arn and external-id, as AWS checks them; MinIO ignores both
// (tests/realstorage uses its AssumeRole for a user without PutObject).
func TestS3AssumeRole(t *testing.T) {
	srv := s3test.Start(t, "bk")
	t.Setenv("AWS_ENDPOINT_URL_STS", srv.Endpoint())
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	const role, ext = "arn:aws:iam::123456789012:role/log-backup", "ext-id-42"
	loc, err := storage.ParseURL(srv.URL("bk", "p") + "&role-arn=" + url.QueryEscape(role) + "&external-id=" + ext)
	if err != nil {
		t.Fatal(err)
	}
	be, err := loc.Backend()
	if err != nil {
		t.Fatal(err)
	}
	if be.GetS3().RoleArn != role || be.GetS3().ExternalId != ext {
		t.Fatalf("backend lost the role: %q %q", be.GetS3().RoleArn, be.GetS3().ExternalId)
	}
	s, err := storage.OpenBackend(context.Background(), be, fastRetry)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mustWriteT(t, s, "obj", []byte("x"))
	mustRead(t, s, "obj", []byte("x"))
	calls := srv.STSCalls()
	if len(calls) != 1 || calls[0].Get("Action") != "AssumeRole" || calls[0].Get("RoleArn") != role || calls[0].Get("ExternalId") != ext {
		t.Fatalf("STS calls: %v", calls)
	}
	n := 0
	for _, r := range srv.Log() {
		auth := r.Header.Get("Authorization")
		if r.Form != nil {
			if !strings.Contains(auth, "Credential="+s3test.AccessKey+"/") {
				t.Errorf("AssumeRole not signed with the URL's key: %q", auth)
			}
			continue
		}
		n++
		if !strings.Contains(auth, "Credential="+s3test.AssumedAccessKey+"/") || r.Header.Get("X-Amz-Security-Token") != s3test.AssumedSessionToken {
			t.Errorf("%s %s not signed with the role's credentials: %q", r.Method, r.Path, auth)
		}
	}
	if n < 2 {
		t.Fatalf("%d S3 requests", n)
	}
}

// TestAzureSecuritySettingsOnEveryWrite: access-tier, encryption-scope
// and encryption-key reach Azure on every request that writes, single
// Put Blob and Put Block/Put Block List alike.
//
// Hand-written fault: what each request carried (access tier, encryption scope, customer key headers):
// Azurite does not report it.
func TestAzureSecuritySettingsOnEveryWrite(t *testing.T) {
	const key = "0123456789abcdef0123456789ABCDEF" // 32 bytes: AES-256
	for _, c := range []struct {
		params string
		want   map[string]string // header → value on every write ("*" any non-empty)
		tier   string
	}{
		{"&access-tier=cool&encryption-scope=scope-1", map[string]string{"x-ms-encryption-scope": "scope-1"}, "Cool"},
		{"&access-tier=Cold&encryption-key=" + key, map[string]string{"x-ms-encryption-key": "*",
			"x-ms-encryption-key-sha256": "*", "x-ms-encryption-algorithm": "AES256"}, "Cold"},
	} {
		srv := azuretest.Start(t, "ctr")
		loc, err := storage.ParseURL(srv.URL("ctr", "p") + c.params)
		if err != nil {
			t.Fatal(err)
		}
		be, err := loc.Backend()
		if err != nil {
			t.Fatal(err)
		}
		s, err := storage.OpenBackend(context.Background(), be, bigRetry)
		if err != nil {
			t.Fatal(err)
		}
		mustWriteT(t, s, "small", []byte("x"))
		mustWriteT(t, s, "big", big)
		mustRead(t, s, "big", big)
		if err := storage.CheckWritable(context.Background(), s); err != nil {
			t.Fatal(err)
		}
		s.Close()
		ops := map[string]int{}
		for _, r := range srv.Requests() {
			if r.Op != "PutBlob" && r.Op != "PutBlock" && r.Op != "PutBlockList" {
				continue
			}
			ops[r.Op]++
			for h, v := range c.want {
				if got := r.Header.Get(h); got == "" || (v != "*" && got != v) {
					t.Errorf("%s: %s = %q, want %q", r.Op, h, got, v)
				}
			}
			if tier := r.Header.Get("x-ms-access-tier"); r.Op != "PutBlock" && tier != c.tier {
				t.Errorf("%s: access tier %q, want %q", r.Op, tier, c.tier)
			}
		}
		if fmt.Sprint(ops) != "map[PutBlob:2 PutBlock:3 PutBlockList:1]" {
			t.Errorf("writes made %v", ops)
		}
		for _, name := range []string{"p/small", "p/big"} {
			b, ok := srv.Blob("ctr", name)
			if !ok || b.AccessTier != c.tier || (c.want["x-ms-encryption-scope"] != "" && b.EncryptionScope != "scope-1") ||
				(c.want["x-ms-encryption-key"] != "") != (b.KeySHA256 != "") {
				t.Errorf("%s stored as %+v", name, b)
			}
		}
	}
}

// TestConformanceAzureCustomerKey runs the whole suite with a
// customer-provided key: the fake refuses any read of such a blob
// without the key, so every read path must send it.
//
// Hand-written fault: a server that requires the customer-provided key on every read and refuses a wrong one;
// Azurite was not shown to enforce customer-provided keys.
func TestConformanceAzureCustomerKey(t *testing.T) {
	srv := azuretest.Start(t)
	n := 0
	storagetest.Run(t, func(t *testing.T) storage.Storage {
		n++
		ctr := fmt.Sprintf("cpk%d", n)
		srv.CreateContainer(ctr)
		return open(t, srv.URL(ctr, "p")+"&encryption-key=0123456789abcdef0123456789ABCDEF", bigRetry)
	})
}

// TestSettingsThatCannotBeHonouredAreErrors: a setting the backend
// cannot apply fails at parse time, never silently.
func TestSettingsThatCannotBeHonouredAreErrors(t *testing.T) {
	for _, u := range []string{
		"s3://bk?sse-kms-key-id=k",        // a KMS key without KMS encryption
		"s3://bk?sse=rot13",               // no such encryption
		"s3://bk?external-id=x",           // an external id without a role
		"azblob://c?access-tier=Premium",  // no such tier for block blobs
		"azblob://c?encryption-key=short", // not an AES-256 key
		"azblob://c?encryption-key=0123456789abcdef0123456789ABCDEF&encryption-scope=s",
	} {
		if _, err := storage.ParseURL(u); err == nil {
			t.Errorf("%s accepted", u)
		}
	}
}
