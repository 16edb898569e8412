// Package gittest makes real git repositories with the git command line for
// tests, so they check that pgtopo reads what git writes.
package gittest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Repo is a work tree made by git init.
type Repo struct {
	t   testing.TB
	Dir string
}

// New makes an empty repository whose first branch is main.
func New(t testing.TB) *Repo {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatal("git is not installed: apt-get install git (or run `make deps`)")
	}
	r := &Repo{t: t, Dir: t.TempDir()}
	r.Git("init", "-q", "-b", "main")
	return r
}

// Git runs git in the work tree and returns its trimmed output.
func (r *Repo) Git(args ...string) string {
	r.t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = r.Dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=pgtopo-test", "GIT_AUTHOR_EMAIL=test@pgtopo.dev",
		"GIT_COMMITTER_NAME=pgtopo-test", "GIT_COMMITTER_EMAIL=test@pgtopo.dev", "GIT_CONFIG_GLOBAL=/dev/null")
	out, err := cmd.CombinedOutput()
	if err != nil {
		r.t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// Commit writes files, commits them and returns the new commit's hash.
func (r *Repo) Commit(msg string, files map[string]string) string {
	r.t.Helper()
	for name, content := range files {
		p := filepath.Join(r.Dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			r.t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			r.t.Fatal(err)
		}
		r.Git("add", name)
	}
	r.Git("commit", "-q", "--allow-empty", "-m", msg)
	return r.Git("rev-parse", "HEAD")
}

// Bare clones the repository bare into a new directory, adds it as the
// remote origin, and returns its path.
func (r *Repo) Bare() string {
	r.t.Helper()
	dir := filepath.Join(r.t.TempDir(), "topology.git")
	r.Git("clone", "-q", "--bare", r.Dir, dir)
	r.Git("remote", "add", "origin", dir)
	return dir
}
