package azuretest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
)

// authorize checks r's credentials: a Shared Key signature is verified
// against the account key; a SAS token (a "sig" parameter) is accepted
// as is. It returns a status, an Azure error code and a message when r is
// refused, or 0.
func (s *Server) authorize(r *http.Request) (int, string, string) {
	if r.URL.Query().Get("sig") != "" {
		return 0, "", ""
	}
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return http.StatusUnauthorized, "NoAuthenticationInformation", "no credentials"
	}
	scheme, cred, _ := strings.Cut(auth, " ")
	if scheme != "SharedKey" {
		return http.StatusForbidden, "AuthenticationFailed", "only Shared Key and SAS are supported"
	}
	account, sig, ok := strings.Cut(cred, ":")
	if !ok || account != Account {
		return http.StatusForbidden, "AuthenticationFailed", "unknown account"
	}
	mac := hmac.New(sha256.New, s.key)
	mac.Write([]byte(stringToSign(r)))
	want := base64.StdEncoding.EncodeToString(mac.Sum(nil))
	if !hmac.Equal([]byte(sig), []byte(want)) {
		return http.StatusForbidden, "AuthenticationFailed", "signature does not match"
	}
	return 0, "", ""
}

// stringToSign is Shared Key's canonical form of a Blob service request
// (version 2009-09-19 and later).
func stringToSign(r *http.Request) string {
	h := r.Header
	length := h.Get("Content-Length")
	if length == "" && r.ContentLength > 0 {
		length = strconv.FormatInt(r.ContentLength, 10)
	}
	if length == "0" {
		length = ""
	}
	parts := []string{
		r.Method,
		h.Get("Content-Encoding"),
		h.Get("Content-Language"),
		length,
		h.Get("Content-MD5"),
		h.Get("Content-Type"),
		"", // Date: x-ms-date is used instead
		h.Get("If-Modified-Since"),
		h.Get("If-Match"),
		h.Get("If-None-Match"),
		h.Get("If-Unmodified-Since"),
		h.Get("Range"),
		canonicalHeaders(h),
		canonicalResource(r.URL),
	}
	return strings.Join(parts, "\n")
}

func canonicalHeaders(h http.Header) string {
	var names []string
	vals := map[string][]string{}
	for k, v := range h {
		lk := strings.ToLower(strings.TrimSpace(k))
		if strings.HasPrefix(lk, "x-ms-") {
			names = append(names, lk)
			vals[lk] = v
		}
	}
	sort.Strings(names)
	lines := make([]string, 0, len(names))
	for _, n := range names {
		lines = append(lines, n+":"+strings.Join(vals[n], ","))
	}
	return strings.Join(lines, "\n")
}

func canonicalResource(u *url.URL) string {
	var b strings.Builder
	b.WriteString("/" + Account)
	if p := u.EscapedPath(); p != "" {
		b.WriteString(p)
	} else {
		b.WriteString("/")
	}
	q, _ := url.ParseQuery(u.RawQuery)
	names := make([]string, 0, len(q))
	for k := range q {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		v := append([]string(nil), q[k]...)
		sort.Strings(v)
		b.WriteString("\n" + strings.ToLower(k) + ":" + strings.Join(v, ","))
	}
	return b.String()
}
