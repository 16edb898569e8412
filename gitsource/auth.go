package gitsource

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
)

// Environment variables that carry git credentials. Values are never
// printed; only the variable names appear in errors.
const (
	EnvToken         = "PGTOPO_GIT_TOKEN"
	EnvUsername      = "PGTOPO_GIT_USERNAME"
	EnvSSHKey        = "PGTOPO_GIT_SSH_KEY"
	EnvSSHPassphrase = "PGTOPO_GIT_SSH_KEY_PASSPHRASE"
)

// tokenUser is what HTTPS token auth sends as the user name when none is
// set; GitHub and most forges ignore it, but it must not be empty.
const tokenUser = "x-access-token"

// AuthFromEnv picks credentials for location from the environment: a
// token for HTTPS, a private key file for SSH. It returns nil when none
// apply (local paths, file:// URLs, anonymous HTTPS, the SSH agent).
func AuthFromEnv(location string, getenv func(string) string) (transport.AuthMethod, error) {
	scheme := schemeOf(location)
	switch scheme {
	case "http", "https":
		token := getenv(EnvToken)
		if token == "" {
			return nil, nil
		}
		user := getenv(EnvUsername)
		if user == "" {
			user = tokenUser
		}
		return &githttp.BasicAuth{Username: user, Password: token}, nil
	case "ssh":
		keyFile := getenv(EnvSSHKey)
		if keyFile == "" {
			return nil, nil
		}
		keys, err := gitssh.NewPublicKeysFromFile(sshUser(location), keyFile, getenv(EnvSSHPassphrase))
		if err != nil {
			return nil, fmt.Errorf("%s=%s: cannot use the SSH key: %w (is it a private key, and is %s right?)", EnvSSHKey, keyFile, err, EnvSSHPassphrase)
		}
		return keys, nil
	}
	return nil, nil
}

// schemeOf names how location is reached: a URL scheme, "ssh" for git's
// user@host:path form, or "" for a local path.
func schemeOf(location string) string {
	if scpLike.MatchString(location) && !strings.Contains(location, "://") {
		return "ssh"
	}
	scheme, _, ok := strings.Cut(location, "://")
	if !ok {
		return ""
	}
	scheme = strings.ToLower(scheme)
	if scheme == "git+ssh" || scheme == "ssh+git" {
		return "ssh"
	}
	return scheme
}

func sshUser(location string) string {
	if u, err := url.Parse(location); err == nil && strings.Contains(location, "://") && u.User != nil {
		return u.User.Username()
	}
	if user, _, ok := strings.Cut(location, "@"); ok && scpLike.MatchString(location) {
		return user
	}
	return "git"
}
