// Package awsauth signs requests to AWS services (Signature Version 4)
// and finds the credentials to sign them with, as the AWS SDK's default
// chain does, with plain net/http. It stands in for aws-sdk-go-v2, whose
// package init (endpoint tables, the credential chain's many services)
// kept about 2.5 MiB of the agent's idle RSS (issue 19).
package awsauth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"sort"
	"strings"
	"time"
)

// Credentials are one set of AWS keys. Expires is zero for keys that do
// not expire.
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	Expires         time.Time
	// Source names where they came from ("static", "environment",
	// "shared file profile x", "web identity", "instance role", …), for
	// errors and logs; never a secret.
	Source string
}

// String never prints a secret.
func (c Credentials) String() string { return "aws credentials from " + c.Source }

// UnsignedPayload is the payload hash S3 accepts for a body not covered by
// the signature.
const UnsignedPayload = "UNSIGNED-PAYLOAD"

// EmptyPayloadHash is the SHA-256 of no bytes.
const EmptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// PayloadHash is the lowercase hex SHA-256 of body, as the signature wants it.
func PayloadHash(body []byte) string {
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:])
}

const amzDateFormat = "20060102T150405Z"

// Sign adds a Signature Version 4 Authorization header (and X-Amz-Date,
// X-Amz-Content-Sha256, X-Amz-Security-Token) to req for service in
// region, at now. payloadHash is PayloadHash(body), or UnsignedPayload.
// The signed path is req.URL.Path escaped as AWS escapes it; Sign sets
// req.URL.RawPath to that, so what is sent is what was signed.
func Sign(req *http.Request, c Credentials, service, region, payloadHash string, now time.Time) {
	now = now.UTC()
	amzDate := now.Format(amzDateFormat)
	day := amzDate[:8]
	req.Header.Set("X-Amz-Date", amzDate)
	req.Header.Set("X-Amz-Content-Sha256", payloadHash)
	if c.SessionToken != "" {
		req.Header.Set("X-Amz-Security-Token", c.SessionToken)
	} else {
		req.Header.Del("X-Amz-Security-Token")
	}
	req.Header.Del("Authorization")

	path := req.URL.Path
	if path == "" {
		path = "/"
	}
	escaped := EscapePath(path)
	req.URL.RawPath = escaped

	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	// The headers signed: host, and every x-amz-*, content-type and
	// content-md5 the request carries (a proxy may rewrite the others).
	type kv struct{ k, v string }
	hdrs := []kv{{"host", host}}
	for k, vs := range req.Header {
		lk := strings.ToLower(k)
		if lk == "content-type" || lk == "content-md5" || strings.HasPrefix(lk, "x-amz-") {
			vals := make([]string, len(vs))
			for i, v := range vs {
				vals[i] = trimSpaces(v)
			}
			hdrs = append(hdrs, kv{lk, strings.Join(vals, ",")})
		}
	}
	sort.Slice(hdrs, func(i, j int) bool { return hdrs[i].k < hdrs[j].k })
	var canonHdrs strings.Builder
	names := make([]string, len(hdrs))
	for i, h := range hdrs {
		names[i] = h.k
		canonHdrs.WriteString(h.k)
		canonHdrs.WriteByte(':')
		canonHdrs.WriteString(h.v)
		canonHdrs.WriteByte('\n')
	}
	signed := strings.Join(names, ";")

	canon := req.Method + "\n" + escaped + "\n" + canonicalQuery(req.URL.RawQuery) + "\n" +
		canonHdrs.String() + "\n" + signed + "\n" + payloadHash
	scope := day + "/" + region + "/" + service + "/aws4_request"
	crHash := sha256.Sum256([]byte(canon))
	toSign := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(crHash[:])

	key := hmacSHA256([]byte("AWS4"+c.SecretAccessKey), day)
	key = hmacSHA256(key, region)
	key = hmacSHA256(key, service)
	key = hmacSHA256(key, "aws4_request")
	sig := hex.EncodeToString(hmacSHA256(key, toSign))
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential="+c.AccessKeyID+"/"+scope+
		", SignedHeaders="+signed+", Signature="+sig)
}

func hmacSHA256(key []byte, data string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(data))
	return m.Sum(nil)
}

// trimSpaces trims a header value and collapses its runs of spaces, as
// the canonical request wants.
func trimSpaces(v string) string {
	v = strings.TrimSpace(v)
	if !strings.Contains(v, "  ") {
		return v
	}
	return strings.Join(strings.Fields(v), " ")
}

// canonicalQuery sorts the query's parameters by name, then value, each
// escaped as AWS escapes them.
func canonicalQuery(raw string) string {
	if raw == "" {
		return ""
	}
	type kv struct{ k, v string }
	var ps []kv
	for _, part := range strings.Split(raw, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		k, v = queryUnescape(k), queryUnescape(v)
		ps = append(ps, kv{Escape(k), Escape(v)})
	}
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].k != ps[j].k {
			return ps[i].k < ps[j].k
		}
		return ps[i].v < ps[j].v
	})
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(p.k)
		b.WriteByte('=')
		b.WriteString(p.v)
	}
	return b.String()
}

// queryUnescape undoes url.QueryEscape (a '+' is a space); a malformed
// escape is kept as it is.
func queryUnescape(s string) string {
	if !strings.ContainsAny(s, "%+") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '+':
			b.WriteByte(' ')
		case c == '%' && i+2 < len(s) && ishex(s[i+1]) && ishex(s[i+2]):
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// Escape percent-encodes every byte but A-Z a-z 0-9 - . _ ~, in
// uppercase hex, as AWS's canonical form wants (a space is %20).
func Escape(s string) string { return escape(s, false) }

// EscapePath is Escape that keeps '/'.
func EscapePath(s string) string { return escape(s, true) }

func escape(s string, keepSlash bool) string {
	const hexUpper = "0123456789ABCDEF"
	n := 0
	for i := 0; i < len(s); i++ {
		if !unreserved(s[i]) && !(keepSlash && s[i] == '/') {
			n++
		}
	}
	if n == 0 {
		return s
	}
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if unreserved(c) || keepSlash && c == '/' {
			b = append(b, c)
			continue
		}
		b = append(b, '%', hexUpper[c>>4], hexUpper[c&15])
	}
	return string(b)
}

func unreserved(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}
