// Package reconcile is one GitOps cycle (read the topology, observe, plan,
// apply) and the loop that repeats it, with the metrics it exports.
package reconcile

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/pgtopo/pgtopo/gitsource"
	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/schema"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// Input is a validated topology and where it came from.
type Input struct {
	Desired *topology.Desired
	// Revision is the commit read, empty for a plain file.
	Revision string
	// Commit describes Revision (zero for a plain file).
	Commit gitsource.Commit
	// Findings are the validator's warnings (errors make Load fail).
	Findings schema.Findings
	// Source is the file as read, for a saved plan.
	Source plan.Source
	// relate orders a recorded revision against Revision; nil for files.
	relate func(recorded string) (gitsource.Relation, error)
}

// InvalidError is a topology the validator rejected; Findings say where.
type InvalidError struct {
	Name     string
	Findings schema.Findings
}

func (e *InvalidError) Error() string {
	var errs []schema.Finding
	for _, f := range e.Findings {
		if f.Severity != schema.SeverityWarning {
			errs = append(errs, f)
		}
	}
	if len(errs) == 0 {
		return fmt.Sprintf("%s: invalid topology", e.Name)
	}
	return fmt.Sprintf("%s: invalid topology, %d problem(s), the first: %s", e.Name, len(errs), errs[0])
}

// Source produces the desired topology, fresh on every call.
type Source interface {
	Load(ctx context.Context) (*Input, error)
}

// FileSource reads a plain file.
type FileSource struct {
	Path      string
	Validator *schema.Validator
}

// Load reads and validates the file.
func (s *FileSource) Load(context.Context) (*Input, error) {
	data, err := topology.ReadFile(s.Path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.Path, err)
	}
	return validate(s.Validator, s.Path, data)
}

// GitSource reads a file at a revision of a repository, refreshing the
// repository (fetch, or reopen) on every Load.
type GitSource struct {
	Repo      *gitsource.Repository
	Ref       string
	Path      string
	Validator *schema.Validator
	// fresh skips the refresh on the first Load after Open.
	fresh bool
}

// NewGitSource wraps an opened repository.
func NewGitSource(repo *gitsource.Repository, ref, path string, v *schema.Validator) *GitSource {
	return &GitSource{Repo: repo, Ref: ref, Path: path, Validator: v, fresh: true}
}

// Load refreshes the repository and reads the file at Ref.
func (s *GitSource) Load(ctx context.Context) (*Input, error) {
	if !s.fresh {
		if err := s.Repo.Refresh(ctx); err != nil {
			return nil, err
		}
	}
	s.fresh = false
	c, err := s.Repo.Resolve(s.Ref)
	if err != nil {
		return nil, err
	}
	return s.At(c)
}

// At reads and validates the file at commit c.
func (s *GitSource) At(c gitsource.Commit) (*Input, error) {
	data, err := s.Repo.ReadFile(c, s.Path)
	if err != nil {
		return nil, err
	}
	in, err := validate(s.Validator, s.Path, data)
	if err != nil {
		var invalid *InvalidError
		if errors.As(err, &invalid) {
			invalid.Name = fmt.Sprintf("%s at %s", s.Path, c.Short())
			return nil, invalid
		}
		return nil, fmt.Errorf("%s at %s: %w", s.Path, c.Short(), err)
	}
	in.Revision, in.Commit = c.Hash, c
	in.relate = func(recorded string) (gitsource.Relation, error) { return s.Repo.Relate(recorded, c.Hash) }
	return in, nil
}

// Validate reads a topology from bytes, as a saved plan carries it.
func Validate(v *schema.Validator, name string, data []byte) (*Input, error) {
	return validate(v, name, data)
}

func validate(v *schema.Validator, name string, data []byte) (*Input, error) {
	top, fs, err := v.Load(name, data)
	if err != nil {
		return nil, err
	}
	if top == nil {
		return nil, &InvalidError{Name: name, Findings: fs}
	}
	d, err := top.Desired()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &Input{Desired: d, Findings: fs, Source: plan.Source{Name: name, Content: string(data)}}, nil
}

// PlanOptions orders every revision recorded in snap against the input's
// revision, so the plan can refuse a rollback.
func (in *Input) PlanOptions(snap *snapshot.Snapshot, allowRollback bool) (plan.Options, error) {
	return planOptions(snap, in.Revision, allowRollback, in.relate)
}

// PlanOptions orders every revision recorded in snap against the prepared
// commit's, as Input.PlanOptions does for a commit read.
func (p Prepared) PlanOptions(snap *snapshot.Snapshot) (plan.Options, error) {
	return planOptions(snap, p.Revision, false, p.relate)
}

func planOptions(snap *snapshot.Snapshot, revision string, allowRollback bool, relate func(string) (gitsource.Relation, error)) (plan.Options, error) {
	opt := plan.Options{Revision: revision, AllowRollback: allowRollback}
	if relate == nil {
		return opt, nil
	}
	opt.History = map[string]plan.History{}
	for _, rec := range snap.RecordedRevisions() {
		rel, err := relate(rec)
		if err != nil {
			return opt, err
		}
		switch rel {
		case gitsource.Forward, gitsource.Same:
			opt.History[rec] = plan.HistoryForward
		case gitsource.Rollback:
			opt.History[rec] = plan.HistoryRollback
		case gitsource.Diverged:
			opt.History[rec] = plan.HistoryDiverged
		default:
			opt.History[rec] = plan.HistoryUnknown
		}
	}
	return opt, nil
}

// Recorder writes a topology's new text as a commit of the repository
// its Source reads: the record of a change pgtopo made alone (an automatic
// failover), so the next cycle does not undo it and a person reviews it.
// The commit is prepared before the change, so that the change records
// its revision on the clusters: a loop that still reads the older commit
// then sees a rollback and refuses, even before the commit is published.
type Recorder interface {
	// CanRecord says why a record could not be written, before the change.
	CanRecord() error
	// Prepare makes the commit of content with message, not published.
	Prepare(ctx context.Context, content []byte, message string) (Prepared, error)
	// Publish pushes a prepared commit and says where it went.
	Publish(ctx context.Context, p Prepared) (string, error)
}

// Prepared is a record's commit, made and not published yet.
type Prepared struct {
	Revision string
	commit   gitsource.Prepared
	branch   string
	relate   func(recorded string) (gitsource.Relation, error)
}

// recordAuthor signs the commits pgtopo writes.
var recordAuthor = gitsource.Author{Name: "pgtopo", Email: "pgtopo@localhost"}

// CanRecord checks the repository is one pgtopo writes (a remote) and the
// followed ref a branch.
func (s *GitSource) CanRecord() error {
	if err := s.Repo.Writable(); err != nil {
		return err
	}
	_, err := s.branch()
	return err
}

// Prepare commits content on top of the followed branch's head, fetched
// afresh, without pushing.
func (s *GitSource) Prepare(ctx context.Context, content []byte, message string) (Prepared, error) {
	branch, err := s.branch()
	if err != nil {
		return Prepared{}, err
	}
	c, err := s.Repo.PrepareCommit(ctx, branch, s.Path, content, message, recordAuthor)
	if err != nil {
		return Prepared{}, err
	}
	return Prepared{Revision: c.Commit.Hash, commit: c, branch: branch,
		relate: func(recorded string) (gitsource.Relation, error) { return s.Repo.Relate(recorded, c.Commit.Hash) }}, nil
}

// Publish pushes the prepared commit to the followed branch, or, when the
// remote refuses it there, to a branch of its own, and says which.
func (s *GitSource) Publish(ctx context.Context, p Prepared) (string, error) {
	fallback := "pgtopo/" + strings.TrimSuffix(path.Base(s.Path), path.Ext(s.Path)) + "-" + time.Now().UTC().Format("20060102-150405")
	w, err := s.Repo.Push(ctx, p.commit, p.branch, fallback)
	if err != nil {
		return "", err
	}
	if w.Refused != "" {
		return fmt.Sprintf("%s refused the commit (%s): pushed %s to branch %s of %s instead: merge it into %s", p.branch, w.Refused, w.Commit.Short(), w.Branch, s.Repo.Location(), p.branch), nil
	}
	return fmt.Sprintf("committed %s to %s of %s", w.Commit.Short(), p.branch, s.Repo.Location()), nil
}

// branch is the branch the source follows: its ref, or the remote's
// default branch when none was given.
func (s *GitSource) branch() (string, error) {
	if s.Ref != "" {
		if !s.Repo.IsBranch(s.Ref) {
			return "", fmt.Errorf("%s: --ref %s is not a branch: a change pgtopo made alone could not be committed to it", s.Repo.Location(), s.Ref)
		}
		return s.Ref, nil
	}
	return s.Repo.DefaultBranch()
}
