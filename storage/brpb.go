package storage

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
)

// Backend converts the location to kvproto's StorageBackend, the form
// task info keeps in etcd and TiKV reads. Credentials given in the URL go
// along, as BR sends them to TiKV by default; they are never printed.
func (l *Location) Backend() (*brpb.StorageBackend, error) {
	if l == nil {
		return nil, errors.New("storage location is nil")
	}
	if err := l.validate(); err != nil {
		return nil, err
	}
	s := l.secret
	switch l.Scheme {
	case "local":
		return &brpb.StorageBackend{Backend: &brpb.StorageBackend_Local{Local: &brpb.Local{Path: l.Path}}}, nil
	case "s3":
		return &brpb.StorageBackend{Backend: &brpb.StorageBackend_S3{S3: &brpb.S3{
			Endpoint: l.Endpoint, Region: l.Region, Bucket: l.Bucket, Prefix: l.Prefix,
			StorageClass: l.StorageClass, Sse: l.SSE, SseKmsKeyId: l.SSEKMSKeyID, Acl: l.ACL,
			AccessKey: s.accessKey, SecretAccessKey: s.secretAccessKey, SessionToken: s.sessionToken,
			ForcePathStyle: l.ForcePathStyle, Provider: l.Provider, Profile: l.Profile,
			RoleArn: l.RoleARN, ExternalId: s.externalID, ObjectLockEnabled: l.ObjectLockEnabled,
		}}}, nil
	case "gcs":
		blob := s.gcsCredentialsBlob
		if blob == "" && s.gcsCredentialsFile != "" {
			// Agents on other hosts cannot read our file: ship its content,
			// as BR does.
			b, err := os.ReadFile(s.gcsCredentialsFile)
			if err != nil {
				return nil, fmt.Errorf("read gcs credentials-file: %w", err)
			}
			blob = string(b)
		}
		return &brpb.StorageBackend{Backend: &brpb.StorageBackend_Gcs{Gcs: &brpb.GCS{
			Endpoint: l.Endpoint, Bucket: l.Bucket, Prefix: l.Prefix, StorageClass: l.StorageClass,
			PredefinedAcl: l.ACL, CredentialsBlob: blob,
		}}}, nil
	case "azblob":
		a := &brpb.AzureBlobStorage{
			Endpoint: l.Endpoint, Bucket: l.Bucket, Prefix: l.Prefix, StorageClass: l.StorageClass,
			AccountName: l.AccountName, SharedKey: s.accountKey, AccessSig: s.sasToken,
			EncryptionScope: l.EncryptionScope,
		}
		if k := s.azureEncryptionKey; k != "" {
			// BR's form: the raw key and its SHA-256, both base64.
			sum := sha256.Sum256([]byte(k))
			a.EncryptionKey = &brpb.AzureCustomerKey{
				EncryptionKey:       base64.StdEncoding.EncodeToString([]byte(k)),
				EncryptionKeySha256: base64.StdEncoding.EncodeToString(sum[:]),
			}
		}
		return &brpb.StorageBackend{Backend: &brpb.StorageBackend_AzureBlobStorage{AzureBlobStorage: a}}, nil
	case "mem":
		return nil, errors.New("mem:// storage lives inside one process and cannot be a task's storage; use local://, s3://, gcs:// or azblob://")
	}
	return nil, fmt.Errorf("unsupported storage scheme %q", l.Scheme)
}

// LocationFromBackend converts kvproto's StorageBackend back to a
// location, validating it as ParseURL would. A backend read from etcd is
// input like any other: nil or partial messages give errors, not panics.
func LocationFromBackend(b *brpb.StorageBackend) (*Location, error) {
	var loc *Location
	switch be := b.GetBackend().(type) {
	case *brpb.StorageBackend_Local:
		loc = &Location{Scheme: "local", Path: be.Local.GetPath()}
	case *brpb.StorageBackend_S3:
		s := be.S3
		if s == nil {
			return nil, errors.New("s3 storage backend is empty")
		}
		loc = &Location{Scheme: "s3", Bucket: s.Bucket, Prefix: s.Prefix, Endpoint: s.Endpoint,
			Region: s.Region, ForcePathStyle: s.ForcePathStyle, StorageClass: s.StorageClass, SSE: s.Sse,
			SSEKMSKeyID: s.SseKmsKeyId, ACL: s.Acl, Provider: s.Provider, Profile: s.Profile, RoleARN: s.RoleArn,
			ObjectLockEnabled: s.ObjectLockEnabled,
			secret: secrets{accessKey: s.AccessKey, secretAccessKey: s.SecretAccessKey,
				sessionToken: s.SessionToken, externalID: s.ExternalId}}
	case *brpb.StorageBackend_Gcs:
		g := be.Gcs
		if g == nil {
			return nil, errors.New("gcs storage backend is empty")
		}
		loc = &Location{Scheme: "gcs", Bucket: g.Bucket, Prefix: g.Prefix, Endpoint: g.Endpoint,
			StorageClass: g.StorageClass, ACL: g.PredefinedAcl, secret: secrets{gcsCredentialsBlob: g.CredentialsBlob}}
	case *brpb.StorageBackend_AzureBlobStorage:
		a := be.AzureBlobStorage
		if a == nil {
			return nil, errors.New("azblob storage backend is empty")
		}
		loc = &Location{Scheme: "azblob", Bucket: a.Bucket, Prefix: a.Prefix, Endpoint: a.Endpoint,
			StorageClass: a.StorageClass, AccountName: a.AccountName, EncryptionScope: a.EncryptionScope,
			secret: secrets{accountKey: a.SharedKey, sasToken: a.AccessSig}}
		if ck := a.EncryptionKey; ck != nil {
			key, err := azureKeyFromBackend(ck)
			if err != nil {
				return nil, err
			}
			loc.secret.azureEncryptionKey = key
		}
	case nil:
		return nil, errors.New("storage backend is empty")
	default:
		return nil, fmt.Errorf("storage backend %T is not supported", be)
	}
	if err := loc.validate(); err != nil {
		return nil, err
	}
	return loc, nil
}

// azureKeyFromBackend decodes BR's customer-provided key and checks it
// against its hash, so a damaged key fails here and not as a 409 on the
// first read. Messages never repeat the key.
func azureKeyFromBackend(ck *brpb.AzureCustomerKey) (string, error) {
	raw, err := base64.StdEncoding.DecodeString(ck.EncryptionKey)
	if err != nil || len(raw) == 0 {
		return "", errors.New("azblob storage encryption key is not valid base64")
	}
	sum := sha256.Sum256(raw)
	if ck.EncryptionKeySha256 != "" && ck.EncryptionKeySha256 != base64.StdEncoding.EncodeToString(sum[:]) {
		return "", errors.New("azblob storage encryption key does not match its SHA-256")
	}
	return string(raw), nil
}
