package awsauth

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// Provider gives credentials; safe for concurrent use.
type Provider interface {
	Retrieve(ctx context.Context) (Credentials, error)
}

// Config says where Resolve looks for credentials and the region.
type Config struct {
	Static     *Credentials        // keys from the storage URL: used as they are, nothing else is looked up
	Profile    string              // shared-config profile; "" = $AWS_PROFILE, else "default"
	RoleARN    string              // when set: assume this role (STS AssumeRole) using the credentials found by the rest of the chain
	ExternalID string              // AssumeRole's ExternalId (a secret: never in errors/logs)
	Region     string              // "" = $AWS_REGION, $AWS_DEFAULT_REGION, the profile's `region` in the config file, else "us-east-1"
	HTTPClient *http.Client        // for STS, ECS and IMDS calls; nil = a client with timeouts
	Env        func(string) string // nil = os.Getenv (tests pass their own)
}

// Resolve reads the environment and the shared files (no network) and
// returns a provider and the region, choosing the credentials as the AWS
// SDK's default chain does:
//
//  1. cfg.Static;
//  2. unless cfg.Profile is set: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
//     (or AWS_ACCESS_KEY, AWS_SECRET_KEY), then AWS_WEB_IDENTITY_TOKEN_FILE
//     with AWS_ROLE_ARN (a profile named in code overrides the
//     environment's keys, as with the SDK's WithSharedConfigProfile);
//  3. the profile in the shared files: keys, role_arn with source_profile
//     or credential_source, role_arn with web_identity_token_file,
//     credential_process;
//  4. the container endpoint (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or
//     _FULL_URI);
//  5. the EC2 instance metadata service, unless AWS_EC2_METADATA_DISABLED.
//
// Then, if cfg.RoleARN is set, that role is assumed with what was found.
// Credentials that expire are cached and refreshed before they do.
//
// Errors: a malformed shared file, a profile that does not exist when
// one was named (cfg.Profile or AWS_PROFILE), a profile the chain cannot
// use (SSO, MFA, a broken role chain).
func Resolve(cfg Config) (Provider, string, error) {
	return resolve(cfg, defaultOptions())
}

// options are what tests change: endpoints no test can reach and bounds
// no test should wait for.
type options struct {
	ecsEndpoint string
	imdsTimeout time.Duration
}

func defaultOptions() options {
	return options{ecsEndpoint: ecsEndpoint, imdsTimeout: imdsTimeout}
}

// resolver is one Resolve's state.
type resolver struct {
	cfg      Config
	opts     options
	env      func(string) string
	client   *http.Client
	files    *sharedFiles
	profile  string
	explicit bool // the profile was named, by cfg.Profile or AWS_PROFILE
	sts      *stsClient
}

func resolve(cfg Config, opts options) (Provider, string, error) {
	r := &resolver{cfg: cfg, opts: opts, env: cfg.Env, client: cfg.HTTPClient}
	if r.env == nil {
		r.env = os.Getenv
	}
	if r.client == nil {
		r.client = defaultHTTPClient()
	}
	r.profile = cfg.Profile
	if r.profile == "" {
		r.profile = r.env("AWS_PROFILE")
	}
	r.explicit = r.profile != ""
	if r.profile == "" {
		r.profile = r.env("AWS_DEFAULT_PROFILE")
	}
	if r.profile == "" {
		r.profile = "default"
	}

	var err error
	if r.files, err = loadSharedFiles(r.env); err != nil {
		return nil, "", err
	}
	top, found, err := r.files.profile(r.profile)
	if err != nil {
		return nil, "", err
	}
	if !found && r.explicit {
		return nil, "", &Error{Op: fmt.Sprintf("profile %q not found in the shared files (%s)", r.profile, r.files.where())}
	}
	region := firstNonEmpty(cfg.Region, r.env("AWS_REGION"), r.env("AWS_DEFAULT_REGION"), top["region"], "us-east-1")
	r.sts = &stsClient{client: r.client, endpoint: stsEndpoint(r.env, region), region: region}

	p, err := r.base(top, found)
	if err != nil {
		return nil, "", err
	}
	if cfg.RoleARN != "" {
		p = newCache(&assumeRoleProvider{sts: r.sts, base: p, roleARN: cfg.RoleARN, externalID: cfg.ExternalID})
	}
	return p, region, nil
}

// base is the chain before cfg.RoleARN.
func (r *resolver) base(top section, found bool) (Provider, error) {
	if r.cfg.Static != nil {
		c := *r.cfg.Static
		if c.Source == "" {
			c.Source = "static keys"
		}
		return staticProvider{c}, nil
	}
	if r.cfg.Profile == "" {
		if c, ok := r.envKeys(); ok {
			return staticProvider{c}, nil
		}
		if file := r.env("AWS_WEB_IDENTITY_TOKEN_FILE"); file != "" {
			role := r.env("AWS_ROLE_ARN")
			if role == "" {
				return nil, &Error{Op: "AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not"}
			}
			return newCache(&webIdentityProvider{sts: r.sts, roleARN: role, tokenFile: file,
				sessionName: r.env("AWS_ROLE_SESSION_NAME")}), nil
		}
	}
	if found {
		p, err := r.fromProfile(r.profile, top, nil)
		if p != nil || err != nil {
			return p, err
		}
	}
	return r.containerOrIMDS(true)
}

// envKeys are the environment's keys, if both are set.
func (r *resolver) envKeys() (Credentials, bool) {
	c := Credentials{
		AccessKeyID:     firstNonEmpty(r.env("AWS_ACCESS_KEY_ID"), r.env("AWS_ACCESS_KEY")),
		SecretAccessKey: firstNonEmpty(r.env("AWS_SECRET_ACCESS_KEY"), r.env("AWS_SECRET_KEY")),
		SessionToken:    r.env("AWS_SESSION_TOKEN"),
		Source:          "environment",
	}
	return c, c.AccessKeyID != "" && c.SecretAccessKey != ""
}

// containerOrIMDS is the end of the chain. last says it is reached
// because nothing else applied: its failure then says where else the
// chain looked.
func (r *resolver) containerOrIMDS(last bool) (Provider, error) {
	if r.env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") != "" || r.env("AWS_CONTAINER_CREDENTIALS_FULL_URI") != "" {
		p, err := newContainerProvider(r.client, r.env, r.opts.ecsEndpoint)
		if err != nil {
			return nil, err
		}
		return newCache(p), nil
	}
	p := r.imds()
	if !last {
		return p, nil
	}
	envNote := ""
	if r.cfg.Profile != "" {
		envNote = "; with a profile named, its keys are not used"
	}
	return notFound{p: p, where: fmt.Sprintf(
		"no credentials found in the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_WEB_IDENTITY_TOKEN_FILE, "+
			"AWS_CONTAINER_CREDENTIALS_*%s), nor in profile %q of the shared files (%s), nor from EC2 instance metadata (%s)",
		envNote, r.profile, r.files.where(), imdsEndpoint(r.env))}, nil
}

// imds is the instance role's provider, or one that says it was not
// tried.
func (r *resolver) imds() Provider {
	if strings.EqualFold(r.env("AWS_EC2_METADATA_DISABLED"), "true") {
		return failingProvider{errIMDSDisabled}
	}
	return newCache(&imdsProvider{client: r.client, endpoint: imdsEndpoint(r.env), timeout: r.opts.imdsTimeout,
		v1Disabled: strings.EqualFold(r.env("AWS_EC2_METADATA_V1_DISABLED"), "true")})
}

// fromProfile is the provider a profile describes, as the SDK reads it;
// nil if the profile holds no credentials (the chain goes on). chain is
// the profiles that led here through source_profile.
func (r *resolver) fromProfile(name string, p section, chain []string) (Provider, error) {
	where := fmt.Sprintf("profile %q", name)
	roleARN := p["role_arn"]
	kinds := 0
	for _, k := range []string{"source_profile", "credential_source", "credential_process", "web_identity_token_file"} {
		if p[k] != "" {
			kinds++
		}
	}
	if kinds > 1 {
		return nil, &Error{Op: where + ": only one of source_profile, credential_source, credential_process and web_identity_token_file may be set"}
	}
	if roleARN == "" && (p["source_profile"] != "" || p["credential_source"] != "" || p["web_identity_token_file"] != "") {
		return nil, &Error{Op: where + ": source_profile, credential_source and web_identity_token_file need role_arn"}
	}
	keys, hasKeys := Credentials{
		AccessKeyID:     p[keyAccessKeyID],
		SecretAccessKey: p[keySecretAccessKey],
		SessionToken:    p[keySessionToken],
		Source:          "shared files, " + where,
	}, p[keyAccessKeyID] != ""
	// A profile reached through source_profile gives its keys if it has
	// any, whatever else it says (the SDK's rule); one reached twice
	// has nothing else to give.
	if len(chain) > 0 && hasKeys {
		return staticProvider{keys}, nil
	}
	for _, seen := range chain {
		if seen == name {
			return nil, &Error{Op: "source_profile loop: " + strings.Join(append(chain, name), " → ") +
				" (a profile in the loop needs its own keys)"}
		}
	}

	var base Provider
	switch src := p["source_profile"]; {
	case src != "":
		sp, ok, err := r.files.profile(src)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, &Error{Op: fmt.Sprintf("%s: its source_profile %q does not exist", where, src)}
		}
		if base, err = r.fromProfile(src, sp, append(chain, name)); err != nil {
			return nil, err
		}
		if base == nil {
			return nil, &Error{Op: fmt.Sprintf("%s: its source_profile %q holds no credentials", where, src)}
		}
	case hasKeys:
		base = staticProvider{keys}
	case p["credential_source"] != "":
		var err error
		if base, err = r.credentialSource(where, p["credential_source"]); err != nil {
			return nil, err
		}
	case p["web_identity_token_file"] != "":
		// The role is the one the token is traded for: no second AssumeRole.
		return newCache(&webIdentityProvider{sts: r.sts, roleARN: roleARN,
			tokenFile: p["web_identity_token_file"], sessionName: p["role_session_name"]}), nil
	case isSSO(p):
		return nil, &Error{Op: where + " uses AWS IAM Identity Center (SSO, sso_* keys), which logbackup does not support. " +
			"Use `credential_process = aws configure export-credentials --profile " + name + " --format process` " +
			"in another profile, or keys in the environment or the storage URL"}
	case p["login_session"] != "":
		return nil, &Error{Op: where + " uses an `aws login` session, which logbackup does not support. " +
			"Use `credential_process = aws configure export-credentials --profile " + name + " --format process` " +
			"in another profile, or keys in the environment or the storage URL"}
	case p["credential_process"] != "":
		base = newCache(&processProvider{profile: name, command: p["credential_process"]})
	case roleARN == "":
		return nil, nil
	default:
		// role_arn alone: the SDK assumes it with what the rest of the
		// chain finds (container, instance role).
		var err error
		if base, err = r.containerOrIMDS(false); err != nil {
			return nil, err
		}
	}
	if roleARN == "" {
		return base, nil
	}
	if p["mfa_serial"] != "" {
		return nil, &Error{Op: where + ": mfa_serial is set, but an agent cannot ask for an MFA code"}
	}
	duration := 0
	if s := p["duration_seconds"]; s != "" {
		d, err := strconv.Atoi(s)
		if err != nil || d < 0 {
			return nil, &Error{Op: where + ": duration_seconds is not a number of seconds"}
		}
		// The SDK sends it only above STS's 15-minute minimum.
		if d > 900 {
			duration = d
		}
	}
	return newCache(&assumeRoleProvider{sts: r.sts, base: base, roleARN: roleARN,
		externalID: p["external_id"], sessionName: p["role_session_name"], duration: duration}), nil
}

// credentialSource is a profile's credential_source: where to find the
// keys to assume its role with.
func (r *resolver) credentialSource(where, src string) (Provider, error) {
	switch src {
	case "Environment":
		c, ok := r.envKeys()
		if !ok {
			return nil, &Error{Op: where + ": credential_source = Environment, but AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not both set"}
		}
		return staticProvider{c}, nil
	case "Ec2InstanceMetadata":
		return r.imds(), nil
	case "EcsContainer":
		if r.env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") == "" && r.env("AWS_CONTAINER_CREDENTIALS_FULL_URI") == "" {
			return nil, &Error{Op: where + ": credential_source = EcsContainer, but neither AWS_CONTAINER_CREDENTIALS_RELATIVE_URI nor AWS_CONTAINER_CREDENTIALS_FULL_URI is set"}
		}
		return r.containerOrIMDS(false)
	}
	return nil, &Error{Op: fmt.Sprintf("%s: credential_source %q is none of Environment, Ec2InstanceMetadata, EcsContainer", where, src)}
}

func isSSO(p section) bool {
	for _, k := range []string{"sso_session", "sso_start_url", "sso_region", "sso_account_id", "sso_role_name"} {
		if p[k] != "" {
			return true
		}
	}
	return false
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// staticProvider gives keys that do not change.
type staticProvider struct{ c Credentials }

func (p staticProvider) Retrieve(context.Context) (Credentials, error) { return p.c, nil }

// failingProvider always fails with err.
type failingProvider struct{ err error }

func (p failingProvider) Retrieve(context.Context) (Credentials, error) {
	return Credentials{}, p.err
}

// notFound is the last link of the chain: its failure says where the
// chain looked before.
type notFound struct {
	p     Provider
	where string
}

func (n notFound) Retrieve(ctx context.Context) (Credentials, error) {
	c, err := n.p.Retrieve(ctx)
	if err != nil {
		return Credentials{}, &Error{Op: n.where, Err: err}
	}
	return c, nil
}
