package cli

import (
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"logbackup/br"
)

// backendFlag is one of BR's --s3.*, --gcs.* and --azblob.* flags: the
// storage URL parameter it stands for.
type backendFlag struct {
	scheme string // canonical: s3, gcs, azblob
	param  string // the URL parameter
	usage  string
	secret bool
}

// backendFlags are BR's storage flags (br/pkg/storage: s3.go, gcs.go,
// azblob.go), named as BR names them.
var backendFlags = []backendFlag{
	{"s3", "endpoint", "S3 endpoint URL, with http:// or https://", false},
	{"s3", "region", "S3 region, e.g. us-east-1", false},
	{"s3", "storage-class", "S3 storage class, e.g. STANDARD", false},
	{"s3", "sse", "S3 server-side encryption: AES256 or aws:kms", false},
	{"s3", "sse-kms-key-id", "KMS key id for --s3.sse=aws:kms (empty: the S3-owned key)", false},
	{"s3", "acl", "S3 canned ACL, e.g. authenticated-read", false},
	{"s3", "provider", "S3-compatible provider: aws, alibaba, ceph, netease, …", false},
	{"s3", "role-arn", "ARN of the IAM role to assume for S3", false},
	{"s3", "external-id", "external ID for assuming --s3.role-arn", true},
	{"gcs", "endpoint", "GCS endpoint URL", false},
	{"gcs", "storage-class", "GCS storage class of the objects", false},
	{"gcs", "predefined-acl", "GCS predefined ACL of the objects", false},
	{"gcs", "credentials-file", "GCS service account key file", false},
	{"azblob", "endpoint", "Azure Blob endpoint URL", false},
	{"azblob", "access-tier", "Azure access tier: Hot, Cool, Cold or Archive", false},
	{"azblob", "account-name", "Azure storage account name", false},
	{"azblob", "account-key", "Azure storage account key", true},
	{"azblob", "sas-token", "Azure SAS token", true},
	{"azblob", "encryption-scope", "Azure encryption scope", false},
	{"azblob", "encryption-key", "Azure customer-provided encryption key", true},
}

func (f backendFlag) name() string { return f.scheme + "." + f.param }

// defineBackendFlags registers the storage flags on fs; values are read
// back by name (storageURL).
func defineBackendFlags(fs *pflag.FlagSet) {
	for _, f := range backendFlags {
		fs.String(f.name(), "", f.usage+" (URL parameter "+f.param+" of "+f.scheme+":// storage)")
	}
}

// urlScheme is the canonical scheme of a storage URL as the storage layer
// reads it, or "" when it has none.
func urlScheme(raw string) string {
	i := strings.Index(raw, "://")
	if i <= 0 {
		return ""
	}
	switch s := strings.ToLower(raw[:i]); s {
	case "gs", "gcs":
		return "gcs"
	case "azure", "azblob":
		return "azblob"
	case "file", "local":
		return "local"
	default:
		return s
	}
}

// canonicalParam is how the storage layer (and BR) compares parameter
// names: any case, dashes or underscores.
func canonicalParam(k string) string { return strings.ReplaceAll(strings.ToLower(k), "_", "-") }

// storageURL is -s/--storage with the --s3.*, --gcs.* or --azblob.* flags
// of its scheme merged in as URL parameters, as BR applies them. As in BR,
// a parameter the URL itself gives wins over its flag. Flags of another
// scheme than the URL's are ignored, with a warning naming them (never
// their values).
func storageURL(fs *pflag.FlagSet, raw string) (string, []string, error) {
	var warnings []string
	scheme := urlScheme(raw)
	add := url.Values{}
	for _, f := range backendFlags {
		fl := fs.Lookup(f.name())
		if fl == nil || !fl.Changed {
			continue
		}
		if f.scheme != scheme {
			warnings = append(warnings, fmt.Sprintf("--%s is ignored: the storage is not %s://", f.name(), f.scheme))
			continue
		}
		add.Set(f.param, fl.Value.String())
	}
	if len(add) == 0 || raw == "" {
		return raw, warnings, nil
	}
	if strings.Contains(raw, "#") {
		// The storage layer refuses fragments; let it say so.
		return raw, warnings, nil
	}
	base, query, _ := strings.Cut(raw, "?")
	q, err := url.ParseQuery(query)
	if err != nil {
		return "", warnings, &br.Error{Msg: "the storage URL has a malformed query", Hint: "check the -s/--storage URL"}
	}
	given := map[string]bool{}
	for k := range q {
		given[canonicalParam(k)] = true
	}
	var names []string
	for k := range add {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if given[k] {
			warnings = append(warnings, fmt.Sprintf("--%s.%s is ignored: the storage URL sets %s", scheme, k, k))
			continue
		}
		q.Set(k, add.Get(k))
	}
	return base + "?" + q.Encode(), warnings, nil
}

// secondsFlag is a duration flag that also takes BR's plain integer
// seconds: BR's --gc-ttl is an int of seconds ("--gc-ttl 86400"), and a Go
// duration ("24h") is accepted too.
type secondsFlag struct{ d *time.Duration }

func (s secondsFlag) String() string {
	if s.d == nil {
		return "0"
	}
	if *s.d%time.Second == 0 {
		return strconv.FormatInt(int64(*s.d/time.Second), 10)
	}
	return s.d.String()
}

func (s secondsFlag) Set(v string) error {
	if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
		if n < 0 || n > int64(100*365*24*time.Hour/time.Second) {
			return fmt.Errorf("%d seconds is out of range", n)
		}
		*s.d = time.Duration(n) * time.Second
		return nil
	}
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil {
		return fmt.Errorf("want seconds (86400) or a duration (24h)")
	}
	*s.d = d
	return nil
}

func (secondsFlag) Type() string { return "seconds" }
