package br

import (
	"context"
	"os"
	"strings"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"golang.org/x/oauth2/google"

	"logbackup/storage"
)

// credentialsTimeout bounds looking credentials up in the environment
// (which may ask a cloud metadata server).
const credentialsTimeout = 10 * time.Second

// applyCredentialPolicy is BR's -c/--send-credentials-to-tikv for the
// backend a task carries to the agents:
//
//   - send (BR's default): the URL's credentials go along; when the URL has
//     none, the ones br itself finds in its environment are looked up and
//     sent, as BR does — S3: the AWS default chain (AWS_ACCESS_KEY_ID…,
//     shared files, web identity, instance role; not with profile=, which
//     the agents read themselves); GCS: Application Default Credentials,
//     which must be a JSON key; Azure: AZURE_STORAGE_KEY (with
//     AZURE_STORAGE_ACCOUNT) or AZURE_STORAGE_SAS_TOKEN, else nothing.
//   - !send: the backend carries no credentials at all (S3 keys and
//     session token, GCS key, Azure account key and SAS token); each agent
//     uses its own environment's. What is not a credential stays: role-arn
//     and external-id (each agent assumes the role), Azure's encryption
//     key and scope (the data must be written as the restore will read it).
//
// Credentials never reach logs or errors.
func applyCredentialPolicy(ctx context.Context, env *Env, loc *storage.Location, b *brpb.StorageBackend, send bool) error {
	if !send {
		stripCredentials(b)
		env.log().Info("storage credentials withheld from the task (--send-credentials-to-tikv=false): agents use their own environment's")
		return nil
	}
	if loc.HasStaticCredentials() {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, credentialsTimeout)
	defer cancel()
	const hint = "put the credentials in the storage URL, or pass --send-credentials-to-tikv=false to let each agent use its own environment's"
	switch be := b.Backend.(type) {
	case *brpb.StorageBackend_S3:
		if loc.Profile != "" {
			return nil
		}
		creds, err := storage.FindAWSCredentials(cctx)
		if err != nil {
			return userError(hint, err, "no AWS credentials found in br's environment to send to the agents")
		}
		be.S3.AccessKey, be.S3.SecretAccessKey, be.S3.SessionToken = creds.AccessKeyID, creds.SecretAccessKey, creds.SessionToken
		env.log().Info("S3 credentials from br's environment sent with the task", "source", creds.Source)
	case *brpb.StorageBackend_Gcs:
		creds, err := google.FindDefaultCredentials(cctx, "https://www.googleapis.com/auth/devstorage.read_write")
		if err != nil {
			return userError(hint+" (gcs: credentials-file=)", err, "no Google credentials found in br's environment to send to the agents")
		}
		if len(creds.JSON) == 0 {
			// BR's rule: only a key can be sent; metadata-server
			// credentials belong to this machine.
			return userError(hint+" (gcs: credentials-file=)", nil,
				"br's Google credentials are not a key file and cannot be sent to the agents")
		}
		be.Gcs.CredentialsBlob = string(creds.JSON)
		env.log().Info("GCS credentials from br's environment sent with the task")
	case *brpb.StorageBackend_AzureBlobStorage:
		a := be.AzureBlobStorage
		account := a.AccountName
		if account == "" {
			account = os.Getenv("AZURE_STORAGE_ACCOUNT")
		}
		switch key, sas := os.Getenv("AZURE_STORAGE_KEY"), os.Getenv("AZURE_STORAGE_SAS_TOKEN"); {
		case key != "" && account != "":
			a.AccountName, a.SharedKey = account, key
			env.log().Info("Azure account key from br's environment sent with the task")
		case sas != "":
			a.AccessSig = strings.TrimPrefix(sas, "?")
			env.log().Info("Azure SAS token from br's environment sent with the task")
		}
	}
	return nil
}

// stripCredentials removes every credential from a backend.
func stripCredentials(b *brpb.StorageBackend) {
	switch be := b.Backend.(type) {
	case *brpb.StorageBackend_S3:
		be.S3.AccessKey, be.S3.SecretAccessKey, be.S3.SessionToken = "", "", ""
	case *brpb.StorageBackend_Gcs:
		be.Gcs.CredentialsBlob = ""
	case *brpb.StorageBackend_AzureBlobStorage:
		be.AzureBlobStorage.SharedKey, be.AzureBlobStorage.AccessSig = "", ""
	}
}
