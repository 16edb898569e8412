package reconcile

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgtopo/pgtopo/gitsource"
	"github.com/pgtopo/pgtopo/gitsource/gittest"
	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/schema"
	"github.com/pgtopo/pgtopo/snapshot"
)

// countingSource counts its loads; each load is one cycle of its loop.
type countingSource struct {
	mu    sync.Mutex
	loads int
	in    *Input
}

func (s *countingSource) Load(context.Context) (*Input, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loads++
	return s.in, nil
}

func (s *countingSource) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loads
}

// The fleet starts a loop per file it lists, stops the loop of a file
// gone (and drops its series), runs no file that fights another, and stops
// every loop when drained.
func TestFleetFollowsItsFiles(t *testing.T) {
	orders, billing, fights := &countingSource{in: input(t)}, &countingSource{in: input(t)}, &countingSource{in: input(t)}
	billingIn := *billing.in
	d := *billingIn.Desired
	d.Name = "billing"
	billingIn.Desired = &d
	billing.in = &billingIn
	var mu sync.Mutex
	listing := []Member{{File: "orders.yaml", Source: orders}, {File: "billing.yaml", Source: billing},
		{File: "copy.yaml", Source: fights, Fights: schema.Findings{{File: "copy.yaml", Message: "cluster object db/orders-east through context lab-east is also managed by orders.yaml"}}}}
	var logs syncBuffer
	m := NewMetrics()
	f := &Fleet{
		List: func(context.Context) ([]Member, error) {
			mu.Lock()
			defer mu.Unlock()
			return listing, nil
		},
		NewLoop: func(mb Member) *Loop {
			return &Loop{Name: mb.File, Source: mb.Source, Observer: fakeObserver{true}, ObserveOnly: true, Interval: 20 * time.Millisecond,
				Log: slog.New(slog.NewTextHandler(&logs, nil)), Metrics: m}
		},
		Interval: 30 * time.Millisecond,
		Log:      slog.New(slog.NewTextHandler(&logs, nil)),
		Metrics:  m,
	}
	drain := make(chan struct{})
	done := make(chan struct{})
	go func() { f.Run(context.Background(), drain); close(done) }()
	waitFor(t, "both files cycled twice", func() bool { return orders.count() >= 2 && billing.count() >= 2 })
	if fights.count() != 0 {
		t.Fatal("a file that fights another was run")
	}
	if !strings.Contains(logs.String(), "topology=copy.yaml action=\"not run\"") {
		t.Fatalf("no line says copy.yaml is not run:\n%s", logs.String())
	}
	if ok, _ := f.Healthy(time.Now(), time.Minute); !ok {
		t.Fatal("a fleet whose loops cycle is not healthy")
	}
	if s := scrape(t, m); !strings.Contains(s, `pgtopo_in_sync{topology="billing"}`) || !strings.Contains(s, `pgtopo_in_sync{topology="orders"}`) {
		t.Fatalf("the metrics lack a topology:\n%s", s)
	}

	mu.Lock()
	listing = listing[:1] // billing.yaml removed
	mu.Unlock()
	waitFor(t, "billing's series dropped", func() bool { return !strings.Contains(scrape(t, m), `topology="billing"`) })
	stoppedAt := billing.count()
	before := orders.count()
	waitFor(t, "orders cycled on", func() bool { return orders.count() >= before+3 })
	if billing.count() != stoppedAt {
		t.Fatal("the loop of a file gone still cycles")
	}

	close(drain)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after drain")
	}
	after := orders.count()
	time.Sleep(60 * time.Millisecond)
	if orders.count() != after {
		t.Fatal("a loop still cycles after the fleet returned")
	}
}

// A repository fleet lists the files matching its pattern at the current
// commit, marks a file that fights an earlier one, and reads each at the
// commit it last resolved, refreshing at most once per Fresh.
func TestGitFleet(t *testing.T) {
	repo := gittest.New(t)
	example, err := os.ReadFile("../examples/topologies/lab-two-sites.yaml")
	if err != nil {
		t.Fatal(err)
	}
	billing := strings.NewReplacer("name: orders\n", "name: billing\n", "orders-", "billing-").Replace(string(example))
	first := repo.Commit("two topologies", map[string]string{"topologies/orders.yaml": string(example), "topologies/billing.yaml": billing, "README.md": "x"})
	r, err := gitsource.Open(context.Background(), repo.Dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	v, err := schema.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	g := NewGitFleet(r, "HEAD", "topologies/*.yaml", v)
	ms, err := g.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].File != "topologies/billing.yaml" || ms[1].File != "topologies/orders.yaml" || len(ms[0].Fights)+len(ms[1].Fights) != 0 {
		t.Fatalf("members %+v", ms)
	}
	in, err := ms[1].Source.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if in.Desired.Name != "orders" || in.Revision != first {
		t.Fatalf("read %s at %s, want orders at %s", in.Desired.Name, in.Revision, first)
	}
	if rel, err := in.relate(first); err != nil || rel != gitsource.Same {
		t.Fatalf("relate: %v %v", rel, err)
	}

	// A copy of orders under another name fights it. Until the fleet lists
	// again, its files are read at the commit it listed.
	second := repo.Commit("a copy", map[string]string{"topologies/zcopy.yaml": string(example)})
	if in, err := ms[1].Source.Load(context.Background()); err != nil || in.Revision != first {
		t.Fatalf("read before listing again: %v, want the listed commit", err)
	}
	ms, err = g.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 || ms[2].File != "topologies/zcopy.yaml" || len(ms[2].Fights) == 0 || len(ms[1].Fights) != 0 || ms[0].Revision != second {
		t.Fatalf("the copy is not marked as fighting orders at %s: %+v", second, ms)
	}

	g.Pattern = "nothing/*.yaml"
	if _, err := g.List(context.Background()); err == nil || !strings.Contains(err.Error(), "no file matches --path nothing/*.yaml") {
		t.Fatalf("an empty match: %v", err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 5s for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// syncBuffer is a log buffer several loops write at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A new commit starts the topology's next cycle at once, not at the end of
// its interval.
func TestFleetWakesALoopOnANewCommit(t *testing.T) {
	src := &countingSource{in: input(t)}
	var mu sync.Mutex
	rev := "c1"
	var logs syncBuffer
	f := &Fleet{
		List: func(context.Context) ([]Member, error) {
			mu.Lock()
			defer mu.Unlock()
			return []Member{{File: "orders.yaml", Source: src, Revision: rev}}, nil
		},
		NewLoop: func(mb Member) *Loop {
			return &Loop{Name: mb.File, Source: mb.Source, Observer: fakeObserver{true}, ObserveOnly: true, Interval: time.Hour,
				Log: slog.New(slog.NewTextHandler(&logs, nil))}
		},
		Interval: 10 * time.Millisecond,
		Log:      slog.New(slog.NewTextHandler(&logs, nil)),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.Run(ctx, nil); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "the first cycle", func() bool { return src.count() == 1 })
	time.Sleep(50 * time.Millisecond)
	if src.count() != 1 {
		t.Fatal("the loop cycled again with no new commit, within its hour")
	}
	mu.Lock()
	rev = "c2"
	mu.Unlock()
	waitFor(t, "a cycle for the new commit", func() bool { return src.count() == 2 })
}

// A fleet member records a new text as a commit: prepared on the branch's
// head (a revision recorded on a cluster at its parent orders forward
// against it), published to the branch, where the next List finds it. A
// local repository takes no record.
func TestGitMemberRecords(t *testing.T) {
	repo := gittest.New(t)
	example, err := os.ReadFile("../examples/topologies/lab-two-sites.yaml")
	if err != nil {
		t.Fatal(err)
	}
	first := repo.Commit("orders", map[string]string{"orders.yaml": string(example)})
	bare := repo.Bare()
	ctx := context.Background()
	v, err := schema.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	r, err := gitsource.Open(ctx, "file://"+bare, nil)
	if err != nil {
		t.Fatal(err)
	}
	g := NewGitFleet(r, "main", "orders.yaml", v)
	ms, err := g.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rec, ok := ms[0].Source.(Recorder)
	if !ok {
		t.Fatalf("%T records nothing", ms[0].Source)
	}
	if err := rec.CanRecord(); err != nil {
		t.Fatal(err)
	}
	moved := strings.Replace(string(example), "primary: orders-east", "primary: orders-west", 1)
	p, err := rec.Prepare(ctx, []byte(moved), "orders: automatic failover")
	if err != nil {
		t.Fatal(err)
	}
	snap := &snapshot.Snapshot{Clusters: []snapshot.ClusterState{{Name: "orders-west", Exists: true, Object: &snapshot.Object{Marks: snapshot.Marks{Revision: first}}}}}
	opt, err := p.PlanOptions(snap)
	if err != nil || opt.Revision != p.Revision || opt.History[first] != plan.HistoryForward {
		t.Fatalf("options %+v (%v): the parent's revision must order forward", opt, err)
	}
	if got := repo.Git("--git-dir", bare, "rev-parse", "main"); got != first {
		t.Fatalf("prepared, and main moved to %s", got)
	}
	where, err := rec.Publish(ctx, p)
	if err != nil || !strings.Contains(where, "committed ") {
		t.Fatalf("publish: %q %v", where, err)
	}
	if got := repo.Git("--git-dir", bare, "rev-parse", "main"); got != p.Revision {
		t.Fatalf("main is %s, the record %s", got, p.Revision)
	}
	ms, err = g.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if in, err := ms[0].Source.Load(ctx); err != nil || in.Desired.Primary().Name != "orders-west" || in.Revision != p.Revision {
		t.Fatalf("after the record: %v", err)
	}

	local, err := gitsource.Open(ctx, repo.Dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	lms, err := NewGitFleet(local, "main", "orders.yaml", v).List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := lms[0].Source.(Recorder).CanRecord(); err == nil || !strings.Contains(err.Error(), "never written") {
		t.Fatalf("a local repository: %v", err)
	}
}
