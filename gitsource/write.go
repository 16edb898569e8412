package gitsource

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// Author is who a commit pgtopo writes is by.
type Author struct {
	Name, Email string
}

// Written is where a commit pgtopo wrote went.
type Written struct {
	Commit Commit
	// Branch is the branch it was pushed to: the one followed, or, when
	// that refused the push (protected, or moved meanwhile), Fallback.
	Branch string
	// Refused says why the followed branch refused it ("" when it took it).
	Refused string
}

// Prepared is a commit written into the repository's object store on top
// of a branch's head, not pushed yet: its hash can be recorded before
// anyone else sees it.
type Prepared struct {
	Commit Commit
	hash   plumbing.Hash
}

// CommitFile writes content to file as a new commit on top of branch's
// head, fetched afresh, and pushes it to branch; when the remote refuses
// that push (a protected branch, or one that moved meanwhile) it pushes
// the same commit to fallback instead and says why. Only a remote is
// written: a local repository is opened in place, and its work tree is
// someone's.
func (r *Repository) CommitFile(ctx context.Context, branch, file string, content []byte, message string, by Author, fallback string) (Written, error) {
	p, err := r.PrepareCommit(ctx, branch, file, content, message, by)
	if err != nil {
		return Written{}, err
	}
	return r.Push(ctx, p, branch, fallback)
}

// PrepareCommit makes the commit CommitFile pushes, and pushes nothing.
func (r *Repository) PrepareCommit(ctx context.Context, branch, file string, content []byte, message string, by Author) (Prepared, error) {
	if err := r.Writable(); err != nil {
		return Prepared{}, err
	}
	if err := r.Refresh(ctx); err != nil {
		return Prepared{}, err
	}
	head, err := r.repo.Reference(plumbing.NewBranchReferenceName(branch), true)
	if err != nil {
		return Prepared{}, fmt.Errorf("%s: branch %q: %w", r.location, branch, err)
	}
	parent, err := r.repo.CommitObject(head.Hash())
	if err != nil {
		return Prepared{}, fmt.Errorf("%s: commit %s: %w", r.location, head.Hash(), err)
	}
	blob, err := r.store(plumbing.BlobObject, content)
	if err != nil {
		return Prepared{}, err
	}
	clean := path.Clean(strings.TrimPrefix(file, "./"))
	tree, err := r.replaceIn(parent.TreeHash, strings.Split(clean, "/"), blob)
	if err != nil {
		return Prepared{}, fmt.Errorf("%s: %s: %w", r.location, clean, err)
	}
	sig := object.Signature{Name: by.Name, Email: by.Email, When: time.Now()}
	c := &object.Commit{Author: sig, Committer: sig, Message: message, TreeHash: tree, ParentHashes: []plumbing.Hash{parent.Hash}}
	obj := r.repo.Storer.NewEncodedObject()
	if err := c.Encode(obj); err != nil {
		return Prepared{}, err
	}
	hash, err := r.repo.Storer.SetEncodedObject(obj)
	if err != nil {
		return Prepared{}, err
	}
	written, err := r.repo.CommitObject(hash)
	if err != nil {
		return Prepared{}, err
	}
	return Prepared{Commit: commitOf(written), hash: hash}, nil
}

// Push pushes a prepared commit to branch, never forced; when the remote
// refuses it there, to fallback, saying why.
func (r *Repository) Push(ctx context.Context, p Prepared, branch, fallback string) (Written, error) {
	w := Written{Commit: p.Commit, Branch: branch}
	err := r.push(ctx, p.hash, branch)
	if err == nil {
		return w, nil
	}
	if fallback == "" {
		return w, err
	}
	w.Refused, w.Branch = err.Error(), fallback
	if err := r.push(ctx, p.hash, fallback); err != nil {
		return w, fmt.Errorf("%s (and %s: %s)", err, branch, w.Refused)
	}
	return w, nil
}

// push points a local branch at hash and pushes it, never forced.
func (r *Repository) push(ctx context.Context, hash plumbing.Hash, branch string) error {
	name := plumbing.NewBranchReferenceName(branch)
	if err := r.repo.Storer.SetReference(plumbing.NewHashReference(name, hash)); err != nil {
		return err
	}
	spec := config.RefSpec(name.String() + ":" + name.String())
	err := r.repo.PushContext(ctx, &git.PushOptions{RemoteName: "origin", RefSpecs: []config.RefSpec{spec}, Auth: r.auth})
	if err != nil && !errors.Is(err, git.NoErrAlreadyUpToDate) {
		return fmt.Errorf("%s: push to %s: %s", r.location, branch, redactText(err.Error()))
	}
	return nil
}

func (r *Repository) store(kind plumbing.ObjectType, content []byte) (plumbing.Hash, error) {
	obj := r.repo.Storer.NewEncodedObject()
	obj.SetType(kind)
	w, err := obj.Writer()
	if err != nil {
		return plumbing.ZeroHash, err
	}
	if _, err := w.Write(content); err != nil {
		return plumbing.ZeroHash, err
	}
	if err := w.Close(); err != nil {
		return plumbing.ZeroHash, err
	}
	return r.repo.Storer.SetEncodedObject(obj)
}

// replaceIn returns the tree that is treeHash with the existing file at
// parts replaced by blob; the file must exist (pgtopo only rewrites a
// topology it read).
func (r *Repository) replaceIn(treeHash plumbing.Hash, parts []string, blob plumbing.Hash) (plumbing.Hash, error) {
	tree, err := r.repo.TreeObject(treeHash)
	if err != nil {
		return plumbing.ZeroHash, err
	}
	entries := make([]object.TreeEntry, len(tree.Entries))
	copy(entries, tree.Entries)
	for i, e := range entries {
		if e.Name != parts[0] {
			continue
		}
		switch {
		case len(parts) == 1 && e.Mode.IsFile():
			entries[i].Hash = blob
		case len(parts) > 1 && e.Mode == filemode.Dir:
			sub, err := r.replaceIn(e.Hash, parts[1:], blob)
			if err != nil {
				return plumbing.ZeroHash, err
			}
			entries[i].Hash = sub
		default:
			return plumbing.ZeroHash, fmt.Errorf("%s is not a file", parts[0])
		}
		obj := r.repo.Storer.NewEncodedObject()
		if err := (&object.Tree{Entries: entries}).Encode(obj); err != nil {
			return plumbing.ZeroHash, err
		}
		return r.repo.Storer.SetEncodedObject(obj)
	}
	return plumbing.ZeroHash, fmt.Errorf("%s: %w", parts[0], ErrNoFile)
}

// Writable says why pgtopo would not write to the repository.
func (r *Repository) Writable() error {
	if !r.remote {
		return fmt.Errorf("%s: a local repository is read in place, never written: follow it by URL (file://, https://, ssh) for pgtopo to commit to it", r.location)
	}
	return nil
}

// IsBranch reports whether name is a branch of the repository.
func (r *Repository) IsBranch(name string) bool {
	_, err := r.repo.Reference(plumbing.NewBranchReferenceName(name), true)
	return err == nil
}

// DefaultBranch is the branch HEAD points to.
func (r *Repository) DefaultBranch() (string, error) {
	head, err := r.repo.Storer.Reference(plumbing.HEAD)
	if err != nil || head.Type() != plumbing.SymbolicReference || !head.Target().IsBranch() {
		return "", fmt.Errorf("%s: HEAD names no branch: give --ref BRANCH for pgtopo to commit to", r.location)
	}
	return head.Target().Short(), nil
}
