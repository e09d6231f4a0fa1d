package awsauth

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// containerTimeout bounds one call to the container credentials endpoint.
const containerTimeout = 5 * time.Second

// ecsEndpoint is where AWS_CONTAINER_CREDENTIALS_RELATIVE_URI points.
const ecsEndpoint = "http://169.254.170.2"

// containerProvider reads credentials from the ECS task role endpoint, or
// any endpoint speaking its protocol (EKS Pod Identity, Greengrass, …).
type containerProvider struct {
	client    *http.Client
	url       *url.URL
	token     string // AWS_CONTAINER_AUTHORIZATION_TOKEN
	tokenFile string // AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: read on each call, as EKS rotates it
	checkHost bool   // a FULL_URI over plain http must stay on this host or the container agent
}

// newContainerProvider reads the environment's settings; ecsBase is
// ecsEndpoint but in tests.
func newContainerProvider(client *http.Client, env func(string) string, ecsBase string) (*containerProvider, error) {
	p := &containerProvider{client: client, token: env("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
		tokenFile: env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")}
	raw := env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
	if raw != "" {
		raw = ecsBase + raw
	} else {
		raw = env("AWS_CONTAINER_CREDENTIALS_FULL_URI")
		p.checkHost = true
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// No URL in the message: the variable may carry a secret.
		return nil, &Error{Op: "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI / _FULL_URI is not an http(s) URL"}
	}
	if p.checkHost && u.Scheme == "http" {
		if ip := net.ParseIP(u.Hostname()); ip != nil && !containerIPAllowed(ip) {
			return nil, &Error{Op: "AWS_CONTAINER_CREDENTIALS_FULL_URI: plain http is allowed only to a loopback address or the ECS/EKS agent (169.254.170.2, 169.254.170.23, fd00:ec2::23); use https"}
		}
	}
	p.url = u
	return p, nil
}

// containerIPAllowed: credentials go over plain http only to this host
// or the container agent, as the SDK insists.
func containerIPAllowed(ip net.IP) bool {
	return ip.IsLoopback() || ip.Equal(net.IPv4(169, 254, 170, 2)) || ip.Equal(net.IPv4(169, 254, 170, 23)) ||
		ip.Equal(net.ParseIP("fd00:ec2::23"))
}

type containerCredentials struct {
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string
	Token           string
	Expiration      time.Time
	Code            string `json:"code"`
	Message         string `json:"message"`
}

func (p *containerProvider) Retrieve(ctx context.Context) (Credentials, error) {
	// The host is named without the path, which may be a capability.
	op := "container credentials endpoint " + p.url.Scheme + "://" + p.url.Host
	if p.checkHost && p.url.Scheme == "http" && net.ParseIP(p.url.Hostname()) == nil {
		if err := checkContainerHost(ctx, p.url.Hostname()); err != nil {
			return Credentials{}, &Error{Op: op, Err: err}
		}
	}
	token := p.token
	if p.tokenFile != "" {
		raw, err := os.ReadFile(p.tokenFile)
		if err != nil {
			return Credentials{}, &Error{Op: op + ": reading AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", Err: err}
		}
		token = strings.TrimSpace(string(raw))
	}
	if strings.ContainsAny(token, "\r\n") {
		return Credentials{}, &Error{Op: op + ": the authorization token has a line break"}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url.String(), nil)
	if err != nil {
		return Credentials{}, &Error{Op: op, Err: err}
	}
	if token != "" {
		req.Header.Set("Authorization", token)
	}
	status, body, err := do(ctx, p.client, req, containerTimeout)
	if err != nil {
		return Credentials{}, &Error{Op: op, Err: err}
	}
	var c containerCredentials
	jsonErr := json.Unmarshal(body, &c)
	if status != http.StatusOK {
		e := &Error{Op: op, Status: status}
		if jsonErr == nil {
			e.Code = safeMessage(c.Code, token, c.SecretAccessKey, c.Token)
			e.Message = safeMessage(c.Message, token, c.SecretAccessKey, c.Token)
		}
		return Credentials{}, e
	}
	if jsonErr != nil || c.AccessKeyID == "" || c.SecretAccessKey == "" {
		return Credentials{}, &Error{Op: op, Message: "the answer holds no credentials"}
	}
	return Credentials{
		AccessKeyID:     c.AccessKeyID,
		SecretAccessKey: c.SecretAccessKey,
		SessionToken:    c.Token,
		Expires:         c.Expiration,
		Source:          "container credentials endpoint",
	}, nil
}

// checkContainerHost resolves a FULL_URI's host name: every address must
// be one containerIPAllowed accepts.
func checkContainerHost(ctx context.Context, host string) error {
	ctx, cancel := context.WithTimeout(ctx, containerTimeout)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, host)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if ip := net.ParseIP(a); ip == nil || !containerIPAllowed(ip) {
			return &Error{Op: "AWS_CONTAINER_CREDENTIALS_FULL_URI: host " + host + " is neither loopback nor the ECS/EKS agent; plain http is not allowed there, use https"}
		}
	}
	return nil
}
