package realstorage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
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

// StartMinIO starts a single-drive MinIO server in a temp dir; env adds
// MinIO settings (MINIO_API_REQUESTS_MAX=1 for throttling).
func StartMinIO(t testing.TB, env ...string) *MinIO {
	t.Helper()
	bin := binary(t, "LOGBACKUP_MINIO", "minio",
		"go install github.com/minio/minio@"+versions()["LOGBACKUP_MINIO_VERSION"])
	m := &MinIO{RootUser: "root" + randomHex(t, 4), RootPassword: randomHex(t, 16)}
	console := freePort(t)
	m.Server = start(t, "minio", bin,
		append([]string{"MINIO_ROOT_USER=" + m.RootUser, "MINIO_ROOT_PASSWORD=" + m.RootPassword,
			// Nothing leaves the machine: no update checks, no console.
			"MINIO_UPDATE=off", "MINIO_BROWSER=off", "MINIO_CALLHOME_ENABLE=off"}, env...),
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

// HoldRequest starts a signed upload into bucket and sends only part of
// its body, so MinIO holds one of its request slots for it until release
// is called. With MINIO_API_REQUESTS_MAX=1 every other S3 request is then
// answered 429 TooManyRequests: throttling on cue, by the server itself.
//
// MinIO answers a request that finds no free slot at once, so the held
// upload can itself be refused when a probe of ours reaches the slot
// first. The upload is then sent again on a new connection until a probe
// is the one refused.
func (m *MinIO) HoldRequest(t testing.TB, bucket string) (release func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const size = 1 << 20
	req, err := s3.NewPresignClient(m.s3Client(m.RootUser, m.RootPassword, "")).PresignPutObject(ctx,
		&s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("held-upload"), ContentLength: aws.Int64(size)})
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(req.URL)
	if err != nil {
		t.Fatal(err)
	}
	var head strings.Builder
	fmt.Fprintf(&head, "PUT %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n", u.RequestURI(), u.Host, size)
	for k, vs := range req.SignedHeader {
		if k == "Host" || k == "Content-Length" {
			continue
		}
		for _, v := range vs {
			fmt.Fprintf(&head, "%s: %s\r\n", k, v)
		}
	}
	head.WriteString("\r\nfirst bytes of a body that never ends")
	for ctx.Err() == nil {
		conn, err := net.DialTimeout("tcp", m.Addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(conn, head.String()); err != nil {
			conn.Close()
			t.Fatal(err)
		}
		var once sync.Once
		release = func() { once.Do(func() { conn.Close() }) }
		for ctx.Err() == nil {
			if httpStatus(ctx, m.Endpoint()+"/"+bucket) == http.StatusTooManyRequests {
				t.Cleanup(release)
				return release
			}
			// A held upload gets no answer; one that lost the slot does.
			_ = conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			if n, err := conn.Read(make([]byte, 1)); n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Logf("minio answered the held upload (%d bytes, %v): it lost the slot; sending it again", n, err)
				break
			}
		}
		release()
	}
	t.Fatal("minio: the held upload never took the request slot")
	return nil
}
