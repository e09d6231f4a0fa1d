package s3test

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Credentials STS hands out for AssumeRole. Requests signed with them
// carry AssumedAccessKey in their Authorization header and
// AssumedSessionToken in X-Amz-Security-Token.
const (
	AssumedAccessKey    = "ASIATESTASSUMEDROLE"
	AssumedSecretKey    = "assumed-s3cr3t-Do-Not-Print-Me"
	AssumedSessionToken = "assumed-session-token"
)

// isSTS tells an STS query-protocol call (a form POST to "/") from S3's
// own requests, so one server can play both: point the SDK's STS client
// here with AWS_ENDPOINT_URL_STS=Endpoint().
func isSTS(r *http.Request) bool {
	return r.Method == http.MethodPost && r.URL.Path == "/" &&
		strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded")
}

// serveSTS answers AssumeRole with fixed temporary credentials and
// records the call's parameters (RoleArn, ExternalId, …) in the log. It
// checks only that the call is signed, as gofakes3 does for S3.
func (s *Server) serveSTS(w http.ResponseWriter, r *http.Request, rec Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	rec.Form = r.PostForm
	s.record(rec)
	if r.PostForm.Get("Action") != "AssumeRole" {
		stsError(w, http.StatusBadRequest, "InvalidAction", "s3test only answers AssumeRole")
		return
	}
	if !strings.Contains(r.Header.Get("Authorization"), "Credential=") {
		stsError(w, http.StatusForbidden, "MissingAuthenticationToken", "unsigned")
		return
	}
	role := r.PostForm.Get("RoleArn")
	exp := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	w.Header().Set("Content-Type", "text/xml")
	_, _ = fmt.Fprintf(w, `<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>`+
		`<Credentials><AccessKeyId>%s</AccessKeyId><SecretAccessKey>%s</SecretAccessKey><SessionToken>%s</SessionToken>`+
		`<Expiration>%s</Expiration></Credentials><AssumedRoleUser><Arn>%s/s3test</Arn><AssumedRoleId>AROA:s3test</AssumedRoleId>`+
		`</AssumedRoleUser></AssumeRoleResult><ResponseMetadata><RequestId>s3test</RequestId></ResponseMetadata></AssumeRoleResponse>`,
		AssumedAccessKey, AssumedSecretKey, AssumedSessionToken, exp, xmlText(role))
}

func stsError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, `<ErrorResponse><Error><Type>Sender</Type><Code>%s</Code><Message>%s</Message></Error>`+
		`<RequestId>s3test</RequestId></ErrorResponse>`, code, msg)
}

func xmlText(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// STSCalls returns the recorded STS calls' parameters.
func (s *Server) STSCalls() []url.Values {
	var out []url.Values
	for _, r := range s.Log() {
		if r.Form != nil {
			out = append(out, r.Form)
		}
	}
	return out
}
