package reconcile

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/pgtopo/pgtopo/gitsource"
	"github.com/pgtopo/pgtopo/schema"
)

// Member is one topology of a fleet: its file, which names it in the
// fleet for as long as the file is there, and how to read it.
type Member struct {
	File   string
	Source Source
	// Fights is what the file would fight an earlier file over (the same
	// cluster object, or the same Lease): such a file is not run.
	Fights schema.Findings
	// Revision is the commit the file is read at, when known: a new one
	// wakes the file's loop at once instead of at its next interval.
	Revision string
}

// Fleet runs one Loop per topology file, each on its own clock, so a long
// switchover in one topology does not hold the others' cycles, and a busy
// or lost-primary topology looks again as soon as its own loop wants to.
// Every Interval it lists the files again: a new file gets a loop, a file
// gone has its loop stopped after the cycle under way and its metrics
// dropped.
//
// Several processes may run the same fleet: each topology's Lease lets one
// of them apply it at a time, the others' cycles end busy, and a process
// that dies leaves its Leases to expire and be taken by another.
type Fleet struct {
	// List names the fleet's files now.
	List func(ctx context.Context) ([]Member, error)
	// NewLoop builds the loop of one file (its Name is the file).
	NewLoop  func(m Member) *Loop
	Interval time.Duration
	Log      *slog.Logger
	Metrics  *Metrics

	mu      sync.Mutex
	beat    time.Time // when Run started: the loops' shared beats
	listed  time.Time // when List last ended, for /healthz
	members map[string]*fleetMember
}

type fleetMember struct {
	loop     *Loop
	revision string
	wake     chan struct{}
	stop     chan struct{}
	done     chan struct{}
}

// Run lists and runs the fleet until ctx is done or drain is closed, then
// waits for every loop to stop (each at a step boundary, as one loop does).
func (f *Fleet) Run(ctx context.Context, drain <-chan struct{}) {
	f.mu.Lock()
	f.members = map[string]*fleetMember{}
	f.listed = time.Now()
	f.beat = f.listed
	f.mu.Unlock()
	defer f.stopAll()
	for {
		members, err := f.List(ctx)
		f.mu.Lock()
		f.listed = time.Now()
		f.mu.Unlock()
		if err != nil {
			f.Log.Error("fleet", "error", err.Error())
		} else {
			f.follow(ctx, drain, members)
		}
		timer := time.NewTimer(f.Interval)
		select {
		case <-drain:
			timer.Stop()
			return
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
	}
}

// follow starts a loop for each new file and stops those of files gone.
func (f *Fleet) follow(ctx context.Context, drain <-chan struct{}, members []Member) {
	f.mu.Lock()
	defer f.mu.Unlock()
	want := map[string]bool{}
	for _, m := range members {
		if len(m.Fights) > 0 {
			f.Log.Error("fleet", "topology", m.File, "action", "not run", "error", m.Fights[0].String())
			continue
		}
		want[m.File] = true
		if fm, ok := f.members[m.File]; ok {
			if m.Revision != fm.revision {
				fm.revision = m.Revision
				select {
				case fm.wake <- struct{}{}:
				default: // already woken
				}
			}
			continue
		}
		fm := &fleetMember{loop: f.NewLoop(m), revision: m.Revision, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
		fm.loop.Wake = fm.wake
		fm.loop.Beat = f.beat
		f.members[m.File] = fm
		f.Log.Info("fleet", "topology", m.File, "action", "started")
		stopped := make(chan struct{})
		go func() {
			select {
			case <-drain:
			case <-fm.stop:
			}
			close(stopped)
		}()
		go func() {
			defer close(fm.done)
			fm.loop.Run(ctx, stopped)
		}()
	}
	for _, file := range slices.Sorted(maps.Keys(f.members)) {
		if want[file] {
			continue
		}
		fm := f.members[file]
		delete(f.members, file)
		close(fm.stop)
		f.Log.Info("fleet", "topology", file, "action", "stopped", "reason", "its file is gone")
		go func() {
			<-fm.done
			if f.Metrics != nil {
				f.Metrics.Forget(fm.loop.Topology())
				f.Metrics.Forget(file)
			}
		}()
	}
}

func (f *Fleet) stopAll() {
	f.mu.Lock()
	all := f.members
	f.members = map[string]*fleetMember{}
	f.mu.Unlock()
	for _, fm := range all {
		close(fm.stop)
	}
	for _, fm := range all {
		<-fm.done
	}
}

// Healthy reports whether the fleet listed its files, and every loop
// started or ended a cycle, within maxAge; the time is the stalest of
// them.
func (f *Fleet) Healthy(now time.Time, maxAge time.Duration) (bool, time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ok, oldest := !f.listed.IsZero() && now.Sub(f.listed) <= maxAge, f.listed
	for _, fm := range f.members {
		good, last := fm.loop.Healthy(now, maxAge)
		if !good {
			ok = false
		}
		if last.Before(oldest) {
			oldest = last
		}
	}
	return ok, oldest
}

// Topology is the loop's topology's name as its metrics say it.
func (l *Loop) Topology() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return cmp.Or(l.topology, l.Name)
}

// GitFleet is the topology files matching a path pattern at a revision of
// one repository. Only List refreshes the repository (once per call,
// however many topologies the fleet has); each topology reads its file at
// the commit List last resolved, one reader at a time.
type GitFleet struct {
	Repo      *gitsource.Repository
	Ref       string
	Pattern   string
	Validator *schema.Validator

	mu     sync.Mutex
	listed bool
	commit gitsource.Commit
	err    error // the last refresh's, which every read reports until one works
}

// NewGitFleet wraps a repository just opened (and so fresh).
func NewGitFleet(repo *gitsource.Repository, ref, pattern string, v *schema.Validator) *GitFleet {
	return &GitFleet{Repo: repo, Ref: ref, Pattern: pattern, Validator: v}
}

// List refreshes the repository (not the first time: Open just fetched
// it) and lists the files matching Pattern at the commit Ref names, a
// Member each.
func (g *GitFleet) List(ctx context.Context) ([]Member, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.err = nil
	if g.listed {
		g.err = g.Repo.Refresh(ctx)
	}
	g.listed = true
	if g.err == nil {
		g.commit, g.err = g.Repo.Resolve(g.Ref)
	}
	if g.err != nil {
		return nil, g.err
	}
	c := g.commit
	files, err := g.Repo.Match(c, g.Pattern)
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%s at %s: no file matches --path %s", g.Repo.Location(), c.Short(), g.Pattern)
	}
	var loaded []schema.Loaded
	for _, file := range files {
		data, err := g.Repo.ReadFile(c, file)
		if err != nil {
			continue // its own loop says why
		}
		if t, _, err := g.Validator.Load(file, data); err == nil && t != nil {
			loaded = append(loaded, schema.Loaded{File: file, Data: data, Topology: t})
		}
	}
	fights := map[string]schema.Findings{}
	for _, f := range schema.Overlaps(loaded) {
		fights[f.File] = append(fights[f.File], f)
	}
	out := make([]Member, len(files))
	for i, file := range files {
		out[i] = Member{File: file, Source: &gitMember{fleet: g, path: file}, Fights: fights[file], Revision: c.Hash}
	}
	return out, nil
}

// gitMember reads one file of a GitFleet at the commit it last listed.
type gitMember struct {
	fleet *GitFleet
	path  string
}

func (m *gitMember) Load(context.Context) (*Input, error) {
	g := m.fleet
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return nil, g.err
	}
	in, err := (&GitSource{Repo: g.Repo, Path: m.path, Validator: g.Validator}).At(g.commit)
	if err != nil {
		return nil, err
	}
	unlocked := in.relate
	in.relate = func(recorded string) (gitsource.Relation, error) {
		g.mu.Lock()
		defer g.mu.Unlock()
		return unlocked(recorded)
	}
	return in, nil
}

// CanRecord says whether the fleet's repository and ref take a commit.
func (m *gitMember) CanRecord() error {
	g := m.fleet
	g.mu.Lock()
	defer g.mu.Unlock()
	return m.source().CanRecord()
}

// Prepare and Publish hold the fleet's lock: a List refreshing the
// repository meanwhile would race them.
func (m *gitMember) Prepare(ctx context.Context, content []byte, message string) (Prepared, error) {
	g := m.fleet
	g.mu.Lock()
	defer g.mu.Unlock()
	p, err := m.source().Prepare(ctx, content, message)
	if err != nil {
		return p, err
	}
	unlocked := p.relate
	p.relate = func(recorded string) (gitsource.Relation, error) {
		g.mu.Lock()
		defer g.mu.Unlock()
		return unlocked(recorded)
	}
	return p, nil
}

func (m *gitMember) Publish(ctx context.Context, p Prepared) (string, error) {
	g := m.fleet
	g.mu.Lock()
	defer g.mu.Unlock()
	return m.source().Publish(ctx, p)
}

func (m *gitMember) source() *GitSource {
	return &GitSource{Repo: m.fleet.Repo, Ref: m.fleet.Ref, Path: m.path, Validator: m.fleet.Validator}
}
