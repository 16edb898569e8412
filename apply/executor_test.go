package apply

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pgtopo/pgtopo/flavor"
	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

var (
	eastEP = endpoint("127.100.10.1", 31388)
	westEP = endpoint("127.100.20.1", 32601)
)

func subject(site, cluster string) plan.Subject {
	return plan.Subject{Site: site, Namespace: "db", Cluster: cluster}
}

// runner is a Runner over w with fast polls and short waits.
func runner(w *world) (*Runner, *[]Event) {
	var events []Event
	op, err := flavor.Lookup("")
	if err != nil {
		panic(err)
	}
	return &Runner{Observer: w, Sites: w.Sites, Database: w, Catalogue: op.Catalogue, Keys: op.Names, Holder: "test", LockTimeout: time.Second,
		StepTimeout: 150 * time.Millisecond, PollEvery: time.Millisecond, PollSwitchover: time.Millisecond,
		Progress: func(e Event) { events = append(events, e) }}, &events
}

// run executes one step through plan.Actions, as Execute does.
func run(t *testing.T, r *Runner, step plan.Step) error {
	t.Helper()
	r.start = time.Now()
	return r.runStep(context.Background(), step, 1, 1, nil)
}

func specJSON(s snapshot.Spec) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func wantWrites(t *testing.T, w *world, want ...string) {
	t.Helper()
	got := w.writes()
	if !slices.Equal(got, want) {
		t.Fatalf("writes:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func phases(events []Event) []EventType {
	var out []EventType
	for _, e := range events {
		if e.Type != EventWaiting && e.Type != EventReached && e.Type != EventWrite {
			out = append(out, e.Type)
		}
	}
	return out
}

var standbySpec = snapshot.Spec{Topology: "orders", Instances: 1, Version: "15", TeamID: "ACID",
	Replication: snapshot.Replication{Enabled: true, IsReplica: true, ServiceType: "NodePort", BootstrapSecret: "orders-bootstrap"}}

func TestEnsurePrimaryWritesThePayloadAndWaits(t *testing.T) {
	w := newWorld()
	w.snap.Sites = []snapshot.SiteState{{Name: "east", Reachable: true}}
	w.snap.Clusters = []snapshot.ClusterState{{Name: "orders-east", Site: "east", Namespace: "db"}}
	w.react = func(w *world, what, name string) {
		c := w.cluster(name)
		c.Object.Ready, c.Object.Status = true, "Running"
		c.Endpoint, c.PG = eastEP, &snapshot.PGState{SystemID: sysID, Timeline: 1}
	}
	spec := snapshot.Spec{Topology: "orders", Instances: 2, Version: "15", Replication: snapshot.Replication{Enabled: true}}
	r, _ := runner(w)
	step := plan.Step{Action: plan.ActionEnsurePrimary, Subject: subject("east", "orders-east"), Payload: &plan.EnsurePrimary{Spec: spec},
		Preconditions: []plan.Precondition{{Kind: plan.CondCRAbsent, Cluster: "orders-east"}}}
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	wantWrites(t, w, "spec orders-east "+specJSON(spec))

	// Run again: the CR exists now, so the precondition refuses and nothing is written.
	w.log = nil
	err := run(t, r, step)
	if err == nil || !strings.Contains(err.Error(), "precondition cr-absent no longer holds: orders-east exists already") {
		t.Fatalf("error %v, want the cr-absent precondition", err)
	}
	wantWrites(t, w)
}

func TestEnsurePrimaryTimesOutNamingWhatItWaitedFor(t *testing.T) {
	w := newWorld()
	w.snap.Sites = []snapshot.SiteState{{Name: "east", Reachable: true}}
	w.snap.Clusters = []snapshot.ClusterState{{Name: "orders-east", Site: "east", Namespace: "db"}}
	spec := snapshot.Spec{Instances: 2}
	r, _ := runner(w)
	err := run(t, r, plan.Step{Action: plan.ActionEnsurePrimary, Subject: subject("east", "orders-east"), Payload: &plan.EnsurePrimary{Spec: spec}})
	if err == nil || !strings.Contains(err.Error(), "for orders-east Running and writable: status \"\", database: -") {
		t.Fatalf("error %v, want the wait named", err)
	}
}

// A wait on a cluster whose site stops answering gives up after
// SiteAwayBound, naming the site, rather than holding the run (and the
// topology's Lease) for the step's whole bound; a site that answers again
// before the bound resets it.
func TestWaitGivesUpOnASiteAway(t *testing.T) {
	for _, tc := range []struct {
		name   string
		blips  bool // the site answers every other poll
		wantIn string
	}{
		{name: "away", wantIn: "site east has not answered for 50ms (i/o timeout): this run stops here"},
		{name: "blipping", blips: true, wantIn: "for orders-east Running and writable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld()
			w.snap.Sites = []snapshot.SiteState{{Name: "east", Reachable: false, Error: "i/o timeout"}}
			w.snap.Clusters = []snapshot.ClusterState{{Name: "orders-east", Site: "east", Namespace: "db"}}
			r, _ := runner(w)
			r.StepTimeout, r.SiteAwayBound, r.PollEvery = 500*time.Millisecond, 50*time.Millisecond, 10*time.Millisecond
			began := time.Now()
			if tc.blips {
				// Away and back in turns of 20 ms, each shorter than the bound.
				w.onObserve = func(w *world) { w.snap.Sites[0].Reachable = time.Since(began)/(20*time.Millisecond)%2 == 1 }
			}
			err := run(t, r, plan.Step{Action: plan.ActionEnsurePrimary, Subject: subject("east", "orders-east"), Payload: &plan.EnsurePrimary{Spec: snapshot.Spec{Instances: 1}}})
			if err == nil || !strings.Contains(err.Error(), tc.wantIn) {
				t.Fatalf("error %v, want %q", err, tc.wantIn)
			}
			if took := time.Since(began); !tc.blips && took > 400*time.Millisecond {
				t.Fatalf("gave up after %s: the site's bound is 50ms", took)
			}
		})
	}
}

// A wait ends once the run has lost its lock (an agent's failover took the
// Lease of the sites it reaches), not at the step's timeout: the run that
// waits on must not hold the topology from the one that acts.
func TestWaitEndsWhenTheLockIsLost(t *testing.T) {
	for _, tc := range []struct {
		name   string
		lost   error
		wantIn string
	}{
		{name: "lost", lost: errors.New("lock db/pgtopo-orders was taken by vm-2"), wantIn: "lock db/pgtopo-orders was taken by vm-2 (while waiting for orders-east Running and writable"},
		{name: "held", wantIn: "waited 400ms for orders-east Running and writable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld()
			w.snap.Clusters = []snapshot.ClusterState{{Name: "orders-east", Site: "east", Namespace: "db"}}
			r, _ := runner(w)
			r.StepTimeout, r.PollEvery = 400*time.Millisecond, 10*time.Millisecond
			done := make(chan struct{})
			close(done)
			r.held = locks{&lease{name: "pgtopo-orders", ns: "db", stop: make(chan struct{}), done: done, lost: tc.lost}}
			began := time.Now()
			err := run(t, r, plan.Step{Action: plan.ActionEnsurePrimary, Subject: subject("east", "orders-east"), Payload: &plan.EnsurePrimary{Spec: snapshot.Spec{Instances: 1}}})
			if err == nil || !strings.Contains(err.Error(), tc.wantIn) {
				t.Fatalf("error %v, want %q", err, tc.wantIn)
			}
			if took := time.Since(began); tc.lost != nil && took > 200*time.Millisecond {
				t.Fatalf("gave up after %s: the lock was lost before the wait began", took)
			}
		})
	}
}

// An existing primary's wait ends when it takes writes, with a member
// still not running (status Creating); a new one's waits for Running too.
func TestEnsurePrimaryOfAnExistingClusterWaitsForWritesOnly(t *testing.T) {
	for _, tc := range []struct {
		existing bool
		wantErr  string
	}{
		{existing: true},
		{existing: false, wantErr: "waited 150ms for orders-east Running and writable"},
	} {
		t.Run(fmt.Sprintf("existing=%v", tc.existing), func(t *testing.T) {
			c := primaryState("orders-east", "east", eastEP, 0x5000000, 1)
			c.Object.Ready, c.Object.Status = false, "Creating"
			w := newWorld(c)
			r, _ := runner(w)
			err := run(t, r, plan.Step{Action: plan.ActionEnsurePrimary, Subject: subject("east", "orders-east"), Payload: &plan.EnsurePrimary{Spec: c.Object.Spec, Existing: tc.existing}})
			if tc.wantErr == "" && err != nil {
				t.Fatalf("error %v, want none: the primary takes writes", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("error %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestCreateStandbyFillsThePeerAndWaitsForStreaming(t *testing.T) {
	w := newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1))
	w.snap.Clusters = append(w.snap.Clusters, snapshot.ClusterState{Name: "orders-west", Site: "west", Namespace: "db", Endpoint: westEP})
	w.snap.Sites = append(w.snap.Sites, snapshot.SiteState{Name: "west", Reachable: true})
	w.react = operator
	r, events := runner(w)
	step := plan.Step{Action: plan.ActionCreateStandby, Subject: subject("west", "orders-west"), Payload: &plan.CreateStandby{Spec: standbySpec, PeerOf: "orders-east", Follows: "orders-east"}}
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	wantWrites(t, w, "spec orders-west "+specJSON(standbySpec.WithPeer(*eastEP)))
	if !slices.ContainsFunc(*events, func(e Event) bool { return strings.Contains(e.Message, "orders-west streaming from orders-east after") }) {
		t.Fatalf("no event says the standby streams: %+v", *events)
	}

	// Without the primary's endpoint the peer cannot be filled: nothing is written.
	w2 := newWorld(primaryState("orders-east", "east", nil, 0, 1))
	r2, _ := runner(w2)
	if err := run(t, r2, step); err == nil || !strings.Contains(err.Error(), "orders-east has no endpoint yet") {
		t.Fatalf("error %v, want the missing endpoint", err)
	}
	wantWrites(t, w2)
}

func TestCreateStandbyWaitsForTheSameSystemIdentifier(t *testing.T) {
	w := newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1))
	w.snap.Clusters = append(w.snap.Clusters, snapshot.ClusterState{Name: "orders-west", Site: "west", Namespace: "db", Endpoint: westEP})
	w.react = func(w *world, what, name string) {
		operator(w, what, name)
		w.cluster(name).PG.SystemID = "7000000000000000001" // initialised on its own
	}
	r, _ := runner(w)
	spec := standbySpec.WithPeer(*eastEP)
	err := run(t, r, plan.Step{Action: plan.ActionCreateStandby, Subject: subject("west", "orders-west"), Payload: &plan.CreateStandby{Spec: spec, Follows: "orders-east"}})
	if err == nil || !strings.Contains(err.Error(), "system identifier 7000000000000000001, primary's "+sysID) {
		t.Fatalf("error %v, want the mismatched system identifier", err)
	}
}

func TestRepointNeedsAWritablePrimary(t *testing.T) {
	south := standbyState("orders-south", "south", endpoint("127.100.30.1", 30001), eastEP, 0x5000000, 1)
	w := newWorld(standbyState("orders-west", "west", westEP, eastEP, 0x5000000, 1), south)
	w.react = operator
	r, _ := runner(w)
	spec := standbySpec.WithPeer(*westEP)
	step := plan.Step{Action: plan.ActionRepoint, Subject: subject("south", "orders-south"), Payload: &plan.Repoint{Spec: spec, Follows: "orders-west"}}
	if err := run(t, r, step); err == nil || !strings.Contains(err.Error(), "the primary orders-west is not writable") {
		t.Fatalf("error %v, want the primary not writable", err)
	}
	wantWrites(t, w)

	w = newWorld(primaryState("orders-west", "west", westEP, 0x6000000, 2), south)
	w.react = operator
	r, _ = runner(w)
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	wantWrites(t, w, "spec orders-south "+specJSON(spec), "sql orders-south reload")
	if up := w.cluster("orders-south").PG.WalReceiver; up.SenderHost != westEP.Host {
		t.Fatalf("south streams from %s", up.SenderHost)
	}
}

// A repointed standby's receiver, failing against a lost or demoted
// upstream, is woken at once and again when the new primary first keeps
// its slot, as after a switchover: after a failover the new primary's
// operator creates that slot only once it is primary.
func TestRepointWakesTheStandbysReceiver(t *testing.T) {
	south := standbyState("orders-south", "south", endpoint("127.100.30.1", 30001), eastEP, 0x5000000, 1)
	south.SlotName = "xdc_orders_south"
	w := newWorld(primaryState("orders-west", "west", westEP, 0x6000000, 2), south)
	wakes := 0
	w.react = func(w *world, what, name string) {
		operator(w, what, name)
		switch {
		case what == "spec" && name == "orders-south":
			w.cluster(name).PG.WalReceiver.Slot = "xdc_orders_south" // not yet taken
		case what == "sql reload" && name == "orders-south":
			wakes++
			west := w.cluster("orders-west").PG
			if wakes == 1 {
				west.Slots = append(west.Slots, snapshot.Slot{Name: "xdc_orders_south"})
			} else {
				west.Slots[0].Active = true
			}
		}
	}
	r, _ := runner(w)
	spec := standbySpec.WithPeer(*westEP)
	if err := run(t, r, plan.Step{Action: plan.ActionRepoint, Subject: subject("south", "orders-south"), Payload: &plan.Repoint{Spec: spec, Follows: "orders-west"}}); err != nil {
		t.Fatal(err)
	}
	if wakes != 2 {
		t.Fatalf("orders-south woken %d times, want 2 (at once, and when its slot appeared)", wakes)
	}
}

func TestUpdateWaitsForTheInstances(t *testing.T) {
	w := newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1))
	r, _ := runner(w)
	spec := w.cluster("orders-east").Object.Spec
	spec.Instances = 3
	step := plan.Step{Action: plan.ActionUpdate, Subject: subject("east", "orders-east"), Payload: &plan.Update{Spec: spec}}
	if err := run(t, r, step); err != nil {
		t.Fatal(err) // the fake applies the spec's instances at once
	}
	wantWrites(t, w, "spec orders-east "+specJSON(spec))

	w.react = func(w *world, _, name string) { w.cluster(name).Object.Ready = false }
	if err := run(t, r, step); err == nil || !strings.Contains(err.Error(), "orders-east Running") {
		t.Fatalf("error %v, want the wait for Running", err)
	}
}

func TestCheckpointAndFillExternalIPRunOnThePrimary(t *testing.T) {
	w := newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1))
	r, _ := runner(w)
	if err := run(t, r, plan.Step{Action: plan.ActionCheckpoint, Subject: subject("east", "orders-east"), Payload: &plan.Checkpoint{}}); err != nil {
		t.Fatal(err)
	}
	step := plan.Step{Action: plan.ActionFillExternalIP, Subject: subject("west", "orders-west"),
		Payload: &plan.FillExternalIP{Primary: "orders-east", Cluster: "orders-west", Host: "127.100.20.100"}}
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	wantWrites(t, w, "sql orders-east CHECKPOINT", "sql orders-east fill-external-ip [127.100.20.100 orders-west]")

	w.fail["open orders-east"] = errors.New("connect 127.100.10.1:31388 as postgres: refused")
	if err := run(t, r, step); err == nil || !strings.HasPrefix(err.Error(), "orders-east: connect") {
		t.Fatalf("error %v, want the cluster named first", err)
	}
}

func TestBootstrapSecretCopiesTheCredentialsOnly(t *testing.T) {
	w := newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1))
	w.secrets["east/db/postgres.orders-east.credentials"] = &corev1.Secret{Data: map[string][]byte{"username": []byte("postgres"), "password": []byte("s3cret"), "extra": []byte("x")}}
	// A Secret of another type is in the way: the type cannot change in place.
	w.secrets["west/db/orders-bootstrap"] = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "orders-bootstrap"}, Type: corev1.SecretTypeOpaque}
	r, events := runner(w)
	step := plan.Step{Action: plan.ActionBootstrapSecret, Subject: subject("west", "orders-west"),
		Payload: &plan.BootstrapSecret{From: subject("east", "orders-east"), FromName: "postgres.orders-east.credentials", Name: "orders-bootstrap", Topology: "orders"}}
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	wantWrites(t, w, "delete secret west/db/orders-bootstrap", "secret west/db/orders-bootstrap type=kubernetes.io/basic-auth")
	got := w.secrets["west/db/orders-bootstrap"]
	if string(got.Data["username"]) != "postgres" || string(got.Data["password"]) != "s3cret" || len(got.Data) != 2 || got.Labels[snapshot.TopologyLabel] != "orders" {
		t.Fatalf("bootstrap secret %+v", got)
	}
	for _, e := range *events {
		if strings.Contains(e.Message, "s3cret") {
			t.Fatalf("an event shows the password: %s", e.Message)
		}
	}

	delete(w.secrets, "east/db/postgres.orders-east.credentials")
	if err := run(t, r, step); err == nil || !strings.Contains(err.Error(), "credentials db/postgres.orders-east.credentials") {
		t.Fatalf("error %v, want the missing credentials named", err)
	}
}

func TestRecordKeepsTheJournal(t *testing.T) {
	w := newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1))
	j := &snapshot.Journal{From: "orders-east", To: "orders-west", Phase: snapshot.PhaseGated}
	w.cluster("orders-east").Object.Marks = snapshot.Marks{Digest: "old", Journal: j}
	r, _ := runner(w)
	step := plan.Step{Action: plan.ActionRecord, Subject: subject("east", "orders-east"), Payload: &plan.Record{Marks: snapshot.Marks{Digest: "d1", Revision: "r1"}}}
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	wantWrites(t, w, "marks orders-east digest=d1 revision=r1 journal=gated")

	w2 := newWorld(snapshot.ClusterState{Name: "orders-east", Site: "east", Namespace: "db"})
	r2, _ := runner(w2)
	if err := run(t, r2, step); err == nil || !strings.Contains(err.Error(), "orders-east has no object to record on") {
		t.Fatalf("error %v", err)
	}
}

// switchoverWorld is a primary east streaming to west, all caught up.
func switchoverWorld() *world {
	w := newWorld(primaryState("orders-east", "east", eastEP, 0x5027AD8, 1), standbyState("orders-west", "west", westEP, eastEP, 0x5027AD8, 1))
	w.cluster("orders-east").Object.Marks.Digest = "d0"
	w.cluster("orders-west").Object.Marks.Digest = "d0"
	w.react = operator
	return w
}

func switchoverStep(resume string) plan.Step {
	demoted := standbySpec.WithPeer(*westEP)
	promoted := snapshot.Spec{Topology: "orders", Instances: 2, Version: "15", TeamID: "ACID", Replication: snapshot.Replication{Enabled: true, ServiceType: "NodePort"}}
	sw := &plan.Switchover{From: subject("east", "orders-east"), To: subject("west", "orders-west"), FromEndpoint: eastEP, ToEndpoint: westEP,
		Demoted: demoted, Promoted: promoted, MaxLagBytes: 16 << 20, Resume: resume}
	if resume == "" {
		sw.SystemID, sw.Timeline = sysID, 1
	}
	return plan.Step{Action: plan.ActionSwitchover, Subject: subject("west", "orders-west"), Payload: sw}
}

// The old primary's WAL receiver is woken once the new primary is
// writable, and once more when the new primary first keeps its slot (an
// operator creates it only then): without the second wake it would wait
// PostgreSQL's retry interval, which the fake world never ends.
func TestSwitchoverWakesTheOldPrimarysReceiver(t *testing.T) {
	w := switchoverWorld()
	w.cluster("orders-east").SlotName = "xdc_orders_east"
	promoted, unfencing, wakes := false, false, 0
	w.react = func(w *world, what, name string) {
		operator(w, what, name)
		switch {
		case what == "sql fence-off" && name == "orders-east":
			unfencing = true // its reload lifts the fence; it is no wake
		case what == "sql reload" && name == "orders-east" && unfencing:
			unfencing = false
		case what == "spec" && name == "orders-west" && !w.cluster("orders-west").PG.InRecovery:
			promoted = true
			// A receiver that says "streaming" before its sender took it:
			// its START_REPLICATION fails on the missing slot.
			w.cluster("orders-east").PG.WalReceiver.Slot = "xdc_orders_east"
		case what == "sql reload" && name == "orders-east" && promoted:
			wakes++
			west := w.cluster("orders-west").PG
			if wakes == 1 { // too early: the slot appears only now
				west.Slots = append(west.Slots, snapshot.Slot{Name: "xdc_orders_east"})
			} else {
				west.Slots[0].Active = true
			}
		}
	}
	r, _ := runner(w)
	if err := run(t, r, switchoverStep("")); err != nil {
		t.Fatal(err)
	}
	if wakes != 2 {
		t.Fatalf("orders-east woken %d times after the promotion, want 2 (at once, and when its slot appeared)", wakes)
	}
}

// A receiver that streams from the new primary but on the old timeline (the
// tail before the switch) is not yet the old primary following it.
func TestSwitchoverWantsTheOldPrimaryOnTheNewTimeline(t *testing.T) {
	w := switchoverWorld()
	w.react = func(w *world, what, name string) {
		operator(w, what, name)
		if what == "spec" && name == "orders-west" && !w.cluster("orders-west").PG.InRecovery {
			w.cluster("orders-east").PG.WalReceiver.Timeline = 1
		}
	}
	r, _ := runner(w)
	err := run(t, r, switchoverStep(""))
	if err == nil || !strings.Contains(err.Error(), "wal receiver streams timeline 1, orders-west is on 2") {
		t.Fatalf("got %v, want the wait for orders-east to stream orders-west's timeline 2", err)
	}
}

// A journal write that fails on either end stops the switchover before
// its fence: the journal is what a resume and a back-out read.
func TestSwitchoverStopsWhenAJournalWriteFails(t *testing.T) {
	for _, end := range []string{"orders-east", "orders-west"} {
		w := switchoverWorld()
		w.fail["marks "+end] = errors.New("etcdserver: request timed out")
		r, _ := runner(w)
		err := run(t, r, switchoverStep(""))
		if err == nil || !strings.Contains(err.Error(), "request timed out") {
			t.Fatalf("journal on %s failing: error %v, want the write's", end, err)
		}
		for _, wr := range w.writes() {
			if strings.HasPrefix(wr, "sql") || strings.HasPrefix(wr, "spec") {
				t.Fatalf("journal on %s failing: %q written after it", end, wr)
			}
		}
	}
}

func TestSwitchoverPhasesInOrder(t *testing.T) {
	w := switchoverWorld()
	r, events := runner(w)
	step := switchoverStep("")
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	wantWrites(t, w,
		"marks orders-east digest=d0 revision= journal=demoting",
		"marks orders-west digest=d0 revision= journal=demoting",
		"sql orders-east fence-on", "sql orders-east reload", "sql orders-east terminate",
		"spec orders-east "+specJSON(pay[*plan.Switchover](step).Demoted),
		"marks orders-east digest=d0 revision= journal=gated 0/5027AD8",
		"marks orders-west digest=d0 revision= journal=gated 0/5027AD8",
		"marks orders-east digest=d0 revision= journal=promoted 0/5027AD8",
		"marks orders-west digest=d0 revision= journal=promoted 0/5027AD8",
		"spec orders-west "+specJSON(pay[*plan.Switchover](step).Promoted),
		"sql orders-west CHECKPOINT",
		// The old primary's WAL receiver is woken to stream from the new one.
		"sql orders-east reload",
		// Its fence is lifted once it streams, outside the write window.
		"sql orders-east fence-off", "sql orders-east reload",
		"marks orders-east digest=d0 revision= journal=-",
		"marks orders-west digest=d0 revision= journal=-",
	)
	want := []EventType{EventStep, EventJournal, EventFence, EventDemote, EventGateSet, EventGate, EventPromote, EventUnfence, EventSwitched}
	if got := phases(*events); !slices.Equal(got, want) {
		t.Fatalf("phases %v, want %v", got, want)
	}
	if c := w.cluster("orders-west"); !c.Writable() || c.PG.Timeline != 2 {
		t.Fatalf("west not primary on timeline 2: %+v", c.PG)
	}
	// The closing line says how long writes were refused.
	last := (*events)[len(*events)-1]
	if last.WritesRefused <= 0 || !strings.Contains(last.Message, "switchover orders-east → orders-west done: writes refused for ") ||
		!strings.Contains(last.Message, "orders-west writable on timeline 2") {
		t.Fatalf("closing event %+v", last)
	}
	var b strings.Builder
	TextProgress(&b)((*events)[0])
	if !strings.Contains(b.String(), "] step 1/1: ") {
		t.Fatalf("step line %q lacks the step counter", b.String())
	}
}

// A promotion that the plan gives the role alone writes it first and the
// whole spec once the target takes writes, before the checkpoint.
func TestSwitchoverPromotesFirstThenGrows(t *testing.T) {
	w := switchoverWorld()
	r, _ := runner(w)
	step := switchoverStep("")
	sw := pay[*plan.Switchover](step)
	first := sw.Promoted
	first.Instances = 1
	sw.PromoteFirst = &first
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	got := w.writes()
	at := func(line string) int {
		i := slices.Index(got, line)
		if i < 0 {
			t.Fatalf("no %q in writes:\n  %s", line, strings.Join(got, "\n  "))
		}
		return i
	}
	promote, grow := at("spec orders-west "+specJSON(first)), at("spec orders-west "+specJSON(sw.Promoted))
	if gate, checkpoint := at("marks orders-west digest=d0 revision= journal=promoted 0/5027AD8"), at("sql orders-west CHECKPOINT"); !(gate < promote && promote < grow && grow < checkpoint) {
		t.Fatalf("writes out of order (journal promoted, role alone, whole spec, checkpoint):\n  %s", strings.Join(got, "\n  "))
	}
}

// The gate: a target that has not replayed the old primary's end of WAL is
// never promoted; the run fails naming the gate and the journal stays.
func TestSwitchoverGateHoldsBackThePromotion(t *testing.T) {
	w := switchoverWorld()
	w.react = func(w *world, what, name string) {
		operator(w, what, name)
		if name == "orders-east" && what == "spec" {
			// Demoted, its end of WAL is past what west replayed.
			w.cluster("orders-east").PG.ReplayLSN = 0x5030000
		}
	}
	r, _ := runner(w)
	err := run(t, r, switchoverStep(""))
	if err == nil || !strings.Contains(err.Error(), "gate: orders-west replay >= 0/5030000") {
		t.Fatalf("error %v, want the gate named", err)
	}
	for _, l := range w.writes() {
		if strings.HasPrefix(l, "spec orders-west") || strings.Contains(l, "journal=promoted") {
			t.Fatalf("promoted past the gate: %s", l)
		}
	}
	if j := w.cluster("orders-west").Journal(); j == nil || j.Phase != snapshot.PhaseGated || j.GateLSN != "0/5030000" {
		t.Fatalf("journal %+v, want gated at 0/5030000", j)
	}
}

// The gate also refuses a target on another system or a newer timeline.
func TestSwitchoverGateChecksSystemAndTimeline(t *testing.T) {
	for name, spoil := range map[string]func(*snapshot.PGState){
		"system identifier": func(pg *snapshot.PGState) { pg.SystemID = "1" },
		"newer timeline":    func(pg *snapshot.PGState) { pg.Timeline = 3 },
		"writable early":    func(pg *snapshot.PGState) { pg.InRecovery = false },
	} {
		t.Run(name, func(t *testing.T) {
			w := switchoverWorld()
			gate := snapshot.Journal{From: "orders-east", To: "orders-west", Phase: snapshot.PhaseGated, SystemID: sysID, Timeline: 1, GateLSN: "0/5027AD8"}
			for _, c := range []string{"orders-east", "orders-west"} {
				w.cluster(c).Object.Marks.Journal = &gate
			}
			east := w.cluster("orders-east")
			east.PG.InRecovery, east.PG.ReplayLSN = true, 0x5027AD8
			spoil(w.cluster("orders-west").PG)
			r, _ := runner(w)
			err := run(t, r, switchoverStep(snapshot.PhaseGated))
			if err == nil || !strings.Contains(err.Error(), "gate: orders-west") {
				t.Fatalf("error %v, want the gate", err)
			}
			for _, l := range w.writes() {
				if strings.HasPrefix(l, "spec orders-west") {
					t.Fatalf("promoted past the gate: %s", l)
				}
			}
		})
	}
}

// A fence that fails is lifted at once and nothing is demoted.
func TestSwitchoverFenceFailureUnfences(t *testing.T) {
	w := switchoverWorld()
	w.fail["query orders-east"] = errors.New("connection reset")
	r, _ := runner(w)
	err := run(t, r, switchoverStep(""))
	if err == nil || !strings.Contains(err.Error(), "fence: end of WAL: connection reset") {
		t.Fatalf("error %v", err)
	}
	got := w.writes()
	if slices.ContainsFunc(got, func(l string) bool { return strings.HasPrefix(l, "spec ") }) {
		t.Fatalf("demoted after a failed fence: %v", got)
	}
	if !slices.Contains(got, "sql orders-east fence-off") {
		t.Fatalf("fence not lifted: %v", got)
	}
}

// The fence waits until the target replayed the old primary's end of WAL
// while streaming from it; a target that does not catch up is never
// demoted to.
func TestSwitchoverFenceWaitsForTheTarget(t *testing.T) {
	w := switchoverWorld()
	w.endOfWAL["orders-east"] = 0x6000000 // west replayed only 0/5027AD8
	r, _ := runner(w)
	err := run(t, r, switchoverStep(""))
	if err == nil || !strings.Contains(err.Error(), "orders-west replay >= 0/6000000") {
		t.Fatalf("error %v", err)
	}
	if slices.ContainsFunc(w.writes(), func(l string) bool { return strings.HasPrefix(l, "spec ") }) {
		t.Fatalf("demoted though the target never caught up: %v", w.writes())
	}

	// Caught up, but streaming from elsewhere: no proof of shared history.
	w = switchoverWorld()
	w.cluster("orders-west").PG.WalReceiver.SenderHost = "10.9.9.9"
	r, _ = runner(w)
	if err := run(t, r, switchoverStep("")); err == nil || !strings.Contains(err.Error(), "caught up but does not stream from orders-east") {
		t.Fatalf("error %v", err)
	}
}

// Resuming at each phase does only what is left.
func TestSwitchoverResumes(t *testing.T) {
	for _, tc := range []struct {
		name, phase string
		demoted     bool   // the old primary is a standby already
		first       string // the first write of the resumed run
	}{
		{"demoting, fenced or not yet", snapshot.PhaseDemoting, false, "sql orders-east fence-on"},
		{"demoting, demoted", snapshot.PhaseDemoting, true, "spec orders-east "},
		{"gated", snapshot.PhaseGated, true, "marks orders-east digest=d0 revision= journal=promoted 0/5027AD8"},
		{"promoted", snapshot.PhasePromoted, true, "spec orders-west "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := switchoverWorld()
			j := snapshot.Journal{From: "orders-east", To: "orders-west", Phase: tc.phase, SystemID: sysID, Timeline: 1}
			east := w.cluster("orders-east")
			if tc.phase != snapshot.PhaseDemoting {
				j.GateLSN = "0/5027AD8"
			}
			if tc.demoted {
				// Fenced still: the fence is lifted only once it follows.
				east.PG.InRecovery, east.PG.ReplayLSN, east.PG.ReadOnlyDefault = true, 0x5027AD8, true
				east.Object.Spec = standbySpec.WithPeer(*westEP)
			}
			for _, c := range []string{"orders-east", "orders-west"} {
				jj := j
				w.cluster(c).Object.Marks.Journal = &jj
			}
			r, events := runner(w)
			if err := run(t, r, switchoverStep(tc.phase)); err != nil {
				t.Fatal(err)
			}
			got := w.writes()
			if len(got) == 0 || !strings.HasPrefix(got[0], tc.first) {
				t.Fatalf("resumed at %s with writes %v, want first %q", tc.phase, got, tc.first)
			}
			if slices.ContainsFunc(got, func(l string) bool { return strings.Contains(l, "journal=demoting") }) {
				t.Fatalf("the resumed run started the switchover over: %v", got)
			}
			if !slices.ContainsFunc(*events, func(e Event) bool { return e.Type == EventResume && e.Journal == tc.phase }) {
				t.Fatalf("no resume event at %s", tc.phase)
			}
			if c := w.cluster("orders-west"); !c.Writable() || w.cluster("orders-east").Journal() != nil {
				t.Fatalf("not converged: west writable %v, east journal %+v", c.Writable(), w.cluster("orders-east").Journal())
			}
			if w.cluster("orders-east").PG.ReadOnlyDefault {
				t.Fatalf("resumed at %s, the old primary is left fenced: %v", tc.phase, got)
			}
		})
	}
}

// Resuming at demoting, the old primary may be restarting into a standby
// under the fence: the run goes on (the gate decides). A fresh switchover
// whose fence fails stops, whatever the server does next.
func TestSwitchoverFenceThatLosesTheServer(t *testing.T) {
	for _, tc := range []struct {
		resume string
		ok     bool
	}{{snapshot.PhaseDemoting, true}, {"", false}} {
		w := switchoverWorld()
		restarting := func(w *world, what, name string) {
			if what == "failed sql fence-on" && name == "orders-east" {
				e := w.cluster(name)
				e.PG, e.PGError = nil, "the database system is shutting down"
				return
			}
			operator(w, what, name)
		}
		w.react = restarting
		w.fail["sql fence-on"] = errors.New("unexpected EOF")
		if tc.resume != "" {
			j := snapshot.Journal{From: "orders-east", To: "orders-west", Phase: tc.resume, SystemID: sysID, Timeline: 1}
			for _, c := range []string{"orders-east", "orders-west"} {
				jj := j
				w.cluster(c).Object.Marks.Journal = &jj
			}
		}
		r, _ := runner(w)
		r.MaxWritePause = 10 * time.Second
		err := run(t, r, switchoverStep(tc.resume))
		if tc.ok && err != nil {
			t.Fatalf("resume %q: %v", tc.resume, err)
		}
		if !tc.ok && (err == nil || !strings.Contains(err.Error(), "unexpected EOF")) {
			t.Fatalf("fresh: error %v, want the fence's", err)
		}
		promoted := slices.ContainsFunc(w.writes(), func(l string) bool { return strings.HasPrefix(l, "spec orders-west") })
		if promoted != tc.ok {
			t.Fatalf("resume %q: promoted %v: %v", tc.resume, promoted, w.writes())
		}
	}
}

// A resume whose journal is gone (another run finished it) does nothing.
func TestSwitchoverResumeWithoutJournalRefuses(t *testing.T) {
	w := switchoverWorld()
	r, _ := runner(w)
	err := run(t, r, switchoverStep(snapshot.PhaseGated))
	if err == nil || !strings.Contains(err.Error(), "the journal on orders-east and orders-west is gone") {
		t.Fatalf("error %v", err)
	}
	wantWrites(t, w)
}

// An old primary that does not follow the new one is reported as needing a
// rebuild.
func TestSwitchoverOldPrimaryMustFollow(t *testing.T) {
	w := switchoverWorld()
	w.react = func(w *world, what, name string) {
		operator(w, what, name)
		if name == "orders-west" && what == "spec" {
			w.cluster("orders-east").PG.WalReceiver = nil
		}
	}
	r, _ := runner(w)
	err := run(t, r, switchoverStep(""))
	if err == nil || !strings.Contains(err.Error(), "orders-east does not follow the new primary orders-west and needs a rebuild") {
		t.Fatalf("error %v", err)
	}
}

// A target whose replay is frozen stalls the fence's wait: the switchover
// backs out (no demotion), the old primary takes writes again, and the
// error says how long writes were refused.
func TestSwitchoverBacksOutOfAStalledFence(t *testing.T) {
	w := switchoverWorld()
	w.endOfWAL["orders-east"] = 0x6000000 // west never gets there
	r, events := runner(w)
	r.StepTimeout, r.MaxWritePause, r.StallAfter = 5*time.Second, 10*time.Second, 50*time.Millisecond
	err := run(t, r, switchoverStep(""))
	var out *BackedOutError
	if !errors.As(err, &out) || !strings.Contains(err.Error(), "stalled: orders-west replay >= 0/6000000 made no progress") ||
		!strings.Contains(err.Error(), "orders-east is primary again") || out.Refused <= 0 || out.Refused > time.Second {
		t.Fatalf("error %v, want a back-out after a stall", err)
	}
	wantWrites(t, w,
		"marks orders-east digest=d0 revision= journal=demoting",
		"marks orders-west digest=d0 revision= journal=demoting",
		"sql orders-east fence-on", "sql orders-east reload", "sql orders-east terminate",
		"sql orders-east fence-off", "sql orders-east reload",
		"marks orders-east digest=d0 revision= journal=aborting",
		"marks orders-west digest=d0 revision= journal=aborting",
		"marks orders-east digest=d0 revision= journal=-",
		"marks orders-west digest=d0 revision= journal=-",
	)
	if !slices.Contains(phases(*events), EventBackedOut) {
		t.Fatalf("phases %v", phases(*events))
	}
	// The fence is lifted once, and said once.
	if n := len(slices.DeleteFunc(phases(*events), func(p EventType) bool { return p != EventUnfence })); n != 1 {
		t.Fatalf("%d unfence events, want 1: %v", n, phases(*events))
	}
}

// Past the budget while waiting for the gate (the old primary demoted),
// the old primary's own spec is written back and it is primary again; the
// target is never promoted.
func TestSwitchoverBacksOutOfTheGateWithinTheBudget(t *testing.T) {
	w := switchoverWorld()
	w.react = func(w *world, what, name string) {
		operator(w, what, name)
		if name == "orders-east" && what == "spec" && w.cluster(name).PG.InRecovery {
			w.cluster(name).PG.ReplayLSN = 0x5030000 // past what west replayed
		}
	}
	r, _ := runner(w)
	r.StepTimeout, r.MaxWritePause, r.StallAfter = 5*time.Second, 200*time.Millisecond, 5*time.Second
	step := switchoverStep("")
	pay[*plan.Switchover](step).Restore = snapshot.Spec{Topology: "orders", Instances: 2, Replication: snapshot.Replication{Enabled: true}}
	err := run(t, r, step)
	var out *BackedOutError
	if !errors.As(err, &out) || !strings.Contains(err.Error(), "write-outage budget of 0.2s exceeded waiting for gate: orders-west replay >= 0/5030000") {
		t.Fatalf("error %v, want a back-out past the budget", err)
	}
	got := w.writes()
	if slices.ContainsFunc(got, func(l string) bool {
		return strings.HasPrefix(l, "spec orders-west") || strings.Contains(l, "journal=promoted")
	}) {
		t.Fatalf("the target was promoted: %v", got)
	}
	if !slices.Contains(got, "spec orders-east "+specJSON(pay[*plan.Switchover](step).Restore)) {
		t.Fatalf("the old primary's spec was not restored: %v", got)
	}
	// Its fence, in place since the end of WAL was read, is lifted.
	if e := w.cluster("orders-east"); !e.TakesWrites() || e.Journal() != nil {
		t.Fatalf("east writable %v, fenced %v, journal %+v", e.Writable(), e.PG.ReadOnlyDefault, e.Journal())
	}
}

// A switchover begins only on a target its operator reports ready (one
// being created or scaled may never be promotable): before the fence it
// waits, bounded, and gives up with nothing written.
func TestSwitchoverBeginsOnlyOnAReadyTarget(t *testing.T) {
	w := switchoverWorld()
	w.cluster("orders-west").Object.Ready, w.cluster("orders-west").Object.Status = false, "Creating"
	r, _ := runner(w)
	err := run(t, r, switchoverStep(""))
	if err == nil || !strings.Contains(err.Error(), "switchover orders-east → orders-west not begun, nothing fenced") ||
		!strings.Contains(err.Error(), `status "Creating"`) {
		t.Fatalf("error %v, want the switchover not begun, naming the target's state", err)
	}
	wantWrites(t, w)
	// Ready a moment later: it begins then.
	w = switchoverWorld()
	west := w.cluster("orders-west")
	west.Object.Ready, west.Object.Status = false, "Creating"
	polls := 0
	w.onObserve = func(w *world) {
		if polls++; polls == 3 {
			west := w.cluster("orders-west")
			west.Object.Ready, west.Object.Status = true, "Running"
		}
	}
	r, _ = runner(w)
	r.StepTimeout = 5 * time.Second
	if err := run(t, r, switchoverStep("")); err != nil {
		t.Fatal(err)
	}
}

// A target its operator stops reporting ready during the switchover (its
// Patroni does not answer) is never told to become primary: it backs out.
func TestSwitchoverPromotesOnlyAReadyTarget(t *testing.T) {
	w := switchoverWorld()
	w.react = func(w *world, what, name string) {
		operator(w, what, name)
		if name == "orders-east" && what == "spec" {
			w.cluster("orders-west").Object.Ready, w.cluster("orders-west").Object.Status = false, "Creating"
		}
	}
	r, _ := runner(w)
	r.StepTimeout, r.MaxWritePause, r.StallAfter = 5*time.Second, 10*time.Second, 100*time.Millisecond
	step := switchoverStep("")
	pay[*plan.Switchover](step).Restore = snapshot.Spec{Topology: "orders", Instances: 2, Replication: snapshot.Replication{Enabled: true}}
	err := run(t, r, step)
	var out *BackedOutError
	if !errors.As(err, &out) || !strings.Contains(err.Error(), "orders-west ready for promotion") {
		t.Fatalf("error %v, want a back-out waiting for the target to be ready", err)
	}
	if slices.ContainsFunc(w.writes(), func(l string) bool {
		return strings.HasPrefix(l, "spec orders-west") || strings.Contains(l, "journal=promoted")
	}) {
		t.Fatalf("a target not ready was promoted: %v", w.writes())
	}
}

// After the promote is written there is no backing out: the budget ends
// the wait with the journal kept and what to do.
func TestSwitchoverNeverBacksOutAfterPromoting(t *testing.T) {
	w := switchoverWorld()
	w.react = func(w *world, what, name string) {
		if name == "orders-west" && what == "spec" {
			return // the target's Patroni is stopped: the promotion never happens
		}
		operator(w, what, name)
	}
	r, _ := runner(w)
	r.StepTimeout, r.MaxWritePause, r.StallAfter = 5*time.Second, 300*time.Millisecond, 5*time.Second
	err := run(t, r, switchoverStep(""))
	var out *BackedOutError
	if errors.As(err, &out) || err == nil || !strings.Contains(err.Error(), "waiting for orders-west writable on timeline 2") ||
		!strings.Contains(err.Error(), "pgtopo will not make orders-east primary again") {
		t.Fatalf("error %v, want the promotion wait ended by the budget, no back-out", err)
	}
	for _, l := range w.writes() {
		if strings.HasPrefix(l, "spec orders-east") && !strings.Contains(l, `"isReplica":true`) {
			t.Fatalf("the old primary was made primary again: %s", l)
		}
	}
	if j := w.cluster("orders-east").Journal(); j == nil || j.Phase != snapshot.PhasePromoted {
		t.Fatalf("journal %+v, want it kept at promoted", j)
	}
}

// A run killed while backing out finishes the back-out when resumed.
func TestSwitchoverResumesABackOut(t *testing.T) {
	w := switchoverWorld()
	east := w.cluster("orders-east")
	east.PG.InRecovery, east.PG.ReplayLSN = true, 0x5027AD8
	east.Object.Spec = standbySpec.WithPeer(*westEP)
	for _, c := range []string{"orders-east", "orders-west"} {
		w.cluster(c).Object.Marks.Journal = &snapshot.Journal{From: "orders-east", To: "orders-west", Phase: snapshot.PhaseAborting}
	}
	r, _ := runner(w)
	step := switchoverStep(snapshot.PhaseAborting)
	pay[*plan.Switchover](step).Restore = snapshot.Spec{Topology: "orders", Instances: 2, Replication: snapshot.Replication{Enabled: true}}
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	if e := w.cluster("orders-east"); !e.Writable() || e.Journal() != nil || w.cluster("orders-west").Writable() {
		t.Fatalf("east writable %v journal %+v; west writable %v", e.Writable(), e.Journal(), w.cluster("orders-west").Writable())
	}
}

// A back-out that finds the old primary still writable under its demote
// spec (the demote written, not yet acted on) is done only once the old
// primary has stayed writable for a while: here its operator acts on the
// demote after the restore was written, and it goes down and comes back.
func TestBackOutWaitsOutADemoteInFlight(t *testing.T) {
	w := switchoverWorld()
	w.react = nil // the operator acts in its own time, below
	east := w.cluster("orders-east")
	east.Object.Spec = standbySpec.WithPeer(*westEP)
	for _, c := range []string{"orders-east", "orders-west"} {
		w.cluster(c).Object.Marks.Journal = &snapshot.Journal{From: "orders-east", To: "orders-west", Phase: snapshot.PhaseAborting}
	}
	restoredAt, cameBack := -1, false
	w.onObserve = func(w *world) {
		e := w.cluster("orders-east")
		if restoredAt < 0 && !e.Object.Spec.Replication.IsReplica {
			restoredAt = w.observed
		}
		switch {
		case restoredAt < 0:
		case w.observed == restoredAt+3: // the demote, acted on late
			e.PG.InRecovery = true
		case w.observed == restoredAt+6: // then the restore
			e.PG.InRecovery, e.PG.Timeline = false, e.PG.Timeline+1
			cameBack = true
		}
	}
	r, _ := runner(w)
	r.RestoreSettle = 20 * time.Millisecond
	step := switchoverStep(snapshot.PhaseAborting)
	pay[*plan.Switchover](step).Restore = snapshot.Spec{Topology: "orders", Instances: 2, Replication: snapshot.Replication{Enabled: true}}
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	if !cameBack || !w.cluster("orders-east").Writable() {
		t.Fatalf("the back-out ended before the late demote and the restore played out (came back %v, east writable %v)", cameBack, w.cluster("orders-east").Writable())
	}
}

// A run killed between the two journal writes of one phase leaves the ends
// a phase apart: the resume goes on from the further one.
func TestSwitchoverResumesFromTheFurtherJournal(t *testing.T) {
	w := switchoverWorld()
	east := w.cluster("orders-east")
	east.PG.InRecovery, east.PG.ReplayLSN = true, 0x5027AD8
	east.Object.Spec = standbySpec.WithPeer(*westEP)
	j := snapshot.Journal{From: "orders-east", To: "orders-west", Phase: snapshot.PhaseGated, SystemID: sysID, Timeline: 1, GateLSN: "0/5027AD8"}
	promoted := j
	promoted.Phase = snapshot.PhasePromoted
	w.cluster("orders-east").Object.Marks.Journal = &j
	w.cluster("orders-west").Object.Marks.Journal = &promoted
	r, events := runner(w)
	if err := run(t, r, switchoverStep(snapshot.PhaseGated)); err != nil {
		t.Fatal(err)
	}
	if got := w.writes(); len(got) == 0 || !strings.HasPrefix(got[0], "spec orders-west ") {
		t.Fatalf("writes %v, want the promotion first", got)
	}
	if !slices.ContainsFunc(*events, func(e Event) bool { return e.Type == EventResume && e.Journal == snapshot.PhasePromoted }) {
		t.Fatal("did not resume at promoted")
	}
}

// A shutdown ends a wait at once outside the fenced stretch, and lets the
// fenced stretch finish.
func TestDrainStopsWaitsButNotTheFence(t *testing.T) {
	w := newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1))
	w.react = func(w *world, _, name string) { w.cluster(name).Object.Ready = false }
	r, _ := runner(w)
	r.StepTimeout = 5 * time.Second
	drain := make(chan struct{})
	close(drain)
	r.Drain = drain
	spec := w.cluster("orders-east").Object.Spec
	began := time.Now()
	err := run(t, r, plan.Step{Action: plan.ActionUpdate, Subject: subject("east", "orders-east"), Payload: &plan.Update{Spec: spec}})
	if !errors.Is(err, ErrDrained) || time.Since(began) > time.Second {
		t.Fatalf("error %v after %s, want a prompt drain", err, time.Since(began))
	}

	// Inside the switchover the fenced stretch goes on to the promotion,
	// and the wait after it stops, the journal left at promoted.
	w = switchoverWorld()
	w.react = func(w *world, what, name string) {
		operator(w, what, name)
		if name == "orders-west" && what == "spec" {
			w.cluster("orders-east").PG.WalReceiver = nil // the old primary is slow to follow
		}
	}
	r, _ = runner(w)
	r.StepTimeout, r.Drain = 5*time.Second, drain
	err = run(t, r, switchoverStep(""))
	if !errors.Is(err, ErrDrained) || !strings.Contains(err.Error(), "orders-east streaming from orders-west") || strings.Contains(err.Error(), "rebuild") {
		t.Fatalf("error %v", err)
	}
	if !w.cluster("orders-west").Writable() || w.cluster("orders-west").Journal().Phase != snapshot.PhasePromoted {
		t.Fatalf("the fenced stretch did not finish: west writable %v, journal %+v", w.cluster("orders-west").Writable(), w.cluster("orders-west").Journal())
	}
}

// A break-glass fence records its mark first, then fences; unfence lifts
// the fence, then removes the mark; both keep the other marks.
func TestFenceAndUnfence(t *testing.T) {
	w := newWorld(primaryState("orders-west", "west", westEP, 0x5000000, 1))
	w.cluster("orders-west").Object.Marks.Digest = "d0"
	r, events := runner(w)
	mark := &snapshot.Fence{By: "dba@host", At: "2026-12-01T12:00:00Z"}
	if err := run(t, r, plan.Step{Action: plan.ActionFence, Subject: subject("west", "orders-west"), Payload: &plan.Fence{Mark: *mark}}); err != nil {
		t.Fatal(err)
	}
	if f := w.cluster("orders-west").Object.Marks.Fence; f == nil || *f != *mark {
		t.Fatalf("mark %+v", f)
	}
	if err := run(t, r, plan.Step{Action: plan.ActionUnfence, Subject: subject("west", "orders-west"), Payload: &plan.Unfence{}}); err != nil {
		t.Fatal(err)
	}
	wantWrites(t, w,
		"marks orders-west digest=d0 revision= journal=-",
		"sql orders-west fence-on", "sql orders-west reload", "sql orders-west terminate",
		"sql orders-west fence-off", "sql orders-west reload",
		"marks orders-west digest=d0 revision= journal=-")
	if m := w.cluster("orders-west").Object.Marks; m.Fence != nil || m.Digest != "d0" {
		t.Fatalf("marks after unfence %+v", m)
	}
	if !slices.ContainsFunc(*events, func(e Event) bool {
		return e.Type == EventFence && strings.Contains(e.Message, "3 client session(s) ended")
	}) {
		t.Fatal("no fence event counts the sessions ended")
	}
	// A fence that cannot reach the database leaves the mark as a trace.
	w.fail["sql fence-on"] = errors.New("connection reset")
	if err := run(t, r, plan.Step{Action: plan.ActionFence, Subject: subject("west", "orders-west"), Payload: &plan.Fence{Mark: *mark}}); err == nil || !strings.Contains(err.Error(), "fence: connection reset") {
		t.Fatalf("error %v", err)
	}
	if w.cluster("orders-west").Object.Marks.Fence == nil {
		t.Fatal("the mark was not written first")
	}
}

// A journal at a phase pgtopo does not know (edited by hand) never leads to
// a promotion: only a journal at promoted does.
func TestSwitchoverNeverPromotesFromAnUnknownPhase(t *testing.T) {
	w := switchoverWorld()
	for _, c := range []string{"orders-east", "orders-west"} {
		w.cluster(c).Object.Marks.Journal = &snapshot.Journal{From: "orders-east", To: "orders-west", Phase: "gate-passed-trust-me", SystemID: sysID, Timeline: 1}
	}
	r, _ := runner(w)
	err := run(t, r, switchoverStep(snapshot.PhaseGated))
	if err == nil || !strings.Contains(err.Error(), `the journal is at phase "gate-passed-trust-me", not promoted: the gate has not passed`) {
		t.Fatalf("error %v", err)
	}
	wantWrites(t, w)
}

// ensure-slot writes the permanent slot and waits until the primary's
// leader keeps it with WAL reserved; a slot that exists but reserves
// nothing yet does not count.
func TestEnsureSlotViaPatroniWaitsForReservedWAL(t *testing.T) {
	w := newWorld(primaryState("orders-dc1", "dc1", westEP, 0x5000000, 1))
	w.cluster("orders-dc1").Object = &snapshot.Object{}
	reserve := false
	w.react = func(w *world, what, name string) {
		if what == "slot" {
			c := w.cluster(name)
			c.PG.Slots = []snapshot.Slot{{Name: "xdc_orders_east"}}
			if reserve {
				c.PG.Slots[0].RestartLSN = 0x5000000
			}
		}
	}
	r, _ := runner(w)
	step := plan.Step{Action: plan.ActionEnsureSlot, Subject: plan.Subject{Site: "dc1", Namespace: "orders-dc1", Cluster: "orders-dc1"},
		Payload: &plan.EnsureSlot{Primary: "orders-dc1", For: "orders-east", Slot: "xdc_orders_east", Via: plan.SlotViaPatroni}}
	err := run(t, r, step)
	if err == nil || !strings.Contains(err.Error(), "slot xdc_orders_east on orders-dc1 reserving WAL") {
		t.Fatalf("a slot reserving no WAL must not pass: %v", err)
	}
	reserve = true
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	wantWrites(t, w, "slot orders-dc1 xdc_orders_east", "slot orders-dc1 xdc_orders_east")

	w.fail["slot orders-dc1"] = errors.New("HTTP 401: no auth header received")
	if err := run(t, r, step); err == nil || !strings.HasPrefix(err.Error(), "slot xdc_orders_east on orders-dc1: HTTP 401") {
		t.Fatalf("error %v", err)
	}
}

// Through the catalogue: the row, in one session after the schema, and
// the wait for it.
func TestEnsureSlotViaCatalogue(t *testing.T) {
	w := newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1))
	w.react = func(w *world, what, name string) {
		if what == "sql catalogue-row" {
			pg := w.cluster(name).PG
			pg.MultiCluster = append(pg.MultiCluster, snapshot.MultiClusterInfo{Cluster: "orders-dc1"})
		}
	}
	r, _ := runner(w)
	step := plan.Step{Action: plan.ActionEnsureSlot, Subject: subject("east", "orders-east"),
		Payload: &plan.EnsureSlot{Primary: "orders-east", For: "orders-dc1", Slot: "xdc_orders_dc1", Via: plan.SlotViaCatalogue, Host: "127.100.20.1", Port: 5432}}
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	wantWrites(t, w, "sql orders-east catalogue-schema", "sql orders-east catalogue-row [orders-dc1 127.100.20.1 5432 xdc_orders_dc1]")
	pay[*plan.EnsureSlot](step).Via = "guess"
	if err := run(t, r, step); err == nil || !strings.Contains(err.Error(), `unknown way "guess"`) {
		t.Fatalf("error %v", err)
	}
}

// The gate's edge: the target is promoted only once it has replayed the
// demoted primary's final LSN itself; one byte short, it never is, and the
// switchover backs out within its budget.
func TestSwitchoverGateEdge(t *testing.T) {
	const final = snapshot.LSN(0x5027AD8 + 0x400) // the demoted primary's end, past the fence's
	for _, tc := range []struct {
		name     string
		replayed snapshot.LSN
		promoted bool
	}{
		{"one byte short", final - 1, false},
		{"at the final LSN", final, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := switchoverWorld()
			w.react = func(w *world, what, name string) {
				operator(w, what, name)
				if name == "orders-east" && what == "spec" && w.cluster(name).PG.InRecovery {
					w.cluster(name).PG.ReplayLSN = final // its shutdown checkpoint and what came before
					west := w.cluster("orders-west")
					west.PG.ReplayLSN, west.PG.ReceiveLSN = tc.replayed, tc.replayed
				}
			}
			r, _ := runner(w)
			r.StepTimeout, r.MaxWritePause, r.StallAfter = 5*time.Second, 300*time.Millisecond, 5*time.Second
			step := switchoverStep("")
			pay[*plan.Switchover](step).Restore = snapshot.Spec{Topology: "orders", Instances: 2, Replication: snapshot.Replication{Enabled: true}}
			err := run(t, r, step)
			promoted := slices.ContainsFunc(w.writes(), func(l string) bool { return strings.HasPrefix(l, "spec orders-west") })
			if promoted != tc.promoted {
				t.Fatalf("promoted %v with orders-west at %s and the gate at %s (err %v): %v", promoted, tc.replayed, final, err, w.writes())
			}
			var out *BackedOutError
			if !tc.promoted && !errors.As(err, &out) {
				t.Fatalf("error %v, want a back-out", err)
			}
		})
	}
}

// The gate read at the target: once the old primary is down, a target
// whose last replayed record is the old primary's shutdown checkpoint,
// written after the fence, holds all of its WAL; the promotion needs
// neither the old primary's restart nor its answer. One byte short of the
// checkpoint's end, a last record that is not one, or one no later than
// the fence's end of WAL (an earlier shutdown), and the promotion waits
// for the old primary in recovery, which here never comes: it backs out.
func TestSwitchoverGateReadAtTheTarget(t *testing.T) {
	const fenced = snapshot.LSN(0x5027AD8)
	const final = fenced + 0x78 // its shutdown checkpoint's end
	for _, tc := range []struct {
		name                 string
		replayed, checkpoint snapshot.LSN
		promoted             bool
		upFor                int // looks the old primary still runs after the demote
	}{
		{"one byte short", final - 1, final, false, 0},
		{"at the shutdown checkpoint's end", final, final, true, 0},
		{"a last record that is not a shutdown checkpoint", final, 0, false, 0},
		{"a shutdown checkpoint no later than the fence", fenced, fenced, false, 0},
		{"the old primary still running", final, final, true, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := switchoverWorld()
			promoted := false
			w.react = func(w *world, what, name string) {
				operator(w, what, name)
				switch {
				case name == "orders-east" && what == "spec" && w.cluster(name).Object.Spec.Replication.IsReplica:
					// Down, restarting: it answers nothing until the new
					// primary runs.
					east := w.cluster(name)
					if tc.upFor > 0 {
						east.PG.InRecovery = false // its operator has not acted yet
					} else {
						east.PG, east.PGError = nil, "connection refused"
					}
					west := w.cluster("orders-west")
					west.PG.ReplayLSN, west.PG.ReceiveLSN = tc.replayed, tc.replayed
					w.shutdownEnd = tc.checkpoint
				case name == "orders-west" && what == "spec" && !w.cluster(name).PG.InRecovery:
					if w.cluster("orders-east").Writable() {
						t.Errorf("orders-west promoted while orders-east still ran as a primary")
					}
					promoted = true
					east := w.cluster("orders-east")
					east.PG = &snapshot.PGState{SystemID: sysID, Timeline: 1, InRecovery: true, ReplayLSN: final, ReadOnlyDefault: true}
					east.PGError = ""
					w.follow("orders-east", "orders-west")
				}
			}
			up := tc.upFor
			w.onObserve = func(w *world) {
				if east := w.cluster("orders-east"); up > 0 && east.Object.Spec.Replication.IsReplica {
					if up--; up == 0 {
						east.PG, east.PGError = nil, "connection refused"
					}
				}
			}
			r, _ := runner(w)
			r.StepTimeout, r.MaxWritePause, r.StallAfter = 5*time.Second, 300*time.Millisecond, 5*time.Second
			step := switchoverStep("")
			pay[*plan.Switchover](step).FinalLSN = topology.FinalLSNShutdownCheckpoint
			pay[*plan.Switchover](step).Restore = snapshot.Spec{Topology: "orders", Instances: 2, Replication: snapshot.Replication{Enabled: true}}
			var events []Event
			r.Progress = func(e Event) { events = append(events, e) }
			err := run(t, r, step)
			if promoted != tc.promoted {
				t.Fatalf("promoted %v with orders-west at %s and the shutdown checkpoint ending at %s (err %v): %v", promoted, tc.replayed, tc.checkpoint, err, w.writes())
			}
			if !tc.promoted {
				var out *BackedOutError
				if !errors.As(err, &out) {
					t.Fatalf("error %v, want a back-out", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			gate := slices.IndexFunc(events, func(e Event) bool { return e.Type == EventGateSet })
			if gate < 0 || events[gate].LSN != final.String() || !strings.Contains(events[gate].Message, "shutdown checkpoint, read at orders-west") {
				t.Fatalf("gate event %+v", events)
			}
			// The extension was made before the fence, and the fence lifted
			// once the old primary ran again, after the promotion.
			log := w.writes()
			ext, fence := slices.Index(log, "sql orders-east create-extension"), slices.Index(log, "sql orders-east fence-on")
			lifted, promote := slices.Index(log, "sql orders-east fence-off"), slices.IndexFunc(log, func(l string) bool { return strings.HasPrefix(l, "spec orders-west") })
			if ext < 0 || ext > fence || lifted < promote {
				t.Fatalf("extension at %d, fence at %d, promotion at %d, fence lifted at %d: %v", ext, fence, promote, lifted, log)
			}
		})
	}
}

// pg_walinspect not available (contrib not installed, no right to create
// it): the switchover says so and reads the end of WAL on the old primary
// restarted in recovery.
func TestSwitchoverWithoutWalInspect(t *testing.T) {
	w := switchoverWorld()
	w.fail["sql create-extension"] = errors.New(`extension "pg_walinspect" is not available`)
	r, _ := runner(w)
	var notes []string
	r.Progress = func(e Event) {
		if e.Type == EventNote || e.Type == EventGateSet {
			notes = append(notes, e.Message)
		}
	}
	step := switchoverStep("")
	pay[*plan.Switchover](step).FinalLSN = topology.FinalLSNShutdownCheckpoint
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	if len(notes) != 2 || !strings.Contains(notes[0], "pg_walinspect is not available") || !strings.Contains(notes[1], "read in recovery") {
		t.Fatalf("events %q", notes)
	}
}

// pay is a step's payload as the type its action takes (nil when not).
func pay[P plan.Payload](s plan.Step) P {
	p, _ := s.Payload.(P)
	return p
}

// The fence waits while the old primary serves a base backup: its end
// writes WAL that, after the fence, the target could never receive. Once
// it ends, the switchover goes on; one that never ends is a refusal before
// anything is fenced.
func TestSwitchoverWaitsForABaseBackupBeforeTheFence(t *testing.T) {
	fenceOn := func(l string) bool { return l == "sql orders-east fence-on" }
	t.Run("ends", func(t *testing.T) {
		w := switchoverWorld()
		w.cluster("orders-east").PG.BaseBackups = 1
		looks := 0
		w.onObserve = func(w *world) {
			if looks++; looks == 3 {
				w.cluster("orders-east").PG.BaseBackups = 0
			} else if looks < 3 && slices.ContainsFunc(w.log, fenceOn) { // w.mu is held
				t.Errorf("fenced while a base backup ran: %v", w.log)
			}
		}
		r, _ := runner(w)
		r.StepTimeout = 5 * time.Second
		if err := run(t, r, switchoverStep("")); err != nil {
			t.Fatal(err)
		}
		if looks < 3 {
			t.Fatalf("switched over after %d looks, before the base backup ended", looks)
		}
	})
	t.Run("never ends", func(t *testing.T) {
		w := switchoverWorld()
		w.cluster("orders-east").PG.BaseBackups = 1
		r, _ := runner(w)
		err := run(t, r, switchoverStep(""))
		if err == nil || !strings.Contains(err.Error(), "not begun, nothing fenced") || !strings.Contains(err.Error(), "orders-east serves 1 base backup(s)") {
			t.Fatalf("error %v", err)
		}
		if slices.ContainsFunc(w.writes(), fenceOn) {
			t.Fatalf("fenced: %v", w.writes())
		}
	})
}

// The fence also waits while the old primary's operator builds an
// instance (not ready): that instance's base backup is still to come. One
// that never becomes ready is a refusal before anything is fenced.
func TestSwitchoverWaitsForTheOldPrimaryReady(t *testing.T) {
	fenceOn := func(l string) bool { return l == "sql orders-east fence-on" }
	building := func(w *world) {
		o := w.cluster("orders-east").Object
		o.Ready, o.Status = false, "Creating"
	}
	t.Run("becomes ready", func(t *testing.T) {
		w := switchoverWorld()
		building(w)
		looks := 0
		w.onObserve = func(w *world) {
			if looks++; looks == 3 {
				o := w.cluster("orders-east").Object
				o.Ready, o.Status = true, "Running"
			} else if looks < 3 && slices.ContainsFunc(w.log, fenceOn) { // w.mu is held
				t.Errorf("fenced while the old primary was not ready: %v", w.log)
			}
		}
		r, _ := runner(w)
		r.StepTimeout = 5 * time.Second
		if err := run(t, r, switchoverStep("")); err != nil {
			t.Fatal(err)
		}
		if looks < 3 {
			t.Fatalf("switched over after %d looks, before the old primary was ready", looks)
		}
	})
	t.Run("never ready: refused within the step's bound", func(t *testing.T) {
		w := switchoverWorld()
		building(w)
		r, _ := runner(w)
		err := run(t, r, switchoverStep(""))
		if err == nil || !strings.Contains(err.Error(), "not begun, nothing fenced") || !strings.Contains(err.Error(), `orders-east: its operator reports it "Creating", not ready`) {
			t.Fatalf("error %v", err)
		}
		if slices.ContainsFunc(w.writes(), fenceOn) {
			t.Fatalf("fenced: %v", w.writes())
		}
	})
	t.Run("never ready: after the patience, the switchover goes on", func(t *testing.T) {
		w := switchoverWorld()
		building(w)
		r, _ := runner(w)
		r.StepTimeout, r.ReadyPatience = 5*time.Second, 300*time.Millisecond
		if err := run(t, r, switchoverStep("")); err != nil {
			t.Fatal(err)
		}
	})
}

// A gap the target cannot close (the WAL it lacks is only on the demoted
// primary, now a standby, and the target's receiver does not stream) backs
// out at once rather than refusing writes until the stall or the budget
// ends it; a target that still streams, or has received the WAL and only
// not replayed it, is waited for.
func TestSwitchoverBacksOutWhenTheGapCannotClose(t *testing.T) {
	const final = snapshot.LSN(0x5027AD8 + 0x400)
	for _, tc := range []struct {
		name       string
		received   snapshot.LSN
		streaming  bool
		wantCannot bool
	}{
		{"short and not streaming", final - 0x100, false, true},
		{"short but streaming", final - 0x100, true, false},
		{"received, not yet replayed", final, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := switchoverWorld()
			w.react = func(w *world, what, name string) {
				operator(w, what, name)
				if name == "orders-east" && what == "spec" && w.cluster(name).PG.InRecovery {
					w.cluster(name).PG.ReplayLSN = final
					west := w.cluster("orders-west").PG
					west.ReplayLSN, west.ReceiveLSN = final-0x100, tc.received
					if !tc.streaming {
						west.WalReceiver.Status = "waiting"
					}
				}
			}
			r, _ := runner(w)
			r.StepTimeout, r.MaxWritePause, r.StallAfter = 30*time.Second, 30*time.Second, 2500*time.Millisecond
			step := switchoverStep("")
			pay[*plan.Switchover](step).Restore = snapshot.Spec{Topology: "orders", Instances: 2, Replication: snapshot.Replication{Enabled: true}}
			began := time.Now()
			err := run(t, r, step)
			var out *BackedOutError
			if !errors.As(err, &out) {
				t.Fatalf("error %v, want a back-out", err)
			}
			cannot := strings.Contains(err.Error(), "cannot pass")
			if cannot != tc.wantCannot {
				t.Fatalf("backed out as hopeless %v, want %v: %v", cannot, tc.wantCannot, err)
			}
			if cannot && !strings.Contains(err.Error(), "orders-west received up to 0/5027DD8 and does not stream") {
				t.Fatalf("error %v, want what was received said", err)
			}
			if tc.wantCannot && time.Since(began) > 2*time.Second {
				t.Fatalf("took %s to see the gap cannot close", time.Since(began))
			}
			if slices.ContainsFunc(w.writes(), func(l string) bool { return strings.HasPrefix(l, "spec orders-west") }) {
				t.Fatalf("promoted past the gate: %v", w.writes())
			}
		})
	}
}

// slotsFunc is a SwitchoverSlots of a function.
type slotsFunc func(ctx context.Context, sites []string) (func(), time.Duration, error)

func (f slotsFunc) Acquire(ctx context.Context, sites []string) (func(), time.Duration, error) {
	return f(ctx, sites)
}

// A switchover takes a slot in both its sites before the fence and gives
// them back once done; one that gets no slot fences nothing.
func TestSwitchoverTakesASlotBeforeTheFence(t *testing.T) {
	w := switchoverWorld()
	r, _ := runner(w)
	var order []string
	r.Switchovers = slotsFunc(func(_ context.Context, sites []string) (func(), time.Duration, error) {
		order = append(order, fmt.Sprintf("acquire %v after %d writes", sites, len(w.writes())))
		return func() { order = append(order, "release") }, time.Second, nil
	})
	if err := run(t, r, switchoverStep("")); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(order, []string{"acquire [east west] after 0 writes", "release"}) {
		t.Fatalf("slots %v, want one taken before any write and given back", order)
	}

	w = switchoverWorld()
	r, _ = runner(w)
	r.Switchovers = slotsFunc(func(context.Context, []string) (func(), time.Duration, error) {
		return nil, 0, context.DeadlineExceeded
	})
	err := run(t, r, switchoverStep(""))
	if err == nil || !strings.Contains(err.Error(), "not begun, nothing fenced: waiting for a switchover slot in sites east and west") {
		t.Fatalf("error %v", err)
	}
	if got := w.writes(); len(got) > 0 {
		t.Fatalf("wrote %v without a slot", got)
	}
}

// focusedWorld is a world whose observer can look at a few clusters alone,
// counting both kinds of look.
type focusedWorld struct {
	*world
	full, few int
	names     map[string]bool
}

func (f *focusedWorld) Observe(ctx context.Context) *snapshot.Snapshot {
	f.full++
	return f.world.Observe(ctx)
}

func (f *focusedWorld) ObserveClusters(ctx context.Context, names []string) *snapshot.Snapshot {
	f.few++
	all := f.world.Observe(ctx)
	part := &snapshot.Snapshot{Topology: all.Topology}
	for _, c := range all.Clusters {
		if slices.Contains(names, c.Name) {
			f.names[c.Name] = true
			part.Clusters = append(part.Clusters, c)
		}
	}
	return part
}

// A switchover's waits poll the two clusters it moves, each poll a look at
// them alone; full looks are few, whatever the number of polls.
func TestSwitchoverWaitsPollWhatTheyWaitFor(t *testing.T) {
	w := switchoverWorld()
	f := &focusedWorld{world: w, names: map[string]bool{}}
	r, _ := runner(w)
	r.Observer = f
	step := switchoverStep("")
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	if c := w.cluster("orders-west"); !c.Writable() || c.PG.Timeline != 2 {
		t.Fatalf("west not primary on timeline 2: %+v", c.PG)
	}
	if f.few == 0 || f.full > 1 {
		t.Fatalf("%d full looks and %d looks at a few clusters: the waits should poll the few", f.full, f.few)
	}
	if len(f.names) != 2 || !f.names["orders-east"] || !f.names["orders-west"] {
		t.Fatalf("polled %v, want orders-east and orders-west", f.names)
	}
}
