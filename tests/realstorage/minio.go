package realstorage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

// MinIORegion is the region MinIO answers for unless configured.
const MinIORegion = "us-east-1"

// MinIO is a running MinIO server with a random root user.
type MinIO struct {
	*Server
	RootUser, RootPassword string
}

func randomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// StartMinIO starts a single-drive MinIO server in a temp dir.
func StartMinIO(t testing.TB) *MinIO {
	t.Helper()
	bin := binary(t, "LOGBACKUP_MINIO", "minio",
		"go install github.com/minio/minio@"+versions()["LOGBACKUP_MINIO_VERSION"])
	m := &MinIO{RootUser: "root" + randomHex(t, 4), RootPassword: randomHex(t, 16)}
	console := freePort(t)
	m.Server = start(t, "minio", bin,
		[]string{"MINIO_ROOT_USER=" + m.RootUser, "MINIO_ROOT_PASSWORD=" + m.RootPassword,
			// Nothing leaves the machine: no update checks, no console.
			"MINIO_UPDATE=off", "MINIO_BROWSER=off", "MINIO_CALLHOME_ENABLE=off"},
		func(addr, dir string) []string {
			return []string{"server", "--quiet", "--address", addr, "--console-address", console, dir + "/data"}
		},
		func(ctx context.Context, addr string) bool {
			return httpStatus(ctx, "http://"+addr+"/minio/health/live") == 200
		}, m.RootPassword)
	return m
}

// Secrets are the credentials its URLs carry.
func (m *MinIO) Secrets() []string { return []string{m.RootPassword} }

func (m *MinIO) s3Client(accessKey, secret, token string) *s3.Client {
	return s3.New(s3.Options{
		Region:       MinIORegion,
		BaseEndpoint: aws.String(m.Endpoint()),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(accessKey, secret, token),
	})
}

// CreateBucket makes a bucket as the root user.
func (m *MinIO) CreateBucket(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := m.s3Client(m.RootUser, m.RootPassword, "").CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatalf("minio: create bucket %s: %v", name, err)
	}
}

// URL is an s3:// URL for bucket/prefix with the root user's keys.
func (m *MinIO) URL(bucket, prefix string) string {
	return m.URLWith(bucket, prefix, m.RootUser, m.RootPassword, "")
}

// URLWith is an s3:// URL for bucket/prefix with the given credentials.
func (m *MinIO) URLWith(bucket, prefix, accessKey, secret, token string) string {
	q := url.Values{}
	q.Set("endpoint", m.Endpoint())
	q.Set("region", MinIORegion)
	q.Set("force-path-style", "true")
	q.Set("access-key", accessKey)
	q.Set("secret-access-key", secret)
	if token != "" {
		q.Set("session-token", token)
	}
	u := url.URL{Scheme: "s3", Host: bucket, RawQuery: q.Encode()}
	if prefix != "" {
		u.Path = "/" + prefix
	}
	return u.String()
}

// NoPutCredentials are temporary credentials from MinIO's STS AssumeRole
// whose session policy grants reading, listing and deleting in bucket but
// not s3:PutObject: a user whose policy lacks PutObject.
func (m *MinIO) NoPutCredentials(t testing.TB, bucket string) (accessKey, secret, token string) {
	t.Helper()
	policy := fmt.Sprintf(`{"Version":"2012-10-17","Statement":[`+
		`{"Effect":"Allow","Action":["s3:GetObject","s3:DeleteObject"],"Resource":["arn:aws:s3:::%[1]s/*"]},`+
		`{"Effect":"Allow","Action":["s3:ListBucket","s3:GetBucketLocation"],"Resource":["arn:aws:s3:::%[1]s"]}]}`, bucket)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := sts.New(sts.Options{
		Region:       MinIORegion,
		BaseEndpoint: aws.String(m.Endpoint()),
		Credentials:  credentials.NewStaticCredentialsProvider(m.RootUser, m.RootPassword, ""),
	})
	out, err := c.AssumeRole(ctx, &sts.AssumeRoleInput{
		// MinIO's AssumeRole ignores the role; the SDK requires one.
		RoleArn:         aws.String("arn:minio:iam:::role/logbackup-no-put"),
		RoleSessionName: aws.String("logbackup-test"),
		Policy:          aws.String(policy),
		DurationSeconds: aws.Int32(3600),
	})
	if err != nil {
		t.Fatalf("minio: assume a role without PutObject: %v", err)
	}
	return *out.Credentials.AccessKeyId, *out.Credentials.SecretAccessKey, *out.Credentials.SessionToken
}
