package awsauth

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// The shared files, read as the AWS SDK reads them: the credentials file
// names its profiles [name], the config file [profile name] (and
// [default]); a profile is the union of both, the credentials file
// winning for the same key.

// section is one profile's keys (lowercase) and values.
type section map[string]string

// sharedFiles is what the two files hold, by profile name.
type sharedFiles struct {
	configPath, credentialsPath string // where they were looked for ("" = nowhere)
	config, credentials         map[string]section
}

// Key names used in profiles.
const (
	keyAccessKeyID     = "aws_access_key_id"
	keySecretAccessKey = "aws_secret_access_key"
	keySessionToken    = "aws_session_token"
)

// loadSharedFiles reads both files. A file that does not exist is empty;
// one that cannot be read or parsed is an error.
func loadSharedFiles(env func(string) string) (*sharedFiles, error) {
	home := env("HOME")
	if home == "" {
		home = env("USERPROFILE")
	}
	f := &sharedFiles{
		configPath:      filePath(env("AWS_CONFIG_FILE"), home, "config"),
		credentialsPath: filePath(env("AWS_SHARED_CREDENTIALS_FILE"), home, "credentials"),
	}
	var err error
	if f.config, err = readSharedFile(f.configPath, "config", configProfileName); err != nil {
		return nil, err
	}
	if f.credentials, err = readSharedFile(f.credentialsPath, "credentials", credentialsProfileName); err != nil {
		return nil, err
	}
	return f, nil
}

// filePath is the file named by an environment variable, else ~/.aws/name.
func filePath(fromEnv, home, name string) string {
	switch {
	case fromEnv == "~" && home != "":
		return home
	case strings.HasPrefix(fromEnv, "~/") && home != "":
		return filepath.Join(home, fromEnv[2:])
	case fromEnv != "":
		return fromEnv
	case home != "":
		return filepath.Join(home, ".aws", name)
	}
	return ""
}

// configProfileName maps a config file section to its profile: "profile
// x" is x, "default" is default; the rest ("sso-session x", "services
// x", a bare "x") are not profiles. prefixed tells a "[profile default]"
// (which wins) from a "[default]".
func configProfileName(sec string) (name string, prefixed, ok bool) {
	if rest, found := strings.CutPrefix(sec, "profile "); found {
		return rest, true, true
	}
	return sec, false, sec == "default"
}

// credentialsProfileName: in the credentials file a section is a profile
// by its bare name; "[profile x]" is ignored there, as the SDK does.
func credentialsProfileName(sec string) (string, bool, bool) {
	return sec, false, !strings.HasPrefix(sec, "profile ")
}

func readSharedFile(path, kind string, profileName func(string) (string, bool, bool)) (map[string]section, error) {
	profiles := map[string]section{}
	if path == "" {
		return profiles, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return profiles, nil
	}
	if err != nil {
		return nil, &Error{Op: "reading the shared " + kind + " file", Err: err}
	}
	sections, order, err := parseINI(data)
	if err != nil {
		return nil, &Error{Op: "shared " + kind + " file " + path, Err: err}
	}
	prefixed := map[string]bool{}
	for _, sec := range order {
		name, pre, ok := profileName(sec)
		if !ok || name == "" {
			continue
		}
		// "[profile default]" wins over "[default]", whatever the order.
		if _, seen := profiles[name]; seen && prefixed[name] && !pre {
			continue
		}
		profiles[name], prefixed[name] = sections[sec], pre
	}
	return profiles, nil
}

// parseINI reads the AWS flavour of INI: "[section]" headers, "key =
// value" (or "key: value") lines, "#" and ";" comments (whole lines, or
// after a space at the end of a line), keys in any case, values
// optionally quoted. Indented lines continue the key above (nested
// settings such as "s3 =\n  max_concurrent_requests = 10"); none of the
// keys used here is nested, so they are skipped. Errors name the line,
// never its text, which may hold a secret.
func parseINI(data []byte) (map[string]section, []string, error) {
	sections := map[string]section{}
	var order []string
	var cur section
	lastValue := "" // the value of the last top-level key, for indented lines
	haveKey := false
	for i, line := range bytes.Split(data, []byte("\n")) {
		s := strings.TrimRight(string(line), "\r")
		if i == 0 {
			s = strings.TrimPrefix(s, "\ufeff")
		}
		trimmed := strings.TrimSpace(s)
		if trimmed == "" || trimmed[0] == '#' || trimmed[0] == ';' {
			continue
		}
		lineNo := i + 1
		indented := s[0] == ' ' || s[0] == '\t'
		if trimmed[0] == '[' {
			head, _, _ := strings.Cut(trimmed, "#")
			head, _, _ = strings.Cut(head, ";")
			head = strings.TrimSpace(head)
			if !strings.HasSuffix(head, "]") {
				return nil, nil, fmt.Errorf("line %d: a section header without its closing ]", lineNo)
			}
			name := strings.Join(strings.Fields(head[1:len(head)-1]), " ")
			if name == "" {
				return nil, nil, fmt.Errorf("line %d: a section header without a name", lineNo)
			}
			if sections[name] == nil {
				sections[name] = section{}
				order = append(order, name)
			}
			cur, haveKey, lastValue = sections[name], false, ""
			continue
		}
		if indented && haveKey && lastValue == "" {
			continue // a nested setting under "key =", or a continuation
		}
		key, value, ok := splitProperty(trimComment(trimmed))
		if !ok {
			if indented && haveKey {
				continue // a continuation of a value
			}
			return nil, nil, fmt.Errorf("line %d: expected [section] or key = value", lineNo)
		}
		if cur == nil {
			return nil, nil, fmt.Errorf("line %d: a key before any [section]", lineNo)
		}
		cur[key] = value
		haveKey, lastValue = true, value
	}
	return sections, order, nil
}

// trimComment cuts a comment that follows a value after a space or tab.
func trimComment(s string) string {
	for _, c := range []string{" #", " ;", "\t#", "\t;"} {
		s, _, _ = strings.Cut(s, c)
	}
	return strings.TrimSpace(s)
}

// splitProperty splits "key = value" (or "key: value", whichever comes
// first), lowercasing the key and unquoting the value.
func splitProperty(s string) (key, value string, ok bool) {
	i := strings.IndexAny(s, "=:")
	if i <= 0 {
		return "", "", false
	}
	key = strings.ToLower(strings.TrimSpace(s[:i]))
	value = strings.TrimSpace(s[i+1:])
	if key == "" {
		return "", "", false
	}
	if len(value) >= 2 && (value[0] == '"' || value[0] == '\'') && value[len(value)-1] == value[0] {
		value = value[1 : len(value)-1]
	}
	return key, value, true
}

// profile is the merged keys of a profile, and whether either file has it.
// The credentials file's keys win; its access key pair (and token) win
// only as a whole, so a pair is never half from one file.
func (f *sharedFiles) profile(name string) (section, bool, error) {
	conf, inConf := f.config[name]
	cred, inCred := f.credentials[name]
	if !inConf && !inCred {
		return nil, false, nil
	}
	for _, src := range []struct {
		sec  section
		path string
	}{{conf, f.configPath}, {cred, f.credentialsPath}} {
		if (src.sec[keyAccessKeyID] == "") != (src.sec[keySecretAccessKey] == "") {
			return nil, true, &Error{Op: fmt.Sprintf("profile %q in %s has only one of %s and %s",
				name, src.path, keyAccessKeyID, keySecretAccessKey)}
		}
	}
	merged := section{}
	for k, v := range conf {
		merged[k] = v
	}
	credKeys := cred[keyAccessKeyID] != ""
	if credKeys {
		delete(merged, keySessionToken)
	}
	for k, v := range cred {
		switch k {
		case keyAccessKeyID, keySecretAccessKey, keySessionToken:
			if !credKeys {
				continue
			}
		}
		merged[k] = v
	}
	return merged, true, nil
}

// where names the files for messages.
func (f *sharedFiles) where() string {
	var paths []string
	for _, p := range []string{f.credentialsPath, f.configPath} {
		if p != "" {
			paths = append(paths, p)
		}
	}
	if len(paths) == 0 {
		return "none: HOME is not set"
	}
	return strings.Join(paths, ", ")
}
