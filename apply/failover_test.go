package apply

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/snapshot"
)

// lostWorld: east's site is gone (its cluster unobserved), west is a
// standby that streamed from it at 0/5027AD8 on timeline 1.
func lostWorld() *world {
	east := snapshot.ClusterState{Name: "orders-east", Site: "east", Namespace: "db"}
	west := standbyState("orders-west", "west", westEP, eastEP, 0x5027AD8, 1)
	west.PG.WalReceiver = nil
	w := newWorld(east, west)
	w.snap.Sites[0].Reachable, w.snap.Sites[0].Error = false, "context lab-east: connection refused"
	w.fail["open orders-east"] = errors.New("dial tcp 127.100.10.1:31388: connect: connection refused")
	w.react = operator
	return w
}

var promotedSpec = snapshot.Spec{Topology: "orders", Instances: 2, Version: "15", TeamID: "ACID",
	Replication: snapshot.Replication{Enabled: true, ServiceType: "NodePort"}}

func failoverStep(resume string) plan.Step {
	return plan.Step{Action: plan.ActionFailover, Subject: subject("west", "orders-west"), Payload: &plan.Failover{
		From: subject("east", "orders-east"), To: subject("west", "orders-west"), FromEndpoint: eastEP, ToEndpoint: westEP,
		Promoted: promotedSpec, SystemID: sysID, FromTimeline: 1, Epoch: 1, Consent: plan.ConsentFile, Resume: resume}}
}

func TestFailoverRecordsPromotesAndRecordsDone(t *testing.T) {
	w := lostWorld()
	r, events := runner(w)
	if err := run(t, r, failoverStep("")); err != nil {
		t.Fatal(err)
	}
	wantWrites(t, w,
		"marks orders-west digest= revision= journal=- failover=1:promoting",
		"spec orders-west "+specJSON(promotedSpec),
		"sql orders-west CHECKPOINT",
		"marks orders-west digest= revision= journal=- failover=1:done",
	)
	if c := w.cluster("orders-west"); !c.Writable() || c.PG.Timeline != 2 {
		t.Fatalf("west not primary on timeline 2: %+v", c.PG)
	}
	rec := w.cluster("orders-west").Object.Marks.Failover
	if rec.ForkLSN != 0x5027AD8 || rec.From != "orders-east" || rec.Consent != "spec.acceptDataLoss in the file" {
		t.Fatalf("record %+v", rec)
	}
	want := []EventType{EventStep, EventStep, EventJournal, EventPromote, EventSwitched}
	if got := phases(*events); !slices.Equal(got, want) {
		t.Fatalf("phases %v, want %v", got, want)
	}
}

// The PostgreSQL half of "confirm unreachable": a lost primary that still
// answers at the address the target streamed from is not failed over.
func TestFailoverRefusesALostPrimaryThatAnswers(t *testing.T) {
	w := lostWorld()
	delete(w.fail, "open orders-east")
	r, _ := runner(w)
	err := run(t, r, failoverStep(""))
	if err == nil || !strings.Contains(err.Error(), "orders-east answers through PostgreSQL at 127.100.10.1:31388: it is not lost") {
		t.Fatalf("error %v, want a refusal", err)
	}
	wantWrites(t, w)
}

// The consent is bound to the timeline: a target on another one is not
// promoted on it.
func TestFailoverRefusesATargetOnAnotherTimeline(t *testing.T) {
	w := lostWorld()
	w.cluster("orders-west").PG.Timeline = 2
	r, _ := runner(w)
	if err := run(t, r, failoverStep("")); err == nil || !strings.Contains(err.Error(), "the consent is for system "+sysID+" timeline 1: plan again") {
		t.Fatalf("error %v", err)
	}
	wantWrites(t, w)
}

// Resuming promotes on the recorded consent; with no record it promotes
// nothing.
func TestFailoverResumesOnlyFromTheRecord(t *testing.T) {
	w := lostWorld()
	r, _ := runner(w)
	if err := run(t, r, failoverStep(snapshot.FailoverPromoting)); err == nil || !strings.Contains(err.Error(), "its record (epoch 1) is gone") {
		t.Fatalf("error %v, want a refusal without a record", err)
	}
	wantWrites(t, w)
	w.cluster("orders-west").Object.Marks.Failover = &snapshot.FailoverRecord{Epoch: 1, From: "orders-east", To: "orders-west",
		Phase: snapshot.FailoverPromoting, SystemID: sysID, FromTimeline: 1, ForkLSN: 0x5027AD8, Consent: "flag"}
	if err := run(t, r, failoverStep(snapshot.FailoverPromoting)); err != nil {
		t.Fatal(err)
	}
	wantWrites(t, w,
		"spec orders-west "+specJSON(promotedSpec),
		"sql orders-west CHECKPOINT",
		"marks orders-west digest= revision= journal=- failover=1:done",
	)
}

// returnedWorld: west took over (epoch 1 done); east answers again,
// writable on the timeline it was lost on, 1 MiB past the fork.
func returnedWorld() (*world, snapshot.FailoverRecord) {
	rec := snapshot.FailoverRecord{Epoch: 1, From: "orders-east", To: "orders-west", Phase: snapshot.FailoverDone,
		SystemID: sysID, FromTimeline: 1, ForkLSN: 0x5000000, LastReplayedCommit: "2026-12-02T12:03:11.000Z"}
	east := primaryState("orders-east", "east", eastEP, 0x5100000, 1)
	west := primaryState("orders-west", "west", westEP, 0x5001000, 2)
	r := rec
	west.Object.Marks.Failover = &r
	w := newWorld(east, west)
	w.react = operator
	return w, rec
}

func rejoinStep(rec snapshot.FailoverRecord, policy string, rebuild bool) plan.Step {
	return plan.Step{Action: plan.ActionRejoin, Subject: subject("east", "orders-east"), Payload: &plan.Rejoin{
		Record: rec, Primary: subject("west", "orders-west"), PrimaryEP: westEP, Demoted: standbySpec.WithPeer(*westEP),
		Policy: policy, Rebuild: rebuild, Fenced: fencedPrimarySpec}}
}

// fencedPrimarySpec is the returned primary's spec with the fence on return
// as a parameter.
var fencedPrimarySpec = snapshot.Spec{Instances: 2, Parameters: map[string]string{snapshot.FenceParameter: "on"},
	Replication: snapshot.Replication{Enabled: true}}

// Timeline 2's history as the new primary wrote it on promotion, and as a
// lost primary promoted in its own site wrote its own.
const (
	westHistory = "1\t0/5000000\tno recovery target specified\n"
	eastHistory = "1\t0/5100000\tno recovery target specified\n"
)

func TestRejoinFencesReportsAndRewinds(t *testing.T) {
	w, rec := returnedWorld()
	// pg_rewind and the WAL receiver copy the new primary's history.
	w.history["orders-west/2"], w.history["orders-east/2"] = westHistory, westHistory
	w.react = func(w *world, what, name string) {
		operator(w, what, name)
		if name == "orders-east" && what == "spec" {
			w.follow(name, "orders-west") // Patroni's pg_rewind, then streaming
			// pg_rewind copies the new primary's postgresql.auto.conf:
			// the fence goes with it.
			w.cluster(name).PG.ReadOnlyDefault = false
		}
	}
	r, events := runner(w)
	step := rejoinStep(rec, "rewind", false)
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	wantWrites(t, w,
		"sql orders-east fence-on", "sql orders-east reload", "sql orders-east terminate",
		"marks orders-east digest= revision= journal=- failover=1:done returned=rewind:1048576:false",
		"spec orders-east "+specJSON(pay[*plan.Rejoin](step).Demoted),
		"marks orders-east digest= revision= journal=- failover=1:done returned=rewind:1048576:true",
	)
	var words string
	for _, e := range *events {
		if e.Type == EventFence && strings.HasPrefix(e.Message, "divergence:") {
			words = e.Message
		}
	}
	for _, want := range []string{"orders-east wrote 0/5000000..0/5100000 (1 MiB) after the fork", "commits after 2026-12-02T12:03:11.000Z", "up to 2026-12-02T12:03:40.000Z (its last commit)"} {
		if !strings.Contains(words, want) {
			t.Errorf("divergence %q lacks %q", words, want)
		}
	}
	if c := w.cluster("orders-east"); c.Writable() || !c.StreamsFrom(westEP) {
		t.Fatalf("east writable %v, receiver %s", c.Writable(), c.Receiver())
	}
}

// The rebuild of a returned primary is a step of its own, planned once the
// rejoin fenced it and recorded why it needs one: fenced again, deleted,
// created as a standby from birth, recorded done with what was measured.
func TestRejoinRebuildStepRebuildsAsAStandbyFromBirth(t *testing.T) {
	w, rec := returnedWorld()
	own := rec
	own.Returned = &snapshot.Returned{Rejoin: "rewind", Diverged: 1048576, NeedsRebuild: "it is on timeline 2"}
	w.cluster("orders-east").Object.Marks.Failover = &own
	r, _ := runner(w)
	step := rejoinStep(rec, "rewind", true)
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	got := w.writes()
	fence, i, j := slices.Index(got, "sql orders-east fence-on"), slices.Index(got, "delete orders-east"), slices.Index(got, "spec orders-east "+specJSON(pay[*plan.Rejoin](step).Demoted))
	if fence != 0 || i < fence || j < i || !slices.Contains(got, "marks orders-east digest= revision= journal=- failover=1:done returned=rebuild:1048576:true") {
		t.Fatalf("want fence, delete, create as a standby, recorded done: %v", got)
	}
	if c := w.cluster("orders-east"); c.Writable() || !c.StreamsFrom(westEP) {
		t.Fatalf("east writable %v, receiver %s", c.Writable(), c.Receiver())
	}
}

// A returned lost primary is fenced before its demotion, and the fence is
// lifted once it streams when no pg_rewind replaced its postgresql.auto.conf,
// or it would refuse writes the next time it is primary: one that comes
// back writable with nothing past the fork (no rewind needed), and one that
// answers in recovery (its Patroni restarted it as a replica and may yet
// promote it).
func TestRejoinFencesOnReturnAndLiftsTheFence(t *testing.T) {
	for _, tc := range []struct {
		name     string
		returned func(w *world, rec snapshot.FailoverRecord)
	}{
		{"nothing past the fork", func(w *world, rec snapshot.FailoverRecord) { w.endOfWAL["orders-east"] = rec.ForkLSN }},
		{"answers in recovery, its object a standby's", func(w *world, _ snapshot.FailoverRecord) {
			east := w.cluster("orders-east")
			east.PG.InRecovery, east.Object.Spec.Replication.IsReplica = true, true
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, rec := returnedWorld()
			tc.returned(w, rec)
			w.react = func(w *world, what, name string) {
				operator(w, what, name)
				if name == "orders-east" && what == "spec" {
					w.follow(name, "orders-west")
				}
			}
			r, events := runner(w)
			step := rejoinStep(rec, "rewind", false)
			if err := run(t, r, step); err != nil {
				t.Fatal(err)
			}
			wantWrites(t, w,
				"sql orders-east fence-on", "sql orders-east reload", "sql orders-east terminate",
				"marks orders-east digest= revision= journal=- failover=1:done returned=rewind:0:false",
				"spec orders-east "+specJSON(pay[*plan.Rejoin](step).Demoted),
				"sql orders-east fence-off", "sql orders-east reload",
				"marks orders-east digest= revision= journal=- failover=1:done returned=rewind:0:true",
			)
			if w.cluster("orders-east").PG.ReadOnlyDefault {
				t.Fatal("orders-east still starts sessions read-only")
			}
			if !slices.ContainsFunc(*events, func(e Event) bool { return e.Type == EventUnfence }) {
				t.Fatal("no event says the fence was lifted")
			}
		})
	}
}

// A demoted lost primary that does not stream within the bound (its rewind
// failed) needs a rebuild: the rejoin records why and stops there; it
// deletes nothing (the next plan shows the rebuild).
func TestRejoinStopsWhenTheRewindDoesNotBringItBack(t *testing.T) {
	w, rec := returnedWorld()
	r, _ := runner(w)
	err := run(t, r, rejoinStep(rec, "rewind", false))
	wantNeedsRebuild(t, w, err, "it did not rejoin by pg_rewind within 3m0s")
}

// A rejoin whose wait for streaming is stopped from outside (the run lost
// its lock to another run) has learnt nothing of the rewind: it returns
// that error and records no rebuild; the next run's rejoin waits again.
func TestRejoinStoppedFromOutsideNeedsNoRebuild(t *testing.T) {
	w, rec := returnedWorld()
	r, _ := runner(w)
	done := make(chan struct{})
	close(done)
	r.held = locks{&lease{name: "pgtopo-orders", ns: "db", stop: make(chan struct{}), done: done, lost: errors.New("lock db/pgtopo-orders was taken by vm-2")}}
	err := run(t, r, rejoinStep(rec, "rewind", false))
	var needs *NeedsRebuildError
	if err == nil || errors.As(err, &needs) || !strings.Contains(err.Error(), "was taken by vm-2") {
		t.Fatalf("error %v, want the lost lock, not a rebuild", err)
	}
	if f := w.cluster("orders-east").Object.Marks.Failover; f == nil || f.Returned == nil || f.Returned.NeedsRebuild != "" || f.Returned.Done {
		t.Fatalf("marks %+v: want the return recorded, neither done nor needing a rebuild", f)
	}
}

// wantNeedsRebuild checks a rejoin stopped for a rebuild: the error says
// why and what the rebuild deletes, the returned cluster's marks record it,
// and nothing was deleted.
func wantNeedsRebuild(t *testing.T, w *world, err error, why string) {
	t.Helper()
	var needs *NeedsRebuildError
	if !errors.As(err, &needs) || !strings.Contains(err.Error(), why) || !strings.Contains(err.Error(), "the next plan shows the rebuild as a step of its own") {
		t.Fatalf("error %v, want a rejoin stopped for a rebuild because %q", err, why)
	}
	if slices.Contains(w.writes(), "delete orders-east") {
		t.Fatalf("a rejoin deleted the cluster itself: %v", w.writes())
	}
	if f := w.cluster("orders-east").Object.Marks.Failover; f == nil || f.Returned == nil || !strings.Contains(f.Returned.NeedsRebuild, why) || f.Returned.Done {
		t.Fatalf("marks %+v: want the rebuild's reason recorded, not done", f)
	}
}

// A lost primary that comes back promoted inside its own site (a timeline of
// its own, numbered as the new primary's) is never demoted for a rewind
// Patroni would not do: the rejoin stops after the fence, for a rebuild.
func TestRejoinStopsForOneThatWasPromotedInItsSite(t *testing.T) {
	w, rec := returnedWorld()
	w.cluster("orders-east").PG.Timeline = 2
	r, _ := runner(w)
	step := rejoinStep(rec, "rewind", false)
	err := run(t, r, step)
	wantNeedsRebuild(t, w, err, "it is on timeline 2, not 1 where it was lost")
	if slices.Contains(w.writes(), "spec orders-east "+specJSON(pay[*plan.Rejoin](step).Demoted)) {
		t.Fatalf("demoted for a rewind: %v", w.writes())
	}
}

// A lost primary that its Patroni promotes after the fence (seen in
// recovery at the fence, so its timeline could not tell) and that the
// demotion makes a standby again has a timeline 2 of its own: its history
// file, not its number, says so, and it is rebuilt rather than left to take
// the new primary's WAL on top of its own.
func TestRejoinRebuildsOneWhoseTimelineIsItsOwn(t *testing.T) {
	for _, tc := range []struct {
		name          string
		eastHistory   string
		westHistory   string
		firstReadFail bool
		want          string
	}{
		{"seen once in recovery", eastHistory, westHistory, false, "orders-east is on a timeline 2 of its own, promoted in its own site (it branched from timeline 1 at 0/5100000; orders-west's timeline 2 branched from timeline 1 at 0/5000000)"},
		{"seen once it streams", eastHistory, westHistory, true, "it streams, but on top of a history orders-west never had"},
		{"the primary never had its timeline", eastHistory, "", false, "orders-west has no timeline 2"},
		{"a history without reasons", "1\t0/5100000\n", westHistory, false, "it branched from timeline 1 at 0/5100000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, rec := returnedWorld()
			east := w.cluster("orders-east")
			// At the fence: in recovery, demoted in its object by an earlier
			// run, and yet promoted later by its own Patroni.
			east.PG.InRecovery, east.Object.Spec.Replication.IsReplica = true, true
			w.history["orders-east/2"], w.history["orders-west/2"] = tc.eastHistory, tc.westHistory
			if tc.firstReadFail {
				w.fail["history orders-east"] = errors.New("the database system is starting up")
			}
			w.react = func(w *world, what, name string) {
				operator(w, what, name)
				if name == "orders-east" && what == "spec" && w.history["orders-east/2"] != "" {
					w.follow(name, "orders-west") // streams on a timeline 2 of its own
				}
			}
			r, _ := runner(w)
			step := rejoinStep(rec, "rewind", false)
			err := run(t, r, step)
			if !slices.Contains(w.writes(), "spec orders-east "+specJSON(pay[*plan.Rejoin](step).Demoted)) {
				t.Fatalf("want demoted first: %v", w.writes())
			}
			wantNeedsRebuild(t, w, err, tc.want)
		})
	}
}

// Policy manual: fenced and demoted, recorded, nothing more.
func TestRejoinManualStopsAfterTheDemotion(t *testing.T) {
	w, rec := returnedWorld()
	w.react = func(w *world, what, name string) {
		operator(w, what, name)
		if name == "orders-east" && what == "spec" {
			w.cluster(name).PG.WalReceiver = nil // rewinding, or stuck: manual does not wait
		}
	}
	r, _ := runner(w)
	if err := run(t, r, rejoinStep(rec, "manual", false)); err != nil {
		t.Fatal(err)
	}
	if got := w.writes(); got[len(got)-1] != "marks orders-east digest= revision= journal=- failover=1:done returned=manual:1048576:true" {
		t.Fatalf("writes %v", got)
	}
}

// A returned primary that does not answer yet, or answers in recovery while
// its object still makes it a primary (its Patroni starts it so, then
// promotes it), is fenced in its object first, where its operator applies
// the fence before the server takes writes; nothing else is written for it
// until it answers as a primary and what it wrote after the fork is
// measured. One that never answers is reported not confirmed, and nothing
// more is written.
func TestRejoinFencesInTheObjectBeforeItAnswers(t *testing.T) {
	for _, tc := range []struct {
		name      string
		returned  func(east *snapshot.ClusterState)
		operator  bool // its operator runs and starts it
		wantErr   string
		wantAfter string // the write that follows the fence and the measurement
	}{
		{"does not answer yet", func(east *snapshot.ClusterState) { east.PG = nil }, true, "", "spec orders-east " + specJSON(standbySpec.WithPeer(*westEP))},
		// Promoted by its Patroni, on a timeline of its own: rebuilt.
		{"answers in recovery, its object a primary's", func(east *snapshot.ClusterState) { east.PG.InRecovery, east.PG.ReplayLSN = true, 0x5100000 }, true, "needs a rebuild: it is on timeline 2", ""},
		{"never answers", func(east *snapshot.ClusterState) { east.PG = nil }, false, "NOT CONFIRMED", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, rec := returnedWorld()
			tc.returned(w.cluster("orders-east"))
			w.history["orders-west/2"], w.history["orders-east/2"] = westHistory, westHistory
			w.react = func(w *world, what, name string) {
				if !tc.operator || name != "orders-east" || what != "spec" {
					return
				}
				if east := w.cluster(name); east.PG == nil {
					east.PG = &snapshot.PGState{SystemID: sysID, Timeline: 1, CurrentLSN: 0x5100000}
				}
				operator(w, what, name)
				if w.cluster(name).Object.Spec.Replication.IsReplica {
					w.follow(name, "orders-west")
				}
			}
			r, events := runner(w)
			err := run(t, r, rejoinStep(rec, "rewind", false))
			if tc.wantErr != "" && !tc.operator {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				wantWrites(t, w, "spec orders-east "+specJSON(fencedPrimarySpec))
				return
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			got := w.writes()
			want := []string{"spec orders-east " + specJSON(fencedPrimarySpec), "sql orders-east fence-on", "sql orders-east reload", "sql orders-east terminate"}
			if len(got) < len(want) || !slices.Equal(got[:len(want)], want) {
				t.Fatalf("want the fence in its object, then by SQL, first:\n  %s", strings.Join(got, "\n  "))
			}
			measured := slices.IndexFunc(*events, func(e Event) bool { return strings.HasPrefix(e.Message, "divergence: orders-east wrote") })
			after := slices.IndexFunc(*events, func(e Event) bool {
				return strings.Contains(e.Message, "orders-east") && e.Type == EventDemote || e.Type == EventWrite && strings.Contains(e.Message, "deleted")
			})
			if measured < 0 {
				t.Fatalf("no divergence reported: %v", *events)
			}
			if after >= 0 && after < measured {
				t.Fatalf("demoted or deleted before what it wrote was reported: %v", *events)
			}
			if i := slices.Index(got, tc.wantAfter); tc.wantAfter != "" && i < len(want) {
				t.Fatalf("want %q after the fence:\n  %s", tc.wantAfter, strings.Join(got, "\n  "))
			}
		})
	}
}

// A Patroni cluster that needs a rebuild on its return is fenced, its
// divergence measured and recorded, and then held: never demoted onto
// another history, never deleted, and the error says what a DBA does.
func TestRejoinHoldsAPatroniClusterThatNeedsARebuild(t *testing.T) {
	w, rec := returnedWorld()
	w.cluster("orders-east").PG.Timeline = 2 // promoted in its own site
	r, _ := runner(w)
	step := rejoinStep(rec, "rewind", false)
	pay[*plan.Rejoin](step).Demoted.Flavor = snapshot.FlavorPatroni
	err := run(t, r, step)
	if err == nil || !strings.Contains(err.Error(), "orders-east needs a rebuild and is held fenced, not demoted") ||
		!strings.Contains(err.Error(), "pgtopo render patroni-bootstrap orders-east") {
		t.Fatalf("error %v", err)
	}
	wantWrites(t, w, "sql orders-east fence-on", "sql orders-east reload", "sql orders-east terminate",
		"marks orders-east digest= revision= journal=- failover=1:done returned=rewind:1048576:false",
		"marks orders-east digest= revision= journal=- failover=1:done returned=rewind:1048576:false")
	if f := w.cluster("orders-east").Object.Marks.Failover; f == nil || f.Returned == nil || f.Returned.NeedsRebuild == "" {
		t.Fatalf("marks %+v: want why it needs a rebuild recorded", f)
	}
}
