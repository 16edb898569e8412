package gitsource_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"

	"github.com/pgtopo/pgtopo/gitsource"
	"github.com/pgtopo/pgtopo/gitsource/gittest"
)

type history struct {
	repo                 *gittest.Repo
	c1, c2, c3, feature1 string
}

// makeHistory: main c1 → c2 → c3, tags v1 (lightweight, c1) and v2
// (annotated, c2), branch feature off c1.
func makeHistory(t *testing.T) history {
	r := gittest.New(t)
	h := history{repo: r}
	h.c1 = r.Commit("first", map[string]string{"deploy/topology.yaml": "primary: east\n"})
	r.Git("tag", "v1")
	h.c2 = r.Commit("switch to west", map[string]string{"deploy/topology.yaml": "primary: west\n"})
	r.Git("tag", "-a", "v2", "-m", "release 2")
	h.c3 = r.Commit("unrelated", map[string]string{"README": "hi\n"})
	r.Git("checkout", "-q", "-b", "feature", h.c1)
	h.feature1 = r.Commit("feature work", map[string]string{"deploy/topology.yaml": "primary: south\n"})
	r.Git("checkout", "-q", "main")
	return h
}

func TestResolveAndRead(t *testing.T) {
	h := makeHistory(t)
	bare := h.repo.Bare()

	locations := map[string]string{
		"local work tree":    h.repo.Dir,
		"local subdirectory": filepath.Join(h.repo.Dir, "deploy"),
		"bare over file://":  "file://" + bare,
	}
	cases := []struct {
		rev, want, content string
	}{
		{"main", h.c3, "primary: west\n"},
		{"feature", h.feature1, "primary: south\n"},
		{"v1", h.c1, "primary: east\n"},
		{"v2", h.c2, "primary: west\n"},
		{h.c1, h.c1, "primary: east\n"},
		{h.c2[:8], h.c2, "primary: west\n"},
		{"main~2", h.c1, "primary: east\n"},
		{"", h.c3, "primary: west\n"},
	}
	for name, loc := range locations {
		t.Run(name, func(t *testing.T) {
			repo, err := gitsource.Open(context.Background(), loc, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range cases {
				got, err := repo.Resolve(c.rev)
				if err != nil {
					t.Errorf("Resolve(%q): %v", c.rev, err)
					continue
				}
				if got.Hash != c.want {
					t.Errorf("Resolve(%q) = %s, want %s", c.rev, got.Hash, c.want)
				}
				data, err := repo.ReadFile(got, "deploy/topology.yaml")
				if err != nil {
					t.Errorf("ReadFile at %q: %v", c.rev, err)
				} else if string(data) != c.content {
					t.Errorf("ReadFile at %q = %q, want %q", c.rev, data, c.content)
				}
			}
			if _, err := repo.Resolve("no-such-branch"); err == nil || !strings.Contains(err.Error(), `revision "no-such-branch" not found`) {
				t.Errorf("Resolve(no-such-branch) error = %v", err)
			}
			c, _ := repo.Resolve("main")
			if _, err := repo.ReadFile(c, "topology.yaml"); !errors.Is(err, gitsource.ErrNoFile) || !strings.Contains(err.Error(), "check --path") {
				t.Errorf("ReadFile(missing) error = %v, want ErrNoFile naming --path", err)
			}
		})
	}
}

func TestOpenNotARepository(t *testing.T) {
	_, err := gitsource.Open(context.Background(), t.TempDir(), nil)
	if err == nil || !strings.Contains(err.Error(), "not a git repository") {
		t.Fatalf("error = %v, want 'not a git repository'", err)
	}
	_, err = gitsource.Open(context.Background(), "file://"+filepath.Join(t.TempDir(), "missing.git"), nil)
	if err == nil || !strings.Contains(err.Error(), "fetch") {
		t.Fatalf("error = %v, want a fetch error", err)
	}
}

// TestRefreshSeesNewCommits covers the loop mode: a commit pushed to the
// remote, or made in a local repository (also after git gc packs it), is
// seen after Refresh.
func TestRefreshSeesNewCommits(t *testing.T) {
	h := makeHistory(t)
	bare := h.repo.Bare()

	remote, err := gitsource.Open(context.Background(), "file://"+bare, nil)
	if err != nil {
		t.Fatal(err)
	}
	local, err := gitsource.Open(context.Background(), h.repo.Dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	c4 := h.repo.Commit("back to east", map[string]string{"deploy/topology.yaml": "primary: east\n"})
	h.repo.Git("gc", "-q")
	h.repo.Git("push", "-q", "origin", "main")

	if got, _ := remote.Resolve("main"); got.Hash != h.c3 {
		t.Fatalf("before Refresh, remote main = %s, want the old %s", got.Hash, h.c3)
	}
	for name, repo := range map[string]*gitsource.Repository{"remote": remote, "local": local} {
		if err := repo.Refresh(context.Background()); err != nil {
			t.Fatalf("%s: Refresh: %v", name, err)
		}
		got, err := repo.Resolve("main")
		if err != nil || got.Hash != c4 {
			t.Fatalf("%s: after Refresh main = %s (%v), want %s", name, got.Hash, err, c4)
		}
		if got.Subject != "back to east" {
			t.Errorf("%s: subject = %q", name, got.Subject)
		}
		data, err := repo.ReadFile(got, "deploy/topology.yaml")
		if err != nil || string(data) != "primary: east\n" {
			t.Errorf("%s: ReadFile = %q, %v", name, data, err)
		}
	}
}

func TestRelate(t *testing.T) {
	h := makeHistory(t)
	repo, err := gitsource.Open(context.Background(), h.repo.Dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name               string
		recorded, applying string
		want               gitsource.Relation
	}{
		{"same", h.c2, h.c2, gitsource.Same},
		{"forward", h.c1, h.c3, gitsource.Forward},
		{"rollback", h.c3, h.c1, gitsource.Rollback},
		{"diverged", h.c3, h.feature1, gitsource.Diverged},
		{"recorded not in repository", strings.Repeat("ab", 20), h.c3, gitsource.Unknown},
		{"recorded not a hash", "v1.0-handmade", h.c3, gitsource.Unknown},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := repo.Relate(c.recorded, c.applying)
			if err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Errorf("Relate = %s, want %s", got, c.want)
			}
		})
	}
}

// TestHTTPSTokenAuth serves a bare repository with git's own smart HTTP
// backend behind basic auth, and fetches it with and without the token.
func TestHTTPSTokenAuth(t *testing.T) {
	h := makeHistory(t)
	root := t.TempDir()
	h.repo.Git("clone", "-q", "--bare", h.repo.Dir, filepath.Join(root, "topology.git"))
	execPath := h.repo.Git("--exec-path")
	const token = "s3cr3t-token-value"
	backend := &cgi.Handler{
		Path:   filepath.Join(execPath, "git-http-backend"),
		Env:    []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"},
		Stderr: io.Discard,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pass, ok := r.BasicAuth(); !ok || pass != token {
			w.Header().Set("WWW-Authenticate", `Basic realm="git"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		backend.ServeHTTP(w, r)
	}))
	defer srv.Close()
	url := srv.URL + "/topology.git"

	_, err := gitsource.Open(context.Background(), url, nil)
	if err == nil || !strings.Contains(err.Error(), "authentication required") {
		t.Fatalf("without a token: error = %v, want authentication required", err)
	}

	env := map[string]string{gitsource.EnvToken: token}
	auth, err := gitsource.AuthFromEnv(url, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	repo, err := gitsource.Open(context.Background(), url, auth)
	if err != nil {
		t.Fatalf("with the token: %v", err)
	}
	c, err := repo.Resolve("v2")
	if err != nil || c.Hash != h.c2 {
		t.Fatalf("Resolve(v2) = %s, %v", c.Hash, err)
	}

	// A token embedded in the URL never shows in errors or the location.
	withCreds := strings.Replace(srv.URL, "http://", "http://user:"+token+"@", 1) + "/missing.git"
	_, err = gitsource.Open(context.Background(), withCreds, nil)
	if err == nil {
		t.Fatal("missing repository: no error")
	}
	if strings.Contains(err.Error(), token) {
		t.Fatalf("error shows the token: %v", err)
	}
}

func TestAuthFromEnv(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(keyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		location string
		env      map[string]string
		wantUser string // for BasicAuth
		wantNil  bool
		wantErr  string
	}{
		{name: "https with token", location: "https://git.example.com/org/topology.git",
			env: map[string]string{gitsource.EnvToken: "zz-token-zz"}, wantUser: "x-access-token"},
		{name: "https with token and user", location: "https://git.example.com/org/topology.git",
			env: map[string]string{gitsource.EnvToken: "zz-token-zz", gitsource.EnvUsername: "oauth2"}, wantUser: "oauth2"},
		{name: "https anonymous", location: "https://git.example.com/org/topology.git", wantNil: true},
		{name: "local path", location: "/srv/topology", env: map[string]string{gitsource.EnvToken: "tok"}, wantNil: true},
		{name: "file URL", location: "file:///srv/topology.git", env: map[string]string{gitsource.EnvToken: "tok"}, wantNil: true},
		{name: "ssh agent", location: "git@github.com:org/topology.git", wantNil: true},
		{name: "ssh bad key", location: "git@github.com:org/topology.git",
			env:     map[string]string{gitsource.EnvSSHKey: keyFile, gitsource.EnvSSHPassphrase: "hunter2"},
			wantErr: gitsource.EnvSSHKey + "=" + keyFile},
		{name: "ssh URL bad key", location: "ssh://deploy@git.example.com/topology.git",
			env:     map[string]string{gitsource.EnvSSHKey: keyFile},
			wantErr: "cannot use the SSH key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			auth, err := gitsource.AuthFromEnv(c.location, func(k string) string { return c.env[k] })
			switch {
			case c.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, c.wantErr)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Fatalf("error shows the passphrase: %v", err)
				}
			case err != nil:
				t.Fatal(err)
			case c.wantNil:
				if auth != nil {
					t.Fatalf("auth = %T, want none", auth)
				}
			default:
				basic, ok := auth.(*githttp.BasicAuth)
				if !ok || basic.Username != c.wantUser || basic.Password != c.env[gitsource.EnvToken] {
					t.Fatalf("auth = %#v, want basic auth as %s", auth, c.wantUser)
				}
				if strings.Contains(basic.String(), basic.Password) {
					t.Fatalf("auth String() shows the token: %s", basic)
				}
			}
		})
	}
}

func TestRedact(t *testing.T) {
	cases := map[string]string{
		"https://user:tok@git.example.com/org/t.git": "https://user:REDACTED@git.example.com/org/t.git",
		"https://tok@git.example.com/org/t.git":      "https://REDACTED@git.example.com/org/t.git",
		"https://git.example.com/org/t.git":          "https://git.example.com/org/t.git",
		"ssh://git@git.example.com/t.git":            "ssh://git@git.example.com/t.git",
		"git@github.com:org/t.git":                   "git@github.com:org/t.git",
		"/srv/topology":                              "/srv/topology",
	}
	for in, want := range cases {
		if got := gitsource.Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

// Match lists a commit's files by pattern, sorted, in that commit only.
func TestMatch(t *testing.T) {
	r := gittest.New(t)
	c1 := r.Commit("two", map[string]string{"topologies/orders.yaml": "a\n", "topologies/billing.yaml": "b\n", "topologies/old/x.yaml": "c\n", "README": "hi\n"})
	c2 := r.Commit("three", map[string]string{"topologies/audit.yaml": "d\n"})
	repo, err := gitsource.Open(context.Background(), r.Dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		rev, pattern string
		want         []string
	}{
		{c1, "topologies/*.yaml", []string{"topologies/billing.yaml", "topologies/orders.yaml"}},
		{c2, "./topologies/*.yaml", []string{"topologies/audit.yaml", "topologies/billing.yaml", "topologies/orders.yaml"}},
		{c2, "topologies/o*.yaml", []string{"topologies/orders.yaml"}},
		{c2, "none/*.yaml", nil},
	} {
		c, err := repo.Resolve(tc.rev)
		if err != nil {
			t.Fatal(err)
		}
		got, err := repo.Match(c, tc.pattern)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("Match(%s, %q) = %v, %v; want %v", tc.rev[:8], tc.pattern, got, err, tc.want)
		}
	}
	c, _ := repo.Resolve(c2)
	if _, err := repo.Match(c, "topologies/[.yaml"); err == nil || !strings.Contains(err.Error(), `path pattern "topologies/[.yaml"`) {
		t.Errorf("a malformed pattern: %v", err)
	}
}

// A commit pgtopo writes lands on the followed branch as a child of its
// head, changing the one file; a branch whose push is refused (a hook
// stands in for a protected branch) gets the commit on the fallback
// branch, said; a local repository is never written.
func TestCommitFile(t *testing.T) {
	h := makeHistory(t)
	bare := h.repo.Bare()
	ctx := context.Background()
	repo, err := gitsource.Open(ctx, "file://"+bare, nil)
	if err != nil {
		t.Fatal(err)
	}
	by := gitsource.Author{Name: "pgtopo", Email: "pgtopo@example.com"}
	w, err := repo.CommitFile(ctx, "main", "deploy/topology.yaml", []byte("primary: north\n"), "failover: east → north\n\nwhy", by, "pgtopo/failover")
	if err != nil {
		t.Fatal(err)
	}
	if w.Branch != "main" || w.Refused != "" || w.Commit.Subject != "failover: east → north" {
		t.Fatalf("written %+v", w)
	}
	git := func(args ...string) string { return h.repo.Git(append([]string{"--git-dir", bare}, args...)...) }
	if got := git("rev-parse", "main"); got != w.Commit.Hash {
		t.Fatalf("main is %s, the commit %s", got, w.Commit.Hash)
	}
	if got := git("rev-parse", "main~1"); got != h.c3 {
		t.Fatalf("parent %s, want %s", got, h.c3)
	}
	if got := git("show", "main:deploy/topology.yaml"); got != "primary: north" {
		t.Fatalf("file %q", got)
	}
	if got := git("diff", "--name-only", h.c3, "main"); got != "deploy/topology.yaml" {
		t.Fatalf("changed %q", got)
	}

	// main refuses pushes: the commit goes to the fallback branch.
	hook := filepath.Join(bare, "hooks", "pre-receive")
	if err := os.WriteFile(hook, []byte("#!/bin/sh\nwhile read old new ref; do [ \"$ref\" = refs/heads/main ] && { echo 'main is protected' >&2; exit 1; }; done\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	w, err = repo.CommitFile(ctx, "main", "deploy/topology.yaml", []byte("primary: south\n"), "failover: north → south", by, "pgtopo/failover")
	if err != nil {
		t.Fatal(err)
	}
	if w.Branch != "pgtopo/failover" || w.Refused == "" {
		t.Fatalf("written %+v", w)
	}
	if got := git("show", "pgtopo/failover:deploy/topology.yaml"); got != "primary: south" || git("rev-parse", "pgtopo/failover~1") != git("rev-parse", "main") {
		t.Fatalf("fallback branch: file %q", got)
	}

	if _, err := repo.CommitFile(ctx, "main", "deploy/none.yaml", []byte("x"), "m", by, ""); !errors.Is(err, gitsource.ErrNoFile) {
		t.Fatalf("a file not in the tree: %v", err)
	}
	local, err := gitsource.Open(ctx, h.repo.Dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := local.CommitFile(ctx, "main", "deploy/topology.yaml", []byte("x"), "m", by, ""); err == nil || !strings.Contains(err.Error(), "never written") {
		t.Fatalf("a local repository: %v", err)
	}
}
