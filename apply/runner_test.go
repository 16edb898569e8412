package apply

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/snapshot"
)

func lockStep() plan.Step {
	return plan.Step{Action: plan.ActionLock, Subject: plan.Subject{Site: "east", Namespace: "db"},
		Payload: &plan.Lock{Lease: "pgtopo-orders", Sites: []plan.Subject{{Site: "east", Namespace: "db"}}}}
}

func recordStep(digest string) plan.Step {
	return plan.Step{Action: plan.ActionRecord, Subject: subject("east", "orders-east"), Payload: &plan.Record{Marks: snapshot.Marks{Digest: digest}}}
}

func planOf(steps ...plan.Step) plan.Plan {
	return plan.Plan{Topology: "orders", Digest: "d1", Steps: steps}
}

func TestExecuteRunsThePlanAsPrinted(t *testing.T) {
	w := newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1))
	r, events := runner(w)
	pl := planOf(lockStep(), recordStep("d1"))
	replans := 0
	r.Replan = func(*snapshot.Snapshot) plan.Plan {
		replans++
		if replans == 1 {
			return pl // after the lock: unchanged
		}
		return planOf() // after the last step: in sync
	}
	res, err := r.Execute(context.Background(), pl, plan.Basis{})
	if err != nil {
		t.Fatal(err)
	}
	wantWrites(t, w, "lease east/db/pgtopo-orders create", "marks orders-east digest=d1 revision= journal=-")
	if len(res.Completed) != 2 || res.Remaining != nil || replans != 2 {
		t.Fatalf("completed %d, remaining %v, replans %d", len(res.Completed), res.Remaining, replans)
	}
	// One look before the lock; one after it, to re-plan, which is also the
	// record step's look; one at the end.
	if w.observed != 3 {
		t.Fatalf("%d looks at the world, want 3", w.observed)
	}
	if h := w.leases["east/db/pgtopo-orders"].Spec.HolderIdentity; h == nil || *h != "" {
		t.Fatal("the Lease was not released")
	}
	var steps []int
	for _, e := range *events {
		if e.Type == EventStep {
			steps = append(steps, e.Step)
			if e.Steps != 2 {
				t.Fatalf("event %+v: steps %d, want 2", e, e.Steps)
			}
		}
	}
	// Converged, then the Lease released, said last.
	n := len(*events)
	if last := (*events)[n-1]; !slices.Equal(steps, []int{1, 2}) || (*events)[n-2].Type != EventConverged || last.Type != EventLock || last.Message != "lock: releasing Lease pgtopo-orders" {
		t.Fatalf("events %+v", *events)
	}
}

// A plan just computed from a look is executed from that look: the lock's
// precondition is checked on it, with no second look before the lock.
func TestExecuteFromTheLookThePlanCameFrom(t *testing.T) {
	w := newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1))
	r, _ := runner(w)
	pl := planOf(lockStep(), recordStep("d1"))
	r.Replan = func(s *snapshot.Snapshot) plan.Plan {
		if s.Clusters[0].Object.Marks.Digest == "d1" {
			return planOf()
		}
		return pl
	}
	seen := w.Observe(context.Background())
	if _, err := r.ExecuteFrom(context.Background(), pl, seen); err != nil {
		t.Fatal(err)
	}
	// The plan's own look, one after the lock, one at the end.
	if w.observed != 3 {
		t.Fatalf("%d looks at the world, want 3", w.observed)
	}
	// A precondition that fails on the look given is a refusal before the
	// lock, even if the world would pass it now.
	w = newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1))
	r, _ = runner(w)
	seen = w.Observe(context.Background())
	seen.Sites[0].Reachable = false
	guarded := lockStep()
	guarded.Preconditions = []plan.Precondition{{Kind: plan.CondSiteReachable, Site: "east"}}
	if _, err := r.ExecuteFrom(context.Background(), planOf(guarded, recordStep("d1")), seen); err == nil {
		t.Fatal("the lock was taken although the look the plan came from had its site unreachable")
	}
	wantWrites(t, w)
}

// A saved plan (no Changed) whose world changed while it waited for the
// lock is refused as stale, with nothing written but the lock.
func TestExecuteRefusesAStalePlanAfterTheLock(t *testing.T) {
	w := newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1))
	r, _ := runner(w)
	pl := planOf(lockStep(), recordStep("d1"))
	basis := plan.BasisOf(w.Observe(context.Background()))
	w.cluster("orders-east").Object.Spec.Instances = 5 // a hand edit meanwhile
	r.Replan = func(*snapshot.Snapshot) plan.Plan { return planOf(lockStep(), recordStep("d2")) }
	_, err := r.Execute(context.Background(), pl, basis)
	var stale *StaleError
	if !errors.As(err, &stale) || !strings.Contains(err.Error(), "stale plan: orders-east: resourceVersion  → : numberOfInstances 2 → 5; run diff again") {
		t.Fatalf("error %v, want a stale plan naming orders-east", err)
	}
	wantWrites(t, w, "lease east/db/pgtopo-orders create")
}

// A live run prints the new plan and why, then runs that.
func TestExecuteRunsTheChangedPlanAfterSayingSo(t *testing.T) {
	w := newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1))
	r, _ := runner(w)
	var told []string
	r.Changed = func(now plan.Plan, why []string) error { told = why; return nil }
	changed := planOf(lockStep(), recordStep("d2"))
	r.Replan = func(*snapshot.Snapshot) plan.Plan {
		if len(told) == 0 {
			return changed
		}
		return planOf()
	}
	res, err := r.Execute(context.Background(), planOf(lockStep(), recordStep("d1")), plan.Basis{})
	if err != nil {
		t.Fatal(err)
	}
	wantWrites(t, w, "lease east/db/pgtopo-orders create", "marks orders-east digest=d2 revision= journal=-")
	if len(told) == 0 || !plan.Same(res.Plan, changed) {
		t.Fatalf("told %q; result plan %+v", told, res.Plan)
	}

	// Changed can stop the run instead.
	w2 := newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1))
	r2, _ := runner(w2)
	r2.Replan = func(*snapshot.Snapshot) plan.Plan { return changed }
	r2.Changed = func(plan.Plan, []string) error { return errors.New("no") }
	if _, err := r2.Execute(context.Background(), planOf(lockStep(), recordStep("d1")), plan.Basis{}); err == nil || err.Error() != "no" {
		t.Fatalf("error %v", err)
	}
	wantWrites(t, w2, "lease east/db/pgtopo-orders create")

	// A changed plan that is refused stops with the refusal.
	w3 := newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1))
	r3, _ := runner(w3)
	r3.Changed = func(plan.Plan, []string) error { return nil }
	r3.Replan = func(*snapshot.Snapshot) plan.Plan {
		return plan.Plan{Refusals: []plan.Refusal{{Reason: "site west unreachable"}}}
	}
	if _, err := r3.Execute(context.Background(), planOf(lockStep(), recordStep("d1")), plan.Basis{}); !IsRefused(err) {
		t.Fatalf("error %v, want a refusal", err)
	}

	// A changed plan with nothing left converges.
	w4 := newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1))
	r4, _ := runner(w4)
	r4.Changed = func(plan.Plan, []string) error { return nil }
	r4.Replan = func(*snapshot.Snapshot) plan.Plan { return planOf() }
	if res, err := r4.Execute(context.Background(), planOf(lockStep(), recordStep("d1")), plan.Basis{}); err != nil || len(res.Completed) != 1 {
		t.Fatalf("error %v, completed %d", err, len(res.Completed))
	}
	wantWrites(t, w4, "lease east/db/pgtopo-orders create")
}

func TestExecuteFollowUps(t *testing.T) {
	w := newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1))
	r, events := runner(w)
	r.FollowUps = 1
	n := 0
	r.Replan = func(*snapshot.Snapshot) plan.Plan {
		n++
		if n == 1 {
			return planOf(recordStep("d2")) // what only shows once the first plan is done
		}
		return planOf()
	}
	if _, err := r.Execute(context.Background(), planOf(recordStep("d1")), plan.Basis{}); err != nil {
		t.Fatal(err)
	}
	wantWrites(t, w, "marks orders-east digest=d1 revision= journal=-", "marks orders-east digest=d2 revision= journal=-")
	if !slices.ContainsFunc(*events, func(e Event) bool { return e.Type == EventReplan }) {
		t.Fatal("the follow-up plan was not announced")
	}

	// Without follow-ups, what remains is reported, not run.
	w2 := newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1))
	r2, _ := runner(w2)
	r2.Replan = func(*snapshot.Snapshot) plan.Plan { return planOf(recordStep("d2")) }
	res, err := r2.Execute(context.Background(), planOf(recordStep("d1")), plan.Basis{})
	if err != nil || res.Remaining == nil || len(res.Remaining.Steps) != 1 {
		t.Fatalf("error %v, remaining %+v", err, res.Remaining)
	}
	wantWrites(t, w2, "marks orders-east digest=d1 revision= journal=-")
}

func TestExecuteStopsOnRefusalDrainAndFailure(t *testing.T) {
	w := newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1))
	r, _ := runner(w)
	if _, err := r.Execute(context.Background(), plan.Plan{Refusals: []plan.Refusal{{Reason: "split brain"}}}, plan.Basis{}); !IsRefused(err) || err.Error() != "refused: split brain" {
		t.Fatalf("error %v", err)
	}

	drain := make(chan struct{})
	close(drain)
	r.Drain = drain
	if _, err := r.Execute(context.Background(), planOf(recordStep("d1")), plan.Basis{}); !errors.Is(err, ErrDrained) {
		t.Fatalf("error %v", err)
	}
	r.Drain = nil
	wantWrites(t, w)

	// A precondition that fails stops the run before that step, naming it.
	bad := recordStep("d1")
	bad.Preconditions = []plan.Precondition{{Kind: plan.CondSiteReachable, Site: "west"}}
	res, err := r.Execute(context.Background(), planOf(recordStep("d0"), bad, recordStep("d2")), plan.Basis{})
	if err == nil || err.Error() != "record orders-east (east/db): precondition site-reachable no longer holds: site west unreachable" {
		t.Fatalf("error %v", err)
	}
	if len(res.Completed) != 1 {
		t.Fatalf("completed %d, want 1", len(res.Completed))
	}
	wantWrites(t, w, "marks orders-east digest=d0 revision= journal=-")

	if _, err := r.Execute(context.Background(), planOf(plan.Step{Action: "teleport"}), plan.Basis{}); err == nil || !strings.Contains(err.Error(), `unknown action "teleport"`) {
		t.Fatalf("error %v", err)
	}
	if (&RefusedError{}).Error() != "refused" {
		t.Fatal("an empty refusal")
	}
}

func TestProgressRenderers(t *testing.T) {
	ev := Event{Elapsed: 2.34, Step: 3, Steps: 5, Action: plan.ActionSwitchover, Type: EventFence, Message: "fence: orders-east refuses new writes", LSN: "0/5"}
	var text bytes.Buffer
	TextProgress(&text)(ev)
	TextProgress(&text)(Event{Elapsed: 2.4, Step: 3, Type: EventStep, Message: "switchover orders-west"})
	if got := text.String(); got != "[   2.3s]   fence: orders-east refuses new writes\n[   2.4s] switchover orders-west\n" {
		t.Fatalf("text %q", got)
	}
	var js bytes.Buffer
	JSONProgress(&js)(ev)
	var back Event
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || back.Type != EventFence || back.LSN != "0/5" || back.Step != 3 {
		t.Fatalf("json %s: %v", js.String(), err)
	}
	var logs bytes.Buffer
	lag := int64(42)
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	LogProgress(log)(Event{Step: 1, Steps: 2, Type: EventWaiting, Message: "waiting"})
	LogProgress(log)(Event{Step: 1, Steps: 2, Action: plan.ActionSwitchover, Type: EventGate, Message: "gate passed", LagBytes: &lag})
	if got := logs.String(); strings.Contains(got, "waiting") || !strings.Contains(got, `msg="gate passed" event=gate`) || !strings.Contains(got, "step=1/2") || !strings.Contains(got, "lagBytes=42") {
		t.Fatalf("logs %q", got)
	}
}

// A run that finds after the lock that another run changed the primary
// refuses rather than switch over a second time from a plan made before,
// unless its file asks for the primary the other run made (nothing left to
// do) or a revision from Git that the planner did not refuse (not older
// than the one applied), which goes on and says so.
func TestExecuteRefusesWhenAnotherRunMovedThePrimary(t *testing.T) {
	roles := func(now, after string) []plan.ClusterRoles {
		var out []plan.ClusterRoles
		for _, c := range []string{"orders-east", "orders-west", "orders-north"} {
			r := plan.ClusterRoles{Name: c, Now: plan.RoleStandby, After: plan.RoleStandby}
			if c == now {
				r.Now = plan.RolePrimary
			}
			if c == after {
				r.After = plan.RolePrimary
			}
			out = append(out, r)
		}
		return out
	}
	for _, tc := range []struct {
		name, wants, revision string
		wantErr, wantEvent    string
	}{
		{"a file asking for another primary", "orders-north", "", "another run changed the primary from orders-east to orders-west while this run waited for the lock", ""},
		{"a file asking for the primary the other run made", "orders-west", "", "", ""},
		{"a revision from Git not refused", "orders-north", "c0ffee", "", "revision c0ffee is not older"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1))
			r, events := runner(w)
			r.Changed = func(plan.Plan, []string) error { return nil }
			before := planOf(lockStep(), recordStep("d1"))
			before.Clusters, before.Revision = roles("orders-east", tc.wants), tc.revision
			after := planOf(lockStep(), recordStep("d1"))
			after.Clusters, after.Revision = roles("orders-west", tc.wants), tc.revision
			r.Replan = func(*snapshot.Snapshot) plan.Plan { return after }
			_, err := r.Execute(context.Background(), before, plan.Basis{})
			if tc.wantErr != "" {
				var moved *PrimaryMovedError
				if !errors.As(err, &moved) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				wantWrites(t, w, "lease east/db/pgtopo-orders create")
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantEvent != "" && !slices.ContainsFunc(*events, func(e Event) bool { return strings.Contains(e.Message, tc.wantEvent) }) {
				t.Fatalf("no event says %q", tc.wantEvent)
			}
		})
	}
}
