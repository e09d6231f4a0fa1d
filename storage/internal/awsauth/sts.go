package awsauth

import (
	"context"
	"encoding/xml"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// stsTimeout bounds one STS call.
const stsTimeout = 30 * time.Second

// stsClient calls STS's query API: a form POST, answered in XML.
type stsClient struct {
	client   *http.Client
	endpoint string // "https://sts.us-east-1.amazonaws.com"
	region   string
}

// stsEndpoint is $AWS_ENDPOINT_URL_STS, else $AWS_ENDPOINT_URL, else the
// region's own STS (the SDK v2 default; the global endpoint is no longer
// used).
func stsEndpoint(env func(string) string, region string) string {
	if e := env("AWS_ENDPOINT_URL_STS"); e != "" {
		return e
	}
	if e := env("AWS_ENDPOINT_URL"); e != "" {
		return e
	}
	if strings.HasPrefix(region, "cn-") {
		return "https://sts." + region + ".amazonaws.com.cn"
	}
	return "https://sts." + region + ".amazonaws.com"
}

// stsCredentials is the Credentials element of both answers.
type stsCredentials struct {
	AccessKeyID     string    `xml:"AccessKeyId"`
	SecretAccessKey string    `xml:"SecretAccessKey"`
	SessionToken    string    `xml:"SessionToken"`
	Expiration      time.Time `xml:"Expiration"`
}

type stsAnswer struct {
	XMLName     xml.Name
	AssumeRole  stsCredentials `xml:"AssumeRoleResult>Credentials"`
	WebIdentity stsCredentials `xml:"AssumeRoleWithWebIdentityResult>Credentials"`
}

type stsErrorAnswer struct {
	Code    string `xml:"Error>Code"`
	Message string `xml:"Error>Message"`
}

// call POSTs form (with Action and Version added) and returns the
// credentials in the answer. signer signs the request, or is nil for
// AssumeRoleWithWebIdentity, which is not signed. secrets are what the
// request carried, to be kept out of any error.
func (s *stsClient) call(ctx context.Context, op, action string, form url.Values, signer *Credentials, secrets []string) (Credentials, error) {
	form.Set("Action", action)
	form.Set("Version", "2011-06-15")
	body := form.Encode()
	u, err := url.Parse(s.endpoint)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return Credentials{}, &Error{Op: op + ": the STS endpoint is not a URL"}
	}
	if u.Path == "" {
		u.Path = "/"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), strings.NewReader(body))
	if err != nil {
		return Credentials{}, &Error{Op: op, Err: err}
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	if signer != nil {
		Sign(req, *signer, "sts", s.region, PayloadHash([]byte(body)), time.Now())
	}
	status, answer, err := do(ctx, s.client, req, stsTimeout)
	if err != nil {
		return Credentials{}, &Error{Op: op, Err: err}
	}
	if status != http.StatusOK {
		var e stsErrorAnswer
		if xml.Unmarshal(answer, &e) != nil {
			// Not STS's error document (a proxy's page, say): the
			// status alone, rather than a body that might echo anything.
			return Credentials{}, &Error{Op: op, Status: status}
		}
		return Credentials{}, &Error{Op: op, Status: status,
			Code: safeMessage(e.Code, secrets...), Message: safeMessage(e.Message, secrets...)}
	}
	var a stsAnswer
	if err := xml.Unmarshal(answer, &a); err != nil || a.XMLName.Local != action+"Response" {
		return Credentials{}, &Error{Op: op, Status: status, Message: "the answer is not an " + action + "Response document"}
	}
	c := a.AssumeRole
	if action != "AssumeRole" {
		c = a.WebIdentity
	}
	if c.AccessKeyID == "" || c.SecretAccessKey == "" {
		return Credentials{}, &Error{Op: op, Status: status, Message: "the answer holds no credentials"}
	}
	return Credentials{
		AccessKeyID:     c.AccessKeyID,
		SecretAccessKey: c.SecretAccessKey,
		SessionToken:    c.SessionToken,
		Expires:         c.Expiration,
	}, nil
}

// defaultSessionName names a role session when the configuration does not,
// so that CloudTrail shows who assumed the role.
func defaultSessionName() string {
	return "logbackup-" + strconv.FormatInt(time.Now().UnixNano(), 10)
}

// assumeRoleProvider assumes a role with the credentials of another
// provider.
type assumeRoleProvider struct {
	sts         *stsClient
	base        Provider
	roleARN     string
	externalID  string
	sessionName string // "" = defaultSessionName()
	duration    int    // seconds; 0 = STS's default (one hour)
}

func (p *assumeRoleProvider) Retrieve(ctx context.Context) (Credentials, error) {
	op := "STS AssumeRole for " + p.roleARN
	base, err := p.base.Retrieve(ctx)
	if err != nil {
		return Credentials{}, &Error{Op: op + ": source credentials", Err: err}
	}
	form := url.Values{"RoleArn": {p.roleARN}, "RoleSessionName": {p.sessionName}}
	if p.sessionName == "" {
		form.Set("RoleSessionName", defaultSessionName())
	}
	if p.externalID != "" {
		form.Set("ExternalId", p.externalID)
	}
	if p.duration > 0 {
		form.Set("DurationSeconds", strconv.Itoa(p.duration))
	}
	c, err := p.sts.call(ctx, op, "AssumeRole", form, &base,
		[]string{base.SecretAccessKey, base.SessionToken, p.externalID})
	if err != nil {
		return Credentials{}, err
	}
	c.Source = "role " + p.roleARN + " assumed with " + base.Source
	return c, nil
}

// webIdentityProvider trades a web identity token (an EKS service
// account's, say) for a role's credentials. The token file is read on
// every call: its owner rotates it.
type webIdentityProvider struct {
	sts         *stsClient
	roleARN     string
	tokenFile   string
	sessionName string
}

func (p *webIdentityProvider) Retrieve(ctx context.Context) (Credentials, error) {
	op := "STS AssumeRoleWithWebIdentity for " + p.roleARN
	raw, err := os.ReadFile(p.tokenFile)
	if err != nil {
		return Credentials{}, &Error{Op: op + ": reading the web identity token", Err: err}
	}
	token := strings.TrimSpace(string(raw))
	if token == "" {
		return Credentials{}, &Error{Op: op + ": the web identity token file " + p.tokenFile + " is empty"}
	}
	name := p.sessionName
	if name == "" {
		name = defaultSessionName()
	}
	form := url.Values{"RoleArn": {p.roleARN}, "RoleSessionName": {name}, "WebIdentityToken": {token}}
	c, err := p.sts.call(ctx, op, "AssumeRoleWithWebIdentity", form, nil, []string{token})
	if err != nil {
		return Credentials{}, err
	}
	c.Source = "role " + p.roleARN + " assumed with the web identity token in " + p.tokenFile
	return c, nil
}
