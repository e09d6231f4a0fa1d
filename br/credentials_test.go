package br

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/storage"
)

// TestCredentialPolicy: with -c=false no backend keeps a credential (S3
// keys and session token, GCS key, Azure key and SAS token) while what the
// agents need to write the same data stays (role and external id, Azure's
// encryption key); with -c=true an Azure URL without a key takes br's
// AZURE_STORAGE_* variables, as BR sends them.
func TestCredentialPolicy(t *testing.T) {
	ctx := context.Background()
	env := NewEnv(nil)
	apply := func(raw string, send bool) *brpb.StorageBackend {
		t.Helper()
		loc, err := storage.ParseURL(raw)
		if err != nil {
			t.Fatal(err)
		}
		b, err := loc.Backend()
		if err != nil {
			t.Fatal(err)
		}
		if err := applyCredentialPolicy(ctx, env, loc, b, send); err != nil {
			t.Fatal(err)
		}
		return b
	}
	s3 := apply("s3://b/p?access-key=AK&secret-access-key=SK&session-token=ST&role-arn=arn:aws:iam::1:role/r&external-id=X", false).GetS3()
	if s3.AccessKey != "" || s3.SecretAccessKey != "" || s3.SessionToken != "" || s3.RoleArn == "" || s3.ExternalId != "X" {
		t.Fatalf("s3 after -c=false: %+v", s3)
	}
	if s3 := apply("s3://b/p?access-key=AK&secret-access-key=SK", true).GetS3(); s3.AccessKey != "AK" || s3.SecretAccessKey != "SK" {
		t.Fatalf("s3 after -c=true: %+v", s3)
	}
	key := filepath.Join(t.TempDir(), "key.json")
	if err := os.WriteFile(key, []byte(`{"type":"service_account"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if gcs := apply("gcs://b/p?credentials-file="+key, false).GetGcs(); gcs.CredentialsBlob != "" {
		t.Fatalf("gcs keeps its key")
	}
	az := apply("azblob://c/p?account-name=a&account-key=QUtFWQ%3D%3D&encryption-key=0123456789abcdef0123456789abcdef", false).GetAzureBlobStorage()
	if az.SharedKey != "" || az.EncryptionKey == nil {
		t.Fatalf("azblob after -c=false: key %q, encryption key %v", az.SharedKey, az.EncryptionKey)
	}
	if az := apply("azblob://c/p?account-name=a&sas-token=sv%3D1%26sig%3DS", false).GetAzureBlobStorage(); az.AccessSig != "" {
		t.Fatalf("azblob keeps its SAS token")
	}

	t.Setenv("AZURE_STORAGE_ACCOUNT", "envacct")
	t.Setenv("AZURE_STORAGE_KEY", "RU5WS0VZ")
	if az := apply("azblob://c/p", true).GetAzureBlobStorage(); az.AccountName != "envacct" || az.SharedKey != "RU5WS0VZ" {
		t.Fatalf("-c=true azblob: %+v", az)
	}
	if az := apply("azblob://c/p", false).GetAzureBlobStorage(); az.SharedKey != "" {
		t.Fatalf("-c=false azblob sent the environment's key")
	}
}
