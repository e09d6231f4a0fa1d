package storage

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	azblobblob "github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"gocloud.dev/blob"

	"logbackup/storage/internal/azdriver"
)

// azureBackend writes through the azblob SDK directly, under our retry
// loop. gocloud's azureblob writer (v0.47.0) set its pipe reader to nil
// when an upload failed and then called Close on it, so any failed upload
// (a 500, a refused connection) killed the process with SIGSEGV. Reads,
// lists and deletes go through our own driver (storage/internal/azdriver)
// over the same client, which sends the customer-provided key itself.
type azureBackend struct {
	client *container.Client
	prefix string // "" or "prefix/"
	tier   *azblobblob.AccessTier
	scope  *azblobblob.CPKScopeInfo
	cpk    *azblobblob.CPKInfo
}

// Azure uploads: one Put Blob up to this size, above it Put Block in
// blocks of azureBlockSize and one Put Block List (as S3's multipart).
const (
	azureSingleUploadMax = 16 << 20
	azureBlockSize       = 8 << 20
	azureUploadParallel  = 4
)

// azureTiers maps the access tiers a block blob can take, in any case, to
// Azure's spelling.
var azureTiers = map[string]string{"hot": "Hot", "cool": "Cool", "cold": "Cold", "archive": "Archive"}

func openAzure(loc *Location) (*blob.Bucket, *azureBackend, func(), error) {
	account := loc.AccountName
	if account == "" {
		account = os.Getenv("AZURE_STORAGE_ACCOUNT")
	}
	svc := loc.Endpoint
	if svc == "" {
		if account == "" {
			return nil, nil, nil, fmt.Errorf("azure storage needs an endpoint or an account name (account-name=, or AZURE_STORAGE_ACCOUNT)")
		}
		svc = "https://" + account + ".blob.core.windows.net"
	}
	containerURL := strings.TrimRight(svc, "/") + "/" + loc.Bucket
	httpClient := newHTTPClient()
	opts := &container.ClientOptions{ClientOptions: azcore.ClientOptions{
		Transport: httpClient,
		// Our retry loop retries, observably and with per-attempt
		// deadlines; the SDK's own would multiply the attempts.
		Retry: policy.RetryOptions{MaxRetries: -1},
	}}
	var client *container.Client
	var err error
	sasToken, accountKey := loc.secret.sasToken, loc.secret.accountKey
	if sasToken == "" && accountKey == "" {
		// BR's environment, then Azure's default chain.
		if k := os.Getenv("AZURE_STORAGE_KEY"); k != "" && account != "" {
			accountKey = k
		} else if t := os.Getenv("AZURE_STORAGE_SAS_TOKEN"); t != "" {
			sasToken = strings.TrimPrefix(t, "?")
		}
	}
	switch {
	case sasToken != "":
		client, err = container.NewClientWithNoCredential(containerURL+"?"+sasToken, opts)
	case accountKey != "":
		if account == "" {
			return nil, nil, nil, fmt.Errorf("%w: azure account-key needs account-name", ErrCredentials)
		}
		cred, cerr := azblob.NewSharedKeyCredential(account, accountKey)
		if cerr != nil {
			// The SDK's message may quote the key; say only what is wrong.
			return nil, nil, nil, fmt.Errorf("%w: azure account-key is not valid base64", ErrCredentials)
		}
		client, err = container.NewClientWithSharedKeyCredential(containerURL, cred, opts)
	default:
		cred, cerr := azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{
			ClientOptions: azcore.ClientOptions{Transport: httpClient},
		})
		if cerr != nil {
			return nil, nil, nil, fmt.Errorf("%w: azure (set account-key, sas-token or AZURE_* variables): %w", ErrCredentials, cerr)
		}
		client, err = container.NewClient(containerURL, azureCredentialGuard{cred}, opts)
	}
	if err != nil {
		// The SDK's message may quote the URL, SAS token included.
		return nil, nil, nil, fmt.Errorf("azure client: %s", Redact(err.Error()))
	}
	be := &azureBackend{client: client}
	if loc.Prefix != "" {
		be.prefix = loc.Prefix + "/"
	}
	if loc.StorageClass != "" {
		tier := azblobblob.AccessTier(azureTiers[strings.ToLower(loc.StorageClass)])
		be.tier = &tier
	}
	if loc.EncryptionScope != "" {
		scope := loc.EncryptionScope
		be.scope = &azblobblob.CPKScopeInfo{EncryptionScope: &scope}
	}
	if k := loc.secret.azureEncryptionKey; k != "" {
		key := base64.StdEncoding.EncodeToString([]byte(k))
		sum := sha256.Sum256([]byte(k))
		hash := base64.StdEncoding.EncodeToString(sum[:])
		alg := azblobblob.EncryptionAlgorithmTypeAES256
		be.cpk = &azblobblob.CPKInfo{EncryptionKey: &key, EncryptionKeySHA256: &hash, EncryptionAlgorithm: &alg}
	}
	// Our own driver, not gocloud's azureblob: that one links Google's
	// API client and auth libraries (gocloud's user-agent helper), whose
	// package init held binary pages of the agent's idle RSS (issue 19).
	b, err := azdriver.OpenBucket(client, azdriver.Options{CPK: be.cpk})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("azure bucket: %w", err)
	}
	return b, be, httpClient.CloseIdleConnections, nil
}

// key is the blob name the driver reads for name: the bucket prefix,
// then the driver's escaping of the characters Azure mishandles.
func (a *azureBackend) key(name string) string { return azdriver.EscapeKey(a.prefix + name) }

// write uploads data as one block blob, whole or not at all: a block
// upload is only visible once Put Block List commits it.
func (a *azureBackend) write(ctx context.Context, name string, data []byte) error {
	if len(data) <= azureSingleUploadMax {
		return a.putBlob(ctx, name, data)
	}
	n := (len(data) + azureBlockSize - 1) / azureBlockSize
	return a.putBlocks(ctx, name, func(i int) ([]byte, func(), error) {
		if i == n {
			return nil, nil, io.EOF
		}
		return data[i*azureBlockSize : min((i+1)*azureBlockSize, len(data))], func() {}, nil
	})
}

// writeFrom is write for a stream of size bytes: one Put Blob of a
// buffer up to azureSingleUploadMax, above that blocks read one by one
// into azureUploadParallel+1 reused buffers, so at most
// (azureUploadParallel+1) × azureBlockSize of the stream is in memory.
func (a *azureBackend) writeFrom(ctx context.Context, name string, size int64, r io.Reader) error {
	if size <= azureSingleUploadMax {
		data, err := readExact(r, size)
		if err != nil {
			return err
		}
		return a.putBlob(ctx, name, data)
	}
	free := make(chan []byte, azureUploadParallel+1)
	for range azureUploadParallel + 1 {
		free <- nil // allocated on first use
	}
	return a.putBlocks(ctx, name, func(int) ([]byte, func(), error) {
		var buf []byte
		select {
		case buf = <-free:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
		if buf == nil {
			buf = make([]byte, azureBlockSize)
		}
		n, err := io.ReadFull(r, buf)
		if err == io.EOF || (err == io.ErrUnexpectedEOF && n > 0) {
			err = nil // the last block; exactReader has checked the length
		}
		if n == 0 && err == nil {
			free <- buf
			return nil, nil, io.EOF
		}
		if err != nil {
			free <- buf
			return nil, nil, err
		}
		return buf[:n], func() { free <- buf }, nil
	})
}

func (a *azureBackend) putBlob(ctx context.Context, name string, data []byte) error {
	sum := md5.Sum(data)
	_, err := a.client.NewBlockBlobClient(a.key(name)).Upload(ctx, streaming.NopCloser(bytes.NewReader(data)), &blockblob.UploadOptions{
		HTTPHeaders: a.headers(sum[:]), Tier: a.tier, CPKInfo: a.cpk, CPKScopeInfo: a.scope,
		TransactionalValidation: azblobblob.TransferValidationTypeMD5(sum[:]),
	})
	return err
}

func (a *azureBackend) headers(md5sum []byte) *azblobblob.HTTPHeaders {
	ct := "application/octet-stream"
	return &azblobblob.HTTPHeaders{BlobContentType: &ct, BlobContentMD5: md5sum}
}

// putBlocks stages the blocks next returns (io.EOF after the last; done
// releases a block once staged), azureUploadParallel at a time, then
// commits them with one Put Block List. The blob's MD5 is summed as the
// blocks come, in order. On any failure nothing is committed (staged
// blocks expire on their own) and no further block is read.
func (a *azureBackend) putBlocks(ctx context.Context, name string, next func(i int) (block []byte, done func(), err error)) error {
	bb := a.client.NewBlockBlobClient(a.key(name))
	// Block ids must be unique to this attempt (another writer of the
	// same name stages its own) and of one length within the blob.
	var nonce [8]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		ids   []string
		mu    sync.Mutex
		first error
		wg    sync.WaitGroup
	)
	setErr := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if first == nil {
			first = err
			cancel()
		}
	}
	failed := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return first != nil
	}
	sem := make(chan struct{}, azureUploadParallel)
	whole := md5.New()
	for i := 0; !failed(); i++ {
		part, done, err := next(i)
		if err == io.EOF {
			break
		}
		if err != nil {
			setErr(err)
			break
		}
		whole.Write(part)
		id := base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "%s-%06d", hex.EncodeToString(nonce[:]), i))
		ids = append(ids, id)
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { done(); <-sem }()
			psum := md5.Sum(part)
			if _, err := bb.StageBlock(sctx, id, streaming.NopCloser(bytes.NewReader(part)), &blockblob.StageBlockOptions{
				CPKInfo: a.cpk, CPKScopeInfo: a.scope, TransactionalValidation: azblobblob.TransferValidationTypeMD5(psum[:]),
			}); err != nil {
				setErr(err)
			}
		})
	}
	wg.Wait()
	if first != nil {
		return first // uncommitted blocks expire on their own
	}
	_, err := bb.CommitBlockList(ctx, ids, &blockblob.CommitBlockListOptions{
		HTTPHeaders: a.headers(whole.Sum(nil)), Tier: a.tier, CPKInfo: a.cpk, CPKScopeInfo: a.scope,
	})
	return err
}

// exists asks for the blob's properties with the customer-provided key.
// A missing container is an error, not a missing blob: blob.Bucket's
// Exists would say false for any 404.
func (a *azureBackend) exists(ctx context.Context, name string) (bool, error) {
	_, err := a.client.NewBlobClient(a.key(name)).GetProperties(ctx, &azblobblob.GetPropertiesOptions{CPKInfo: a.cpk})
	if err == nil {
		return true, nil
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) && re.StatusCode == http.StatusNotFound && re.ErrorCode != "ContainerNotFound" {
		return false, nil
	}
	return false, err
}

// azureCredentialGuard marks a failure to get a token as ErrCredentials,
// so it is reported at once and not retried like a network error.
type azureCredentialGuard struct{ azcore.TokenCredential }

func (g azureCredentialGuard) GetToken(ctx context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	tok, err := g.TokenCredential.GetToken(ctx, o)
	if err != nil {
		return tok, fmt.Errorf("%w: azure: %w", ErrCredentials, err)
	}
	return tok, nil
}

// validAzureKey checks a customer-provided key as Azure needs it: 256
// bits. The message never repeats the key.
func validAzureKey(k string) error {
	if k != "" && len(k) != 32 {
		return fmt.Errorf("azblob storage encryption-key must be 32 bytes (an AES-256 key), got %d", len(k))
	}
	return nil
}
