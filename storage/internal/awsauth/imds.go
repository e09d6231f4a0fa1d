package awsauth

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"
)

// imdsTimeout bounds each call to the instance metadata service, as the
// SDK's 1 s per attempt does: off EC2 the address leads nowhere, and the
// chain must not hang there. A whole Retrieve makes at most three calls.
const imdsTimeout = time.Second

const credentialsPath = "/latest/meta-data/iam/security-credentials/"

// imdsProvider reads the instance role's credentials from the EC2
// instance metadata service, IMDSv2 (a session token first) falling back
// to IMDSv1 where the token call is refused, as the SDK does.
type imdsProvider struct {
	client     *http.Client
	endpoint   string // "http://169.254.169.254"
	timeout    time.Duration
	v1Disabled bool // AWS_EC2_METADATA_V1_DISABLED: never fall back
}

func imdsEndpoint(env func(string) string) string {
	if e := env("AWS_EC2_METADATA_SERVICE_ENDPOINT"); e != "" {
		return strings.TrimRight(e, "/")
	}
	if strings.EqualFold(env("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE"), "IPv6") {
		return "http://[fd00:ec2::254]"
	}
	return "http://169.254.169.254"
}

type imdsCredentials struct {
	Code            string
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string
	Token           string
	Expiration      time.Time
}

func (p *imdsProvider) Retrieve(ctx context.Context) (Credentials, error) {
	token, err := p.token(ctx)
	if err != nil {
		return Credentials{}, err
	}
	body, err := p.get(ctx, credentialsPath, token)
	if err != nil {
		return Credentials{}, err
	}
	role, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
	role = strings.TrimSpace(role)
	if role == "" {
		return Credentials{}, &Error{Op: "EC2 instance metadata: the instance has no IAM role"}
	}
	body, err = p.get(ctx, credentialsPath+role, token)
	if err != nil {
		return Credentials{}, err
	}
	var c imdsCredentials
	if json.Unmarshal(body, &c) != nil {
		return Credentials{}, &Error{Op: "EC2 instance metadata: the credentials of role " + role + " are not a JSON document"}
	}
	if c.Code != "Success" || c.AccessKeyID == "" || c.SecretAccessKey == "" {
		return Credentials{}, &Error{Op: "EC2 instance metadata: no credentials for role " + role,
			Code: safeMessage(c.Code, c.SecretAccessKey, c.Token)}
	}
	return Credentials{
		AccessKeyID:     c.AccessKeyID,
		SecretAccessKey: c.SecretAccessKey,
		SessionToken:    c.Token,
		Expires:         c.Expiration,
		Source:          "EC2 instance role " + role,
	}, nil
}

// token gets an IMDSv2 session token; "" means use IMDSv1. Like the SDK,
// it falls back when the service refuses the token call (403, 404, 405:
// IMDSv1-only or old endpoints) or does not answer it in time (a
// container whose hop limit drops the PUT's answer), unless IMDSv1 is
// disabled.
func (p *imdsProvider) token(ctx context.Context) (string, error) {
	const op = "EC2 instance metadata PUT /latest/api/token"
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, p.endpoint+"/latest/api/token", nil)
	if err != nil {
		return "", &Error{Op: op, Err: err}
	}
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "21600")
	status, body, err := do(ctx, p.client, req, p.timeout)
	switch {
	case err != nil && ctx.Err() == nil && !p.v1Disabled:
		return "", nil
	case err != nil:
		return "", &Error{Op: op, Err: err}
	case status == http.StatusOK:
		tok := strings.TrimSpace(string(body))
		if tok == "" || strings.ContainsAny(tok, "\r\n") {
			return "", &Error{Op: op, Message: "the answer is not a token"}
		}
		return tok, nil
	case (status == http.StatusForbidden || status == http.StatusNotFound || status == http.StatusMethodNotAllowed) && !p.v1Disabled:
		return "", nil
	default:
		return "", &Error{Op: op, Status: status}
	}
}

// get GETs a metadata path, with the session token if there is one.
func (p *imdsProvider) get(ctx context.Context, path, token string) ([]byte, error) {
	op := "EC2 instance metadata GET " + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.endpoint+path, nil)
	if err != nil {
		return nil, &Error{Op: op, Err: err}
	}
	if token != "" {
		req.Header.Set("X-aws-ec2-metadata-token", token)
	}
	status, body, err := do(ctx, p.client, req, p.timeout)
	if err != nil {
		return nil, &Error{Op: op, Err: err}
	}
	if status == http.StatusNotFound && path == credentialsPath {
		return nil, &Error{Op: op, Status: status, Message: "the instance has no IAM role"}
	}
	if status != http.StatusOK {
		return nil, &Error{Op: op, Status: status}
	}
	return body, nil
}

// errIMDSDisabled is the cause when AWS_EC2_METADATA_DISABLED=true left
// the chain nothing to try.
var errIMDSDisabled = errors.New("EC2 instance metadata not tried (AWS_EC2_METADATA_DISABLED=true)")
