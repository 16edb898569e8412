package drill

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// fakeClones is the fake world with an operator that makes clones: a
// clone replays the primary's heartbeats up to lag behind until it is cut
// loose, and keeps what it had then.
type fakeClones struct {
	*fakeWorld
	left     []Clone
	clone    *Clone
	promoted bool
	kept     int64
	lag      int64
	checks   map[string]*bool // a check's SQL → what it returns
	deleted  []string
	foreign  bool // an object of the clone's name is someone else's
	// onPromote runs as the clone is cut loose (production changing
	// meanwhile, in a test).
	onPromote func()
}

func newFakeClones() *fakeClones {
	return &fakeClones{fakeWorld: &fakeWorld{primary: "orders-east", rows: map[int64]bool{}, replication: "orders-west\tstreaming async"}, checks: map[string]*bool{}}
}

func (w *fakeClones) LeftClones(context.Context) ([]Clone, error) { return w.left, nil }

func (w *fakeClones) CreateClone(_ context.Context, c Clone, of *snapshot.ClusterState) error {
	if of.Name != "orders-west" || c.Site != "west" {
		return errors.New("cloned the wrong standby")
	}
	if w.foreign {
		return &ForeignObjectError{Clone: c.String(), Topology: "orders"}
	}
	w.clone = &c
	return nil
}

func (w *fakeClones) PromoteClone(context.Context, Clone) error {
	w.mu.Lock()
	w.kept = w.replayedLocked()
	w.promoted = true
	w.mu.Unlock()
	if w.onPromote != nil {
		w.onPromote()
	}
	return nil
}

func (w *fakeClones) DeleteClone(_ context.Context, c Clone) error {
	w.deleted = append(w.deleted, c.String())
	if w.clone != nil && *w.clone == c {
		w.clone = nil
	}
	w.left = slices.DeleteFunc(w.left, func(l Clone) bool { return l == c })
	return nil
}

func (w *fakeClones) OpenClone(context.Context, Clone) (Session, error) {
	if w.clone == nil {
		return nil, errors.New("no clone")
	}
	return &cloneSession{w: w}, nil
}

// replayedLocked is the newest beat the clone holds.
func (w *fakeClones) replayedLocked() int64 {
	if w.promoted {
		return w.kept
	}
	newest := int64(0)
	for id := range w.rows {
		newest = max(newest, id)
	}
	return max(newest-w.lag, 0)
}

type cloneSession struct{ w *fakeClones }

func (s *cloneSession) Exec(_ context.Context, sql string, _ ...any) error {
	if sql == cloneWriteSQL && !s.w.promoted {
		return errors.New("read-only")
	}
	return nil
}

func (s *cloneSession) QueryRow(_ context.Context, sql string, _ ...any) interface{ Scan(dest ...any) error } {
	return row{func(dest ...any) error {
		s.w.mu.Lock()
		defer s.w.mu.Unlock()
		if sql == cloneStateSQL {
			*dest[0].(*bool) = !s.w.promoted
			*dest[1].(*string) = map[bool]string{false: "streaming", true: ""}[s.w.promoted]
			*dest[2].(*int64) = s.w.replayedLocked()
			return nil
		}
		v, ok := s.w.checks[sql]
		if !ok {
			return errors.New("syntax error")
		}
		*dest[0].(**bool) = v
		return nil
	}}
}

func (s *cloneSession) Close(context.Context) error { return nil }

func isolatedOver(t *testing.T, w *fakeClones, checks ...topology.DrillCheck) *Isolated {
	d := desired(t, "orders-east")
	d.DrillChecks = checks
	return &Isolated{World: w, Desired: d, Beat: 5 * time.Millisecond, Poll: 5 * time.Millisecond, Steady: 5 * time.Millisecond,
		StreamTimeout: 5 * time.Second, PromoteTimeout: 5 * time.Second}
}

func yes() *bool { b := true; return &b }
func no() *bool  { b := false; return &b }

func TestIsolatedDrillPasses(t *testing.T) {
	w := newFakeClones()
	w.left = []Clone{{Site: "west", Namespace: "db", Name: "orders-west-drill"}}
	w.checks["SELECT true"] = yes()
	rep, err := isolatedOver(t, w, topology.DrillCheck{Name: "fine", SQL: "SELECT true"}).Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	iso := rep.Isolation
	if rep.Result != "passed" || iso.From != "orders-west" || iso.Clone != "west/db/orders-west-drill" || iso.Production != "unchanged" {
		t.Fatalf("report %+v, isolation %+v", rep, iso)
	}
	if iso.RTO <= 0 || iso.ReplayedAtCut == 0 || iso.KeptAfterPromotion != iso.ReplayedAtCut || len(iso.Checks) != 1 || !iso.Checks[0].Passed {
		t.Fatalf("isolation %+v", iso)
	}
	// The leftover went first, the clone last.
	if len(w.deleted) != 2 || w.clone != nil || len(iso.Removed) != 1 {
		t.Fatalf("deleted %v, clone %v, removed %v", w.deleted, w.clone, iso.Removed)
	}
	if rep.Record().RTOSeconds != iso.RTO || !strings.Contains(rep.Record().Summary, "failover-isolated passed: clone of orders-west") {
		t.Fatalf("record %+v", rep.Record())
	}
	for _, out := range []string{rep.Text(), rep.Markdown()} {
		if !strings.Contains(out, "RTO") || !strings.Contains(out, "unchanged") || !strings.Contains(out, "orders-west-drill") {
			t.Fatalf("report lacks RTO, production or the clone:\n%s", out)
		}
	}
}

// An object whose resource version moved alone (its operator's status)
// does not fail the drill; the report lists it.
func TestIsolatedDrillTakesAStatusUpdateForTheOperators(t *testing.T) {
	w := newFakeClones()
	w.rv = "7"
	w.onPromote = func() { w.mu.Lock(); w.rv = "9"; w.mu.Unlock() }
	rep, err := isolatedOver(t, w).Run(context.Background())
	if err != nil || rep.Isolation.Production != "unchanged" || len(rep.Isolation.StatusOnly) != 2 {
		t.Fatalf("error %v, isolation %+v", err, rep.Isolation)
	}
}

// A clone lagging at the cut lacks heartbeats acknowledged before it: the
// RPO counts them.
func TestIsolatedDrillMeasuresWhatTheCloneLacks(t *testing.T) {
	w := newFakeClones()
	w.lag = 3
	rep, err := isolatedOver(t, w).Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if iso := rep.Isolation; iso.LostHeartbeats < 3 || iso.RPO <= 0 || rep.Record().MissingHeartbeats != iso.LostHeartbeats {
		t.Fatalf("isolation %+v: want at least the 3 heartbeats the clone lagged", iso)
	}
}

// The drill's gates: a check that does not return true, and production
// changing while the clone ran, each fail the drill, and the clone is
// deleted all the same.
func TestIsolatedDrillFails(t *testing.T) {
	for _, tc := range []struct {
		name   string
		checks []topology.DrillCheck
		setup  func(w *fakeClones)
		want   string
	}{
		{name: "a check returns false", checks: []topology.DrillCheck{{Name: "recent", SQL: "SELECT false"}},
			setup: func(w *fakeClones) { w.checks["SELECT false"] = no() }, want: "check(s) failed on the promoted clone: recent"},
		{name: "a check returns NULL", checks: []topology.DrillCheck{{Name: "recent", SQL: "SELECT NULL"}},
			setup: func(w *fakeClones) { w.checks["SELECT NULL"] = nil }, want: "check(s) failed on the promoted clone: recent"},
		{name: "a check errs", checks: []topology.DrillCheck{{Name: "bad", SQL: "SELEKT"}}, want: "check(s) failed on the promoted clone: bad"},
		{name: "production's replication changed", setup: func(w *fakeClones) {
			w.onPromote = func() { w.mu.Lock(); w.replication = "orders-west\tcatchup async"; w.mu.Unlock() }
		}, want: "production changed during the drill: replication on orders-east to orders-west: streaming async → catchup async"},
		{name: "an object's spec changed", setup: func(w *fakeClones) {
			w.rv = "7"
			w.onPromote = func() { w.mu.Lock(); w.instances, w.rv = 3, "9"; w.mu.Unlock() }
		}, want: "production changed during the drill: object east/db/orders-east: spec and marks"},
		{name: "a slot appeared on the primary", setup: func(w *fakeClones) {
			w.onPromote = func() { w.mu.Lock(); w.slots = "orders_west_drill (physical)"; w.mu.Unlock() }
		}, want: "slot on orders-east orders_west_drill (physical): new"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newFakeClones()
			if tc.setup != nil {
				tc.setup(w)
			}
			rep, err := isolatedOver(t, w, tc.checks...).Run(context.Background())
			if err == nil || rep == nil || rep.Result != "failed" || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("report %+v, error %v; want failed with %q", rep, err, tc.want)
			}
			if w.clone != nil || len(w.deleted) != 1 {
				t.Fatalf("the clone was not deleted: %v", w.deleted)
			}
		})
	}
}

// An object of the clone's name that is not this drill's is never
// deleted: the drill fails, saying so.
func TestIsolatedDrillLeavesAForeignObjectAlone(t *testing.T) {
	w := newFakeClones()
	w.foreign = true
	rep, err := isolatedOver(t, w).Run(context.Background())
	var foreign *ForeignObjectError
	if rep == nil || rep.Result != "failed" || !errors.As(err, &foreign) || !strings.Contains(err.Error(), "left alone") {
		t.Fatalf("report %+v, error %v", rep, err)
	}
	if len(w.deleted) != 0 {
		t.Fatalf("deleted %v", w.deleted)
	}
}

// An operator reports a replica ready once its server runs, before it
// streams: the drill waits until the primary streams to every member, so
// a replica connecting late is not taken for a change the drill made.
func TestIsolatedDrillWaitsForEveryReplicaToStream(t *testing.T) {
	w := newFakeClones()
	w.instances, w.replicaDown = 2, true
	connects := time.Now().Add(300 * time.Millisecond)
	go func() {
		time.Sleep(time.Until(connects))
		w.mu.Lock()
		w.replicaDown = false
		w.mu.Unlock()
	}()
	// The drill lasts until after the replica connects.
	w.onPromote = func() { time.Sleep(time.Until(connects.Add(100 * time.Millisecond))) }
	d := isolatedOver(t, w)
	d.Steady = 50 * time.Millisecond
	rep, err := d.Run(context.Background())
	if err != nil || rep.Isolation.Production != "unchanged" {
		t.Fatalf("report %+v, error %v", rep, err)
	}
}

func TestIsolatedDrillRefuses(t *testing.T) {
	t.Run("a standby in a Patroni site", func(t *testing.T) {
		w := newFakeClones()
		d := isolatedOver(t, w)
		d.Desired.Clusters[1].Site.Kind = topology.SitePatroni
		rep, err := d.Run(context.Background())
		var pe *PatroniSiteError
		if rep != nil || !errors.As(err, &pe) || !strings.Contains(err.Error(), "pgtopo drill switchover --to orders-west") {
			t.Fatalf("report %v, error %v", rep, err)
		}
		if w.clone != nil {
			t.Fatal("a clone was created")
		}
	})
	t.Run("production does not hold still", func(t *testing.T) {
		w := newFakeClones()
		d := isolatedOver(t, w)
		d.Settle = 50 * time.Millisecond
		stop := make(chan struct{})
		defer close(stop)
		go func() { // a replica reconnecting again and again
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(time.Millisecond):
				}
				w.mu.Lock()
				w.replication = fmt.Sprintf("orders-west\tcatchup async (%d bytes behind)", i)
				w.mu.Unlock()
			}
		}()
		rep, err := d.Run(context.Background())
		if rep != nil || err == nil || !strings.Contains(err.Error(), "production did not hold still") || w.clone != nil {
			t.Fatalf("report %v, error %v, clone %v", rep, err, w.clone)
		}
	})
	t.Run("an operator not reporting its cluster ready", func(t *testing.T) {
		w := newFakeClones()
		w.building = 1 << 30
		d := isolatedOver(t, w)
		d.Settle = 50 * time.Millisecond
		rep, err := d.Run(context.Background())
		if rep != nil || err == nil || !strings.Contains(err.Error(), "orders-east's operator reports it Creating, not ready") || w.clone != nil {
			t.Fatalf("report %v, error %v, clone %v", rep, err, w.clone)
		}
	})
	t.Run("a topology not DR ready", func(t *testing.T) {
		w := newFakeClones()
		w.notReady = true
		rep, err := isolatedOver(t, w).Run(context.Background())
		var nr *NotReadyError
		if rep != nil || !errors.As(err, &nr) || w.clone != nil {
			t.Fatalf("report %v, error %v, clone %v", rep, err, w.clone)
		}
	})
}

func TestLostBefore(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	acked := []beat{{1, at(0)}, {2, at(100)}, {3, at(200)}, {4, at(300)}, {5, at(900)}}
	for _, tc := range []struct {
		kept     int64
		cut      int
		lost     int
		rpoMilli int
	}{
		{kept: 5, cut: 1000, lost: 0, rpoMilli: 0},
		{kept: 4, cut: 1000, lost: 1, rpoMilli: 100},  // beat 5, acked 100 ms before the cut
		{kept: 2, cut: 1000, lost: 3, rpoMilli: 800},  // beats 3–5
		{kept: 2, cut: 250, lost: 1, rpoMilli: 50},    // beat 3 only: 4 and 5 came after the cut
		{kept: 0, cut: 1000, lost: 5, rpoMilli: 1000}, // nothing replayed
	} {
		lost, rpo := lostBefore(acked, tc.kept, at(tc.cut))
		if lost != tc.lost || time.Duration(rpo*float64(time.Second)).Round(time.Millisecond) != time.Duration(tc.rpoMilli)*time.Millisecond {
			t.Errorf("kept %d, cut at %d ms: %d lost, RPO %.3fs; want %d, %d ms", tc.kept, tc.cut, lost, rpo, tc.lost, tc.rpoMilli)
		}
	}
}

// What fails a drill is a change to what pgtopo owns or marks, to the
// primary's replication or slots; a resource version that moved alone
// (the operator's status) is reported, not failed.
func TestCompareFingerprints(t *testing.T) {
	obj := func(instances int, journal bool, rv string) string {
		o := &snapshot.Object{Spec: snapshot.Spec{Instances: instances}, ResourceVersion: rv}
		if journal {
			o.Marks.Journal = &snapshot.Journal{From: "a", To: "b"}
		}
		return objectPrint(o)
	}
	const k = "object east/db/orders-east"
	for _, tc := range []struct {
		name          string
		before, after map[string]string
		changed, only int
	}{
		{"the same", map[string]string{k: obj(2, false, "7")}, map[string]string{k: obj(2, false, "7")}, 0, 0},
		{"status only", map[string]string{k: obj(2, false, "7")}, map[string]string{k: obj(2, false, "9")}, 0, 1},
		{"spec changed", map[string]string{k: obj(2, false, "7")}, map[string]string{k: obj(3, false, "9")}, 1, 0},
		{"a mark written", map[string]string{k: obj(2, false, "7")}, map[string]string{k: obj(2, true, "9")}, 1, 0},
		{"object gone", map[string]string{k: obj(2, false, "7")}, map[string]string{}, 1, 0},
		{"a walsender gone", map[string]string{"replication on orders-east to orders-west": "streaming async"}, map[string]string{}, 1, 0},
	} {
		changed, only := compareFingerprints(tc.before, tc.after)
		if len(changed) != tc.changed || len(only) != tc.only {
			t.Errorf("%s: changed %q, status only %q", tc.name, changed, only)
		}
	}
}
