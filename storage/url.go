package storage

import (
	"errors"
	"fmt"
	"net/url"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Location is a parsed storage URL. Credentials live in unexported fields
// and are never printed: String, Redacted, GoString and therefore %v, %+v
// and %#v all show the URL without them.
type Location struct {
	// Scheme is the canonical kind: "s3", "gcs", "azblob", "local" or "mem".
	Scheme string
	// Bucket is the S3/GCS bucket or the Azure container.
	Bucket string
	// Prefix is the object-name prefix inside the bucket, without leading
	// or trailing slash.
	Prefix string
	// Path is the absolute directory of local storage.
	Path string

	Endpoint       string
	Region         string
	ForcePathStyle bool
	StorageClass   string // S3/GCS storage class, Azure access tier
	SSE            string // S3 server-side encryption: "AES256" or "aws:kms"
	SSEKMSKeyID    string
	ACL            string // S3 canned ACL, GCS predefined ACL
	Provider       string // S3-compatible vendor ("aws", "ceph", "alibaba", …)
	Profile        string // AWS shared-config profile
	RoleARN        string // AWS role to assume
	// ObjectLockEnabled is carried for BR compatibility; writes do not set
	// retention themselves.
	ObjectLockEnabled bool
	AccountName       string // Azure storage account
	EncryptionScope   string // Azure

	secret secrets
	// warnings are what ParseURL ignored, one a line; see Warnings. (A
	// string keeps Location comparable.)
	warnings string
}

// secrets are the parts of a location that must never be shown.
type secrets struct {
	accessKey, secretAccessKey, sessionToken string // S3 static credentials
	externalID                               string // S3 assume-role external ID
	accountKey, sasToken                     string // Azure
	azureEncryptionKey                       string // Azure customer-provided key, 32 raw bytes
	gcsCredentialsFile, gcsCredentialsBlob   string // GCS
}

// HasStaticCredentials reports whether the location itself carries
// credentials (as opposed to relying on the environment).
func (l *Location) HasStaticCredentials() bool {
	s := l.secret
	return s.accessKey != "" || s.accountKey != "" || s.sasToken != "" || s.gcsCredentialsBlob != "" || s.gcsCredentialsFile != ""
}

// knownParams lists the query parameters each scheme accepts, in canonical
// dash form. Others are ignored, as BR ignores them, but never silently:
// each gives a warning (Warnings), so a typo such as "acess-key" is seen
// instead of quietly falling back to the environment's credentials.
var knownParams = map[string]map[string]bool{
	"s3": set("endpoint", "region", "force-path-style", "access-key", "secret-access-key", "session-token",
		"storage-class", "sse", "sse-kms-key-id", "acl", "provider", "profile", "role-arn", "external-id",
		"use-accelerate-endpoint", "object-lock-enabled"),
	"gcs": set("endpoint", "credentials-file", "storage-class", "predefined-acl"),
	"azblob": set("endpoint", "account-name", "account-key", "sas-token", "access-tier", "storage-class", "encryption-scope",
		"encryption-key"),
	"local": set(),
	"mem":   set(),
}

func set(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// canonicalParam accepts BR's spellings: dashes or underscores, any case,
// and the path-style aliases of gocloud and the AWS SDKs.
func canonicalParam(k string) string {
	k = strings.ReplaceAll(strings.ToLower(k), "_", "-")
	switch k {
	case "use-path-style", "s3forcepathstyle", "s3-force-path-style":
		return "force-path-style"
	case "secret-key":
		return "secret-access-key"
	}
	return k
}

// paramName is what a parameter name looks like; anything else is not
// echoed in errors or warnings.
var paramName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,39}$`)

const schemesHint = "use s3://, gcs://, azblob://, local:// or file://"

// ParseURL reads a BR-style storage URL and validates it without any
// network call: s3://bucket/prefix?…, gs:// or gcs://bucket/prefix?…,
// azblob://container/prefix?…, file:///abs/path, local:///abs/path, mem://.
// Errors and warnings never repeat credentials from raw. Parameters it
// does not know are ignored with a warning: see Location.Warnings.
func ParseURL(raw string) (*Location, error) {
	if strings.TrimSpace(raw) == "" {
		return nil, errors.New("storage URL is empty: " + schemesHint)
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url's own error repeats the input, which may hold secrets.
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
		return nil, fmt.Errorf("storage URL %q has no scheme: %s", Redact(raw), schemesHint)
	default:
		return nil, fmt.Errorf("unsupported storage scheme %q: %s", u.Scheme, schemesHint)
	}
	if u.User != nil {
		return nil, fmt.Errorf("storage URL %q must not carry user info; pass credentials as parameters or in the environment", Redact(raw))
	}
	if u.Fragment != "" {
		return nil, fmt.Errorf("storage URL %q must not have a #fragment", Redact(raw))
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("storage URL %q has a malformed query", Redact(raw))
	}
	params := map[string]string{}
	var warnings []string
	for k, vs := range q {
		ck := canonicalParam(k)
		if !knownParams[loc.Scheme][ck] {
			if !paramName.MatchString(k) || strings.Join(vs, "") == "" {
				// Not quoted: a key pasted without "name=" arrives here
				// whole, as a name with no value.
				warnings = append(warnings, fmt.Sprintf("ignored a malformed parameter of the %s storage URL", loc.Scheme))
			} else {
				warnings = append(warnings, fmt.Sprintf("ignored unknown parameter %q of the %s storage URL", k, loc.Scheme))
			}
			continue
		}
		for _, v := range vs {
			// One value per parameter, whatever the spelling: map order
			// must not decide between access_key=A and access-key=B.
			if prev, dup := params[ck]; dup && prev != v {
				return nil, fmt.Errorf("parameter %q is given twice with different values", ck)
			}
			params[ck] = v
		}
	}

	switch loc.Scheme {
	case "local":
		if u.Host != "" || u.Opaque != "" {
			return nil, fmt.Errorf("local storage path in %q must be absolute: write %s:///abs/path (three slashes)", Redact(raw), u.Scheme)
		}
		loc.Path = u.Path
		if err := loc.validate(); err != nil {
			return nil, err
		}
		loc.warnings = sortedWarnings(warnings)
		return loc, nil
	case "mem":
		if u.Host != "" || strings.Trim(u.Path, "/") != "" {
			return nil, fmt.Errorf("mem storage takes no bucket or path: write mem://")
		}
		loc.warnings = sortedWarnings(warnings)
		return loc, nil
	}

	if u.Opaque != "" {
		return nil, fmt.Errorf("%s storage URL %q has no bucket: write %s://bucket/prefix", loc.Scheme, Redact(raw), u.Scheme)
	}
	loc.Bucket = u.Host
	loc.Prefix = strings.Trim(u.Path, "/")
	loc.Endpoint = strings.TrimRight(params["endpoint"], "/")
	switch loc.Scheme {
	case "s3":
		if err := parseS3Params(loc, params); err != nil {
			return nil, err
		}
	case "gcs":
		loc.StorageClass, loc.ACL = params["storage-class"], params["predefined-acl"]
		loc.secret.gcsCredentialsFile = params["credentials-file"]
	case "azblob":
		loc.AccountName, loc.EncryptionScope = params["account-name"], params["encryption-scope"]
		loc.StorageClass = params["access-tier"]
		if loc.StorageClass == "" {
			loc.StorageClass = params["storage-class"]
		}
		loc.secret.accountKey, loc.secret.sasToken = params["account-key"], strings.TrimPrefix(params["sas-token"], "?")
		loc.secret.azureEncryptionKey = params["encryption-key"]
	}
	if err := loc.validate(); err != nil {
		return nil, err
	}
	loc.warnings = sortedWarnings(warnings)
	return loc, nil
}

// Warnings says what ParseURL ignored (unknown or malformed parameters),
// in a stable order. They name parameters, never their values.
func (l *Location) Warnings() []string {
	if l.warnings == "" {
		return nil
	}
	return strings.Split(l.warnings, "\n")
}

func sortedWarnings(w []string) string {
	sort.Strings(w) // map order must not decide the order of messages
	return strings.Join(w, "\n")
}

func parseS3Params(loc *Location, params map[string]string) error {
	boolParam := func(name string, def bool) (bool, error) {
		v, ok := params[name]
		if !ok || v == "" {
			return def, nil
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, fmt.Errorf("%s=%q is not a boolean", name, v)
		}
		return b, nil
	}
	var err error
	// BR's default: S3-compatible servers need path style, and AWS accepts it.
	if loc.ForcePathStyle, err = boolParam("force-path-style", true); err != nil {
		return err
	}
	accelerate, err := boolParam("use-accelerate-endpoint", false)
	if err != nil {
		return err
	}
	if loc.ObjectLockEnabled, err = boolParam("object-lock-enabled", false); err != nil {
		return err
	}
	loc.Region = params["region"]
	loc.StorageClass, loc.SSE, loc.SSEKMSKeyID, loc.ACL = params["storage-class"], params["sse"], params["sse-kms-key-id"], params["acl"]
	loc.Provider, loc.Profile, loc.RoleARN = params["provider"], params["profile"], params["role-arn"]
	loc.secret.accessKey, loc.secret.secretAccessKey = params["access-key"], params["secret-access-key"]
	loc.secret.sessionToken, loc.secret.externalID = params["session-token"], params["external-id"]
	// As BR does: these providers and the accelerate endpoint only work
	// with virtual-hosted addressing.
	if accelerate || loc.Provider == "alibaba" || loc.Provider == "netease" {
		loc.ForcePathStyle = false
	}
	return nil
}

// validate checks a location however it was built (URL, StorageBackend or
// a literal), so Open never starts on something it cannot use.
func (l *Location) validate() error {
	switch l.Scheme {
	case "local":
		if l.Path == "" || !path.IsAbs(l.Path) {
			return fmt.Errorf("local storage path %q must be absolute (write local:///abs/path)", l.Path)
		}
		l.Path = path.Clean(l.Path)
		return nil
	case "mem":
		return nil
	case "s3", "gcs", "azblob":
	case "":
		return errors.New("storage location has no scheme: " + schemesHint)
	default:
		return fmt.Errorf("unsupported storage scheme %q: %s", l.Scheme, schemesHint)
	}
	if l.Bucket == "" {
		what := "bucket"
		if l.Scheme == "azblob" {
			what = "container"
		}
		return fmt.Errorf("%s storage has no %s: write %s://%s/prefix", l.Scheme, what, l.Scheme, what)
	}
	if strings.ContainsAny(l.Bucket, "/?#") {
		return fmt.Errorf("%s storage bucket %q contains a reserved character", l.Scheme, l.Bucket)
	}
	l.Prefix = strings.Trim(l.Prefix, "/")
	if err := checkEndpoint(l.Endpoint); err != nil {
		return err
	}
	s := l.secret
	switch l.Scheme {
	case "s3":
		// BR: with a profile the keys may come from it; otherwise both
		// halves of a static key pair are needed.
		if (s.accessKey == "") != (s.secretAccessKey == "") && l.Profile == "" {
			return errors.New("s3 storage needs both access-key and secret-access-key, or neither")
		}
		if s.sessionToken != "" && s.accessKey == "" {
			return errors.New("s3 storage session-token needs access-key and secret-access-key")
		}
		if s.externalID != "" && l.RoleARN == "" {
			return errors.New("s3 storage external-id needs role-arn")
		}
		switch strings.ToLower(l.SSE) {
		case "", "aes256", "aws:kms", "aws:kms:dsse":
		default:
			return fmt.Errorf("s3 storage sse=%q: use AES256 or aws:kms", l.SSE)
		}
		if l.SSEKMSKeyID != "" && !strings.HasPrefix(strings.ToLower(l.SSE), "aws:kms") {
			return errors.New("s3 storage sse-kms-key-id needs sse=aws:kms")
		}
	case "azblob":
		if s.accountKey != "" && l.AccountName == "" {
			return errors.New("azblob storage with account-key needs account-name")
		}
		if l.StorageClass != "" && azureTiers[strings.ToLower(l.StorageClass)] == "" {
			return fmt.Errorf("azblob storage access-tier=%q: use Hot, Cool, Cold or Archive", l.StorageClass)
		}
		if err := validAzureKey(s.azureEncryptionKey); err != nil {
			return err
		}
		if s.azureEncryptionKey != "" && l.EncryptionScope != "" {
			// Azure refuses a request that carries both.
			return errors.New("azblob storage takes encryption-key or encryption-scope, not both")
		}
	}
	return nil
}

// checkEndpoint accepts "" or an http(s) URL with a host and nothing that
// could carry a secret (user info, query).
func checkEndpoint(ep string) error {
	if ep == "" {
		return nil
	}
	eu, err := url.Parse(ep)
	if err != nil || (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" {
		return fmt.Errorf("endpoint %q must be an http:// or https:// URL with a host", Redact(ep))
	}
	if eu.User != nil || eu.RawQuery != "" || eu.Fragment != "" {
		return fmt.Errorf("endpoint %q must not carry user info, a query or a fragment", Redact(ep))
	}
	if _, err := strconv.Atoi(eu.Port()); eu.Port() != "" && err != nil {
		return fmt.Errorf("endpoint %q has a bad port", Redact(ep))
	}
	return nil
}

// Redacted is the URL with every credential removed. Parsing it again
// gives the same location minus its secrets.
func (l Location) Redacted() string {
	switch l.Scheme {
	case "local":
		// Through url.URL, so a '?', '#' or '%' in the path stays part of it.
		return (&url.URL{Scheme: "local", Path: l.Path}).String()
	case "mem":
		return "mem://"
	}
	u := url.URL{Scheme: l.Scheme, Host: l.Bucket}
	if l.Prefix != "" {
		u.Path = "/" + l.Prefix
	}
	q := map[string]string{}
	add := func(k, v string) {
		if v != "" {
			q[k] = v
		}
	}
	add("endpoint", l.Endpoint)
	switch l.Scheme {
	case "s3":
		add("region", l.Region)
		add("storage-class", l.StorageClass)
		add("sse", l.SSE)
		add("sse-kms-key-id", l.SSEKMSKeyID)
		add("acl", l.ACL)
		add("provider", l.Provider)
		add("profile", l.Profile)
		add("role-arn", l.RoleARN)
		if !l.ForcePathStyle {
			q["force-path-style"] = "false"
		}
		if l.ObjectLockEnabled {
			q["object-lock-enabled"] = "true"
		}
	case "gcs":
		add("storage-class", l.StorageClass)
		add("predefined-acl", l.ACL)
	case "azblob":
		add("account-name", l.AccountName)
		add("access-tier", l.StorageClass)
		add("encryption-scope", l.EncryptionScope)
	}
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		// Values stay readable (endpoint=http://…) but cannot break the
		// query apart.
		v := queryValueEscaper.Replace(q[k])
		parts = append(parts, k+"="+v)
	}
	u.RawQuery = strings.Join(parts, "&")
	return u.String()
}

var queryValueEscaper = strings.NewReplacer("%", "%25", "&", "%26", "#", "%23", "+", "%2B", ";", "%3B", " ", "%20")

// String is Redacted, so a Location can be printed or logged safely.
func (l Location) String() string { return l.Redacted() }

// GoString keeps %#v from printing the credentials too.
func (l Location) GoString() string { return "storage.Location(" + l.Redacted() + ")" }

// secretParam matches credential parameters in URL-like text, in any of
// the spellings BR, gocloud or the cloud SDKs use.
var secretParam = regexp.MustCompile(`(?i)((?:secret[-_]?access[-_]?key|access[-_]?key(?:[-_]?id)?|secret[-_]?key|session[-_]?token|` +
	`external[-_]?id|account[-_]?key|shared[-_]?key|sas[-_]?token|access[-_]?sig|credentials[-_]?blob|sig|encryption[-_]?key|` +
	`x-amz-security-token|x-amz-credential|x-amz-signature)=)[^&\s"'<>]*`)

var userInfo = regexp.MustCompile(`(://)[^/@\s:]+:[^/@\s]+@`)

// Redact removes credentials from any text that may contain a storage URL
// (error messages, logs).
func Redact(s string) string {
	s = secretParam.ReplaceAllString(s, "${1}redacted")
	return userInfo.ReplaceAllString(s, "${1}redacted@")
}
