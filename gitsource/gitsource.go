// Package gitsource reads the topology file from a git repository: a local
// repository opened in place, or a remote one fetched into memory. It
// resolves branches, tags and commit hashes to the commit that was read, so
// the revision can flow into the plan and the record step.
package gitsource

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/storage/memory"

	"github.com/pgtopo/pgtopo/plan"
)

// Commit is the commit a topology was read from.
type Commit struct {
	Hash    string
	Time    time.Time
	Subject string
}

// Short is the abbreviated hash people read.
func (c Commit) Short() string { return plan.ShortRevision(c.Hash) }

// Repository is an opened topology repository.
type Repository struct {
	location string // as the user gave it, credentials removed
	remote   bool
	auth     transport.AuthMethod
	repo     *git.Repository
}

// fetchSpecs mirror branches and tags: an in-memory clone then resolves
// "main", "v1.2" and hashes exactly as a local clone would.
var fetchSpecs = []config.RefSpec{"+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"}

// scpLike matches git's user@host:path form of SSH URLs.
var scpLike = regexp.MustCompile(`^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:`)

// IsRemote reports whether location names a remote (fetched into memory)
// rather than a local path (opened in place).
func IsRemote(location string) bool {
	return strings.Contains(location, "://") || scpLike.MatchString(location)
}

// Open opens a local repository in place, or fetches a remote one into
// memory. auth may be nil (anonymous, or local).
func Open(ctx context.Context, location string, auth transport.AuthMethod) (*Repository, error) {
	r := &Repository{location: Redact(location), remote: IsRemote(location), auth: auth}
	if !r.remote {
		if err := r.openLocal(location); err != nil {
			return nil, err
		}
		return r, nil
	}
	repo, err := git.Init(memory.NewStorage(), nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.location, err)
	}
	if _, err := repo.CreateRemote(&config.RemoteConfig{Name: "origin", URLs: []string{location}, Fetch: fetchSpecs}); err != nil {
		return nil, fmt.Errorf("%s: %w", r.location, err)
	}
	r.repo = repo
	if err := r.Refresh(ctx); err != nil {
		return nil, err
	}
	if err := r.followRemoteHEAD(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Repository) openLocal(dir string) error {
	repo, err := git.PlainOpenWithOptions(dir, &git.PlainOpenOptions{DetectDotGit: true, EnableDotGitCommonDir: true})
	if err != nil {
		if errors.Is(err, git.ErrRepositoryNotExists) {
			return fmt.Errorf("%s: not a git repository (give a local repository or a URL such as https://host/org/repo.git)", r.location)
		}
		return fmt.Errorf("%s: %w", r.location, err)
	}
	r.repo = repo
	return nil
}

// Location is where the repository is, safe to print.
func (r *Repository) Location() string { return r.location }

// Refresh brings the repository up to date: a remote is fetched again; a
// local repository is reopened so commits made since are seen.
func (r *Repository) Refresh(ctx context.Context) error {
	if !r.remote {
		return r.openLocal(r.location)
	}
	err := r.repo.FetchContext(ctx, &git.FetchOptions{RemoteName: "origin", RefSpecs: fetchSpecs, Auth: r.auth, Force: true, Tags: git.NoTags})
	if err != nil && !errors.Is(err, git.NoErrAlreadyUpToDate) {
		return fmt.Errorf("%s: fetch: %s", r.location, redactText(err.Error()))
	}
	return nil
}

// followRemoteHEAD points HEAD where the remote's HEAD points, so an empty
// --ref means the remote's default branch, as after git clone. Done once at
// Open: a default branch rarely moves, and asking on every Refresh would
// cost the loop a round trip each cycle.
func (r *Repository) followRemoteHEAD(ctx context.Context) error {
	origin, err := r.repo.Remote("origin")
	if err != nil {
		return fmt.Errorf("%s: %w", r.location, err)
	}
	refs, err := origin.ListContext(ctx, &git.ListOptions{Auth: r.auth})
	if err != nil {
		return fmt.Errorf("%s: list references: %s", r.location, redactText(err.Error()))
	}
	for _, ref := range refs {
		if ref.Name() == plumbing.HEAD && ref.Type() == plumbing.SymbolicReference {
			return r.repo.Storer.SetReference(plumbing.NewSymbolicReference(plumbing.HEAD, ref.Target()))
		}
	}
	return nil
}

// Resolve turns a branch, tag, hash (full or abbreviated) or expression
// such as HEAD~1 into the commit it names.
func (r *Repository) Resolve(rev string) (Commit, error) {
	if rev == "" {
		rev = "HEAD"
	}
	h, err := r.repo.ResolveRevision(plumbing.Revision(rev))
	if err != nil {
		hint := "a branch, tag or commit hash"
		if r.remote {
			hint += "; only branches and tags are fetched from a remote"
		}
		return Commit{}, fmt.Errorf("%s: revision %q not found (%s): %w", r.location, rev, hint, err)
	}
	c, err := r.repo.CommitObject(*h)
	if err != nil {
		return Commit{}, fmt.Errorf("%s: commit %s: %w", r.location, h, err)
	}
	return commitOf(c), nil
}

func commitOf(c *object.Commit) Commit {
	subject, _, _ := strings.Cut(c.Message, "\n")
	return Commit{Hash: c.Hash.String(), Time: c.Committer.When, Subject: subject}
}

// MaxFileBytes is the largest topology file read from a repository (as
// topology.MaxFileBytes for files).
const MaxFileBytes = 1 << 20

// ErrNoFile is returned by ReadFile when the commit has no such file.
var ErrNoFile = errors.New("no such file")

// ReadFile returns the content of file at commit.
func (r *Repository) ReadFile(c Commit, file string) ([]byte, error) {
	clean := path.Clean(strings.TrimPrefix(file, "./"))
	commit, err := r.repo.CommitObject(plumbing.NewHash(c.Hash))
	if err != nil {
		return nil, fmt.Errorf("%s: commit %s: %w", r.location, c.Short(), err)
	}
	f, err := commit.File(clean)
	if err != nil {
		if errors.Is(err, object.ErrFileNotFound) {
			return nil, fmt.Errorf("%s at %s: %s: %w (check --path)", r.location, c.Short(), clean, ErrNoFile)
		}
		return nil, fmt.Errorf("%s at %s: %s: %w", r.location, c.Short(), clean, err)
	}
	if f.Size > MaxFileBytes {
		return nil, fmt.Errorf("%s at %s: %s: %d bytes, more than the %d a topology file may hold", r.location, c.Short(), clean, f.Size, MaxFileBytes)
	}
	s, err := f.Contents()
	if err != nil {
		return nil, fmt.Errorf("%s at %s: %s: %w", r.location, c.Short(), clean, err)
	}
	return []byte(s), nil
}

// Match lists the files at commit whose paths match pattern (path.Match:
// "topologies/*.yaml"), sorted.
func (r *Repository) Match(c Commit, pattern string) ([]string, error) {
	pattern = path.Clean(strings.TrimPrefix(pattern, "./"))
	if _, err := path.Match(pattern, ""); err != nil {
		return nil, fmt.Errorf("path pattern %q: %w", pattern, err)
	}
	commit, err := r.repo.CommitObject(plumbing.NewHash(c.Hash))
	if err != nil {
		return nil, fmt.Errorf("%s: commit %s: %w", r.location, c.Short(), err)
	}
	files, err := commit.Files()
	if err != nil {
		return nil, fmt.Errorf("%s at %s: %w", r.location, c.Short(), err)
	}
	var out []string
	err = files.ForEach(func(f *object.File) error {
		if ok, _ := path.Match(pattern, f.Name); ok {
			out = append(out, f.Name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s at %s: %w", r.location, c.Short(), err)
	}
	slices.Sort(out)
	return out, nil
}

// IsPattern reports whether a --path is a pattern of several files.
func IsPattern(p string) bool { return strings.ContainsAny(p, "*?[") }

// Relation is how a recorded revision relates to the one being applied.
type Relation int

// Relations.
const (
	// Unknown: the recorded commit is not in this repository.
	Unknown Relation = iota
	// Same commit.
	Same
	// Forward: the recorded commit is an ancestor of the applied one.
	Forward
	// Rollback: the applied commit is an ancestor of the recorded one.
	Rollback
	// Diverged: neither is an ancestor of the other (a rewritten history).
	Diverged
)

func (r Relation) String() string {
	return [...]string{"unknown", "same", "forward", "rollback", "diverged"}[r]
}

// Relate tells whether applying commit applying after recorded moves
// forward, rolls back, or leaves the recorded history.
func (r *Repository) Relate(recorded, applying string) (Relation, error) {
	if recorded == applying {
		return Same, nil
	}
	if !plumbing.IsHash(recorded) {
		return Unknown, nil
	}
	rec, err := r.repo.CommitObject(plumbing.NewHash(recorded))
	if err != nil {
		return Unknown, nil
	}
	app, err := r.repo.CommitObject(plumbing.NewHash(applying))
	if err != nil {
		return Unknown, fmt.Errorf("%s: commit %s: %w", r.location, applying, err)
	}
	if ok, err := rec.IsAncestor(app); err != nil {
		return Unknown, fmt.Errorf("%s: history of %s: %w", r.location, applying, err)
	} else if ok {
		return Forward, nil
	}
	if ok, err := app.IsAncestor(rec); err != nil {
		return Unknown, fmt.Errorf("%s: history of %s: %w", r.location, recorded, err)
	} else if ok {
		return Rollback, nil
	}
	return Diverged, nil
}

// Redact removes credentials from a URL so it can be printed.
func Redact(location string) string {
	if !strings.Contains(location, "://") {
		return location
	}
	u, err := url.Parse(location)
	if err != nil || u.User == nil {
		return location
	}
	if _, hasPassword := u.User.Password(); hasPassword {
		u.User = url.UserPassword(u.User.Username(), "REDACTED")
	} else if u.Scheme == "https" || u.Scheme == "http" {
		// A bare user in an HTTPS URL is usually a token.
		u.User = url.User("REDACTED")
	}
	return u.String()
}

var urlInText = regexp.MustCompile(`[a-z][a-z0-9+.-]*://[^\s"']+`)

// redactText removes credentials from every URL inside an error text.
func redactText(s string) string {
	return urlInText.ReplaceAllStringFunc(s, Redact)
}
