package realstorage

import (
	"context"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"
)

// Azurite's well-known development account (documented by Microsoft,
// the same in every Azurite).
const (
	AzuriteAccount = "devstoreaccount1"
	AzuriteKey     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// Azurite is a running Azurite blob service.
type Azurite struct{ *Server }

// StartAzurite starts Azurite's blob service in a temp dir.
func StartAzurite(t testing.TB) *Azurite {
	t.Helper()
	bin := binary(t, "LOGBACKUP_AZURITE", "azurite-blob",
		"npm install -g azurite@"+versions()["LOGBACKUP_AZURITE_VERSION"])
	srv := start(t, "azurite", bin, nil,
		func(addr, dir string) []string {
			host, port, _ := net.SplitHostPort(addr)
			// No telemetry: nothing may leave the machine.
			return []string{"--blobHost", host, "--blobPort", port, "--location", dir, "--silent", "--disableTelemetry"}
		},
		func(ctx context.Context, addr string) bool {
			// Unsigned, so refused: any answer means it serves.
			return httpStatus(ctx, "http://"+addr+"/"+AzuriteAccount+"?comp=list") != 0
		})
	return &Azurite{srv}
}

// Endpoint is the account's service URL, http://127.0.0.1:PORT/devstoreaccount1.
func (a *Azurite) Endpoint() string { return a.Server.Endpoint() + "/" + AzuriteAccount }

// Secrets are the credentials its URLs carry.
func (a *Azurite) Secrets() []string { return []string{AzuriteKey} }

func (a *Azurite) credential(t testing.TB) *azblob.SharedKeyCredential {
	cred, err := azblob.NewSharedKeyCredential(AzuriteAccount, AzuriteKey)
	if err != nil {
		t.Fatal(err)
	}
	return cred
}

// CreateContainer makes a container with the account key.
func (a *Azurite) CreateContainer(t testing.TB, name string) {
	t.Helper()
	c, err := azblob.NewClientWithSharedKeyCredential(a.Endpoint()+"/", a.credential(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.CreateContainer(ctx, name, nil); err != nil {
		t.Fatalf("azurite: create container %s: %v", name, err)
	}
}

// URL is an azblob:// URL for container/prefix with the account key.
func (a *Azurite) URL(container, prefix string) string {
	return a.URLWith(container, prefix, "account-key", AzuriteKey)
}

// URLWith is an azblob:// URL with one credential parameter
// (account-key or sas-token).
func (a *Azurite) URLWith(container, prefix, param, value string) string {
	q := url.Values{}
	q.Set("endpoint", a.Endpoint())
	q.Set("account-name", AzuriteAccount)
	q.Set(param, value)
	u := url.URL{Scheme: "azblob", Host: container, RawQuery: q.Encode()}
	if prefix != "" {
		u.Path = "/" + prefix
	}
	return u.String()
}

// SAS is an account SAS for reading and writing blobs that expires at
// expiry (in the past for an expired one).
func (a *Azurite) SAS(t testing.TB, expiry time.Time) string {
	t.Helper()
	qp, err := sas.AccountSignatureValues{
		Protocol:      sas.ProtocolHTTPSandHTTP,
		StartTime:     expiry.Add(-2 * time.Hour),
		ExpiryTime:    expiry,
		Permissions:   (&sas.AccountPermissions{Read: true, Write: true, Delete: true, List: true, Add: true, Create: true}).String(),
		ResourceTypes: (&sas.AccountResourceTypes{Container: true, Object: true}).String(),
	}.SignWithSharedKey(a.credential(t))
	if err != nil {
		t.Fatal(err)
	}
	return qp.Encode()
}
