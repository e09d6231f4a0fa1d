package storage

import (
	"fmt"
	"net/url"
	"os"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
)

// Location is a parsed storage URL. Credentials are kept in unexported
// fields and never printed: String, Redacted and %v show the URL without
// them.
type Location struct {
	// Scheme is the canonical kind: "s3", "gcs", "azblob", "local" or "mem".
	Scheme string
	// Bucket is the S3/GCS bucket or Azure container.
	Bucket string
	// Prefix is the object-name prefix inside the bucket (no leading or
	// trailing slash).
	Prefix string
	// Path is the absolute directory of local storage.
	Path string

	Endpoint       string
	Region         string
	ForcePathStyle bool
	StorageClass   string
	SSE            string
	SSEKMSKeyID    string
	ACL            string
	Provider       string
	Profile        string
	RoleARN        string
	ExternalID     string
	AccountName    string // Azure

	secret secrets
}

// secrets are the parts of a location that must never be shown.
type secrets struct {
	accessKey, secretAccessKey, sessionToken string // S3
	accountKey                               string // Azure shared key
	gcsCredentialsFile, gcsCredentialsBlob   string // GCS
}

// HasStaticCredentials reports whether the URL itself carries credentials.
func (l *Location) HasStaticCredentials() bool {
	return l.secret.accessKey != "" || l.secret.accountKey != "" || l.secret.gcsCredentialsBlob != "" || l.secret.gcsCredentialsFile != ""
}

// parameter names per scheme, in canonical dash form.
var knownParams = map[string]map[string]bool{
	"s3": set("endpoint", "region", "force-path-style", "access-key", "secret-access-key", "session-token",
		"storage-class", "sse", "sse-kms-key-id", "acl", "provider", "profile", "role-arn", "external-id"),
	"gcs":    set("endpoint", "credentials-file", "storage-class", "predefined-acl"),
	"azblob": set("endpoint", "account-name", "account-key", "storage-class"),
	"local":  set(),
	"mem":    set(),
}

func set(names ...string) map[string]bool {
	m := map[string]bool{}
	for _, n := range names {
		m[n] = true
	}
	return m
}

// canonicalParam accepts BR's spellings: dashes or underscores, any case,
// and the legacy path-style aliases.
func canonicalParam(k string) string {
	k = strings.ReplaceAll(strings.ToLower(k), "_", "-")
	switch k {
	case "use-path-style", "s3forcepathstyle":
		return "force-path-style"
	case "secret-key":
		return "secret-access-key"
	}
	return k
}

// ParseURL reads a BR-style storage URL and checks it without any network
// call: s3://bucket/prefix?…, gs:// or gcs://bucket/prefix?…,
// azblob://container/prefix?…, file:///abs/path, local:///abs/path, mem://.
func ParseURL(raw string) (*Location, error) {
	if strings.TrimSpace(raw) == "" {
		return nil, fmt.Errorf("empty storage URL")
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url's error repeats the input, which may hold secrets.
		return nil, fmt.Errorf("storage URL %q is not a valid URL", Redact(raw))
	}
	loc := &Location{}
	switch strings.ToLower(u.Scheme) {
	case "s3":
		loc.Scheme = "s3"
	case "gs", "gcs":
		loc.Scheme = "gcs"
	case "azblob", "azure":
		loc.Scheme = "azblob"
	case "file", "local":
		loc.Scheme = "local"
	case "mem":
		loc.Scheme = "mem"
	case "":
		return nil, fmt.Errorf("storage URL %q has no scheme: use s3://, gcs://, azblob://, local:// or file://", Redact(raw))
	default:
		return nil, fmt.Errorf("unsupported storage scheme %q: use s3://, gcs://, azblob://, local:// or file://", u.Scheme)
	}
	if u.User != nil {
		return nil, fmt.Errorf("storage URL %q must not carry user info; pass credentials as parameters or in the environment", Redact(raw))
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("storage URL %q has a malformed query", Redact(raw))
	}
	params := map[string]string{}
	for k, vs := range q {
		ck := canonicalParam(k)
		if !knownParams[loc.Scheme][ck] {
			return nil, fmt.Errorf("unknown parameter %q for %s storage", k, loc.Scheme)
		}
		params[ck] = vs[len(vs)-1]
	}

	switch loc.Scheme {
	case "local":
		if u.Host != "" {
			return nil, fmt.Errorf("local storage path must be absolute: write %s:///abs/path (three slashes), not %q", u.Scheme, Redact(raw))
		}
		if u.Path == "" || !path.IsAbs(u.Path) {
			return nil, fmt.Errorf("local storage path %q must be absolute", u.Path)
		}
		loc.Path = path.Clean(u.Path)
		return loc, nil
	case "mem":
		return loc, nil
	}

	loc.Bucket = u.Host
	if loc.Bucket == "" {
		return nil, fmt.Errorf("%s storage URL %q has no bucket: write %s://bucket/prefix", loc.Scheme, Redact(raw), u.Scheme)
	}
	loc.Prefix = strings.Trim(u.Path, "/")
	if ep := params["endpoint"]; ep != "" {
		eu, err := url.Parse(ep)
		if err != nil || (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" {
			return nil, fmt.Errorf("endpoint %q must be an http:// or https:// URL with a host", Redact(ep))
		}
		loc.Endpoint = strings.TrimRight(ep, "/")
	}
	switch loc.Scheme {
	case "s3":
		loc.Region = params["region"]
		loc.ForcePathStyle = true // BR's default: S3-compatible servers need it
		if v, ok := params["force-path-style"]; ok {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("force-path-style=%q is not a boolean", v)
			}
			loc.ForcePathStyle = b
		}
		loc.StorageClass, loc.SSE, loc.SSEKMSKeyID, loc.ACL = params["storage-class"], params["sse"], params["sse-kms-key-id"], params["acl"]
		loc.Provider, loc.Profile, loc.RoleARN, loc.ExternalID = params["provider"], params["profile"], params["role-arn"], params["external-id"]
		loc.secret.accessKey, loc.secret.secretAccessKey, loc.secret.sessionToken = params["access-key"], params["secret-access-key"], params["session-token"]
		if (loc.secret.accessKey == "") != (loc.secret.secretAccessKey == "") {
			return nil, fmt.Errorf("s3 storage needs both access-key and secret-access-key, or neither")
		}
	case "gcs":
		loc.StorageClass, loc.ACL = params["storage-class"], params["predefined-acl"]
		loc.secret.gcsCredentialsFile = params["credentials-file"]
	case "azblob":
		loc.AccountName, loc.StorageClass = params["account-name"], params["storage-class"]
		loc.secret.accountKey = params["account-key"]
		if loc.secret.accountKey != "" && loc.AccountName == "" {
			return nil, fmt.Errorf("azblob storage with account-key needs account-name")
		}
	}
	return loc, nil
}

// Redacted is the URL with every credential removed.
func (l Location) Redacted() string {
	switch l.Scheme {
	case "local":
		return "local://" + l.Path
	case "mem":
		return "mem://"
	}
	scheme := l.Scheme
	u := url.URL{Scheme: scheme, Host: l.Bucket, Path: "/" + l.Prefix}
	if l.Prefix == "" {
		u.Path = ""
	}
	q := url.Values{}
	add := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	add("endpoint", l.Endpoint)
	add("region", l.Region)
	add("storage-class", l.StorageClass)
	add("provider", l.Provider)
	add("account-name", l.AccountName)
	if l.Scheme == "s3" && !l.ForcePathStyle {
		q.Set("force-path-style", "false")
	}
	if len(q) > 0 {
		keys := make([]string, 0, len(q))
		for k := range q {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, 0, len(keys))
		for _, k := range keys {
			parts = append(parts, k+"="+q.Get(k))
		}
		u.RawQuery = strings.Join(parts, "&")
	}
	return u.String()
}

// String is Redacted, so a Location can be printed or logged safely.
func (l Location) String() string { return l.Redacted() }

// GoString keeps %#v from printing the credentials too.
func (l Location) GoString() string { return "storage.Location(" + l.Redacted() + ")" }

// secretParam matches credential parameters in URL-like text, in any of
// the spellings BR, gocloud or the SDKs use.
var secretParam = regexp.MustCompile(`(?i)((?:secret[-_]?access[-_]?key|access[-_]?key|secret[-_]?key|session[-_]?token|account[-_]?key|shared[-_]?key|sas[-_]?token|credentials[-_]?blob|sig|x-amz-security-token|x-amz-credential|x-amz-signature)=)[^&\s"'<>]*`)

var userInfo = regexp.MustCompile(`(://)[^/@\s:]+:[^/@\s]+@`)

// Redact removes credentials from any text that may contain a storage URL
// (error messages, logs).
func Redact(s string) string {
	s = secretParam.ReplaceAllString(s, "${1}redacted")
	return userInfo.ReplaceAllString(s, "${1}redacted@")
}

// Backend converts the location to kvproto's StorageBackend, the form task
// info stores in etcd (and TiKV reads). Credentials given in the URL go
// along, as BR sends them to TiKV by default; they are never printed.
func (l *Location) Backend() (*brpb.StorageBackend, error) {
	switch l.Scheme {
	case "local":
		return &brpb.StorageBackend{Backend: &brpb.StorageBackend_Local{Local: &brpb.Local{Path: l.Path}}}, nil
	case "s3":
		return &brpb.StorageBackend{Backend: &brpb.StorageBackend_S3{S3: &brpb.S3{
			Endpoint: l.Endpoint, Region: l.Region, Bucket: l.Bucket, Prefix: l.Prefix,
			StorageClass: l.StorageClass, Sse: l.SSE, SseKmsKeyId: l.SSEKMSKeyID, Acl: l.ACL,
			AccessKey: l.secret.accessKey, SecretAccessKey: l.secret.secretAccessKey, SessionToken: l.secret.sessionToken,
			ForcePathStyle: l.ForcePathStyle, Provider: l.Provider, Profile: l.Profile,
			RoleArn: l.RoleARN, ExternalId: l.ExternalID,
		}}}, nil
	case "gcs":
		blob := l.secret.gcsCredentialsBlob
		if blob == "" && l.secret.gcsCredentialsFile != "" {
			// Agents on other hosts cannot read our file: ship its content,
			// as BR does.
			b, err := os.ReadFile(l.secret.gcsCredentialsFile)
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
		return &brpb.StorageBackend{Backend: &brpb.StorageBackend_AzureBlobStorage{AzureBlobStorage: &brpb.AzureBlobStorage{
			Endpoint: l.Endpoint, Bucket: l.Bucket, Prefix: l.Prefix, StorageClass: l.StorageClass,
			AccountName: l.AccountName, SharedKey: l.secret.accountKey,
		}}}, nil
	case "mem":
		return nil, fmt.Errorf("mem:// storage lives in one process and cannot be shared with agents")
	}
	return nil, fmt.Errorf("unknown storage scheme %q", l.Scheme)
}

// LocationFromBackend converts kvproto's StorageBackend back to a location.
func LocationFromBackend(b *brpb.StorageBackend) (*Location, error) {
	switch be := b.GetBackend().(type) {
	case *brpb.StorageBackend_Local:
		if !path.IsAbs(be.Local.GetPath()) {
			return nil, fmt.Errorf("local storage path %q is not absolute", be.Local.GetPath())
		}
		return &Location{Scheme: "local", Path: path.Clean(be.Local.Path)}, nil
	case *brpb.StorageBackend_S3:
		s := be.S3
		if s.Bucket == "" {
			return nil, fmt.Errorf("s3 storage backend has no bucket")
		}
		return &Location{Scheme: "s3", Bucket: s.Bucket, Prefix: strings.Trim(s.Prefix, "/"), Endpoint: s.Endpoint,
			Region: s.Region, ForcePathStyle: s.ForcePathStyle, StorageClass: s.StorageClass, SSE: s.Sse,
			SSEKMSKeyID: s.SseKmsKeyId, ACL: s.Acl, Provider: s.Provider, Profile: s.Profile, RoleARN: s.RoleArn,
			ExternalID: s.ExternalId,
			secret:     secrets{accessKey: s.AccessKey, secretAccessKey: s.SecretAccessKey, sessionToken: s.SessionToken}}, nil
	case *brpb.StorageBackend_Gcs:
		g := be.Gcs
		if g.Bucket == "" {
			return nil, fmt.Errorf("gcs storage backend has no bucket")
		}
		return &Location{Scheme: "gcs", Bucket: g.Bucket, Prefix: strings.Trim(g.Prefix, "/"), Endpoint: g.Endpoint,
			StorageClass: g.StorageClass, ACL: g.PredefinedAcl, secret: secrets{gcsCredentialsBlob: g.CredentialsBlob}}, nil
	case *brpb.StorageBackend_AzureBlobStorage:
		a := be.AzureBlobStorage
		if a.Bucket == "" {
			return nil, fmt.Errorf("azblob storage backend has no container")
		}
		return &Location{Scheme: "azblob", Bucket: a.Bucket, Prefix: strings.Trim(a.Prefix, "/"), Endpoint: a.Endpoint,
			StorageClass: a.StorageClass, AccountName: a.AccountName, secret: secrets{accountKey: a.SharedKey}}, nil
	case nil:
		return nil, fmt.Errorf("storage backend is empty")
	default:
		return nil, fmt.Errorf("storage backend %T is not supported", be)
	}
}

func readFile(p string) ([]byte, error) { return os.ReadFile(p) }
