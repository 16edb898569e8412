package apply

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pgtopo/pgtopo/plan"
)

func TestLocksEverySiteInOrder(t *testing.T) {
	w := newWorld()
	r := &Runner{Holder: "me", LockTimeout: time.Second, Sites: w.Sites}
	lock := &plan.Lock{Lease: "pgtopo-orders", Sites: []plan.Subject{
		{Site: "east", Namespace: "db"}, {Site: "south", Namespace: "ledger"}, {Site: "west", Namespace: "db"}}}
	step := plan.Step{Action: plan.ActionLock, Payload: lock}
	x := &stepRun{r: r, step: step}
	held, err := r.acquire(context.Background(), lock, x)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(w.writes(), ","); got != "lease east/db/pgtopo-orders create,lease south/ledger/pgtopo-orders create,lease west/db/pgtopo-orders create" {
		t.Fatalf("Leases taken: %s, want east, south, west in that order", got)
	}
	holder := func(key string) string {
		w.mu.Lock()
		defer w.mu.Unlock()
		if l, ok := w.leases[key]; ok && l.Spec.HolderIdentity != nil {
			return *l.Spec.HolderIdentity
		}
		return ""
	}
	keys := []string{"east/db/pgtopo-orders", "south/ledger/pgtopo-orders", "west/db/pgtopo-orders"}
	for _, k := range keys {
		if h := holder(k); !strings.HasPrefix(h, "me/") {
			t.Fatalf("%s: holder %q, want me/<run>", k, h)
		}
	}
	held.release(context.Background())
	for _, k := range keys {
		if h := holder(k); h != "" {
			t.Fatalf("%s: holder %q after release", k, h)
		}
	}

	// Another live holder in the last site: the run gives up naming it and
	// hands back the Leases it took on the way.
	other, secs, now := "ci-runner-7", int32(30), metav1.NewMicroTime(time.Now())
	w.leases["west/db/pgtopo-orders"] = &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "pgtopo-orders", Namespace: "db"},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &other, LeaseDurationSeconds: &secs, RenewTime: &now},
	}
	_, err = r.acquire(context.Background(), lock, x)
	if err == nil || !strings.Contains(err.Error(), "lock db/pgtopo-orders in site west is held by ci-runner-7") {
		t.Fatalf("error = %v, want the holder named", err)
	}
	for _, k := range keys[:2] {
		if h := holder(k); h != "" {
			t.Fatalf("%s still held by %q after a failed lock", k, h)
		}
	}
}

// A holder known to be gone (a killed run of this host) is taken over at
// once; one that is not is waited for.
func TestLockTakesOverAGoneHolder(t *testing.T) {
	w := newWorld()
	other, secs, now := "host-4242-dead00", int32(15), metav1.NewMicroTime(time.Now())
	w.leases["east/db/pgtopo-orders"] = &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "pgtopo-orders", Namespace: "db"},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &other, LeaseDurationSeconds: &secs, RenewTime: &now},
	}
	lock := &plan.Lock{Lease: "pgtopo-orders", Sites: []plan.Subject{{Site: "east", Namespace: "db"}}}
	step := plan.Step{Action: plan.ActionLock, Payload: lock}
	r := &Runner{Holder: "me", LockTimeout: 100 * time.Millisecond, Sites: w.Sites, HolderGone: func(h string) bool { return false }}
	_, err := r.acquire(context.Background(), lock, &stepRun{r: r, step: step})
	var held *LockHeldError
	if !errors.As(err, &held) || held.Holder != other {
		t.Fatalf("error %v, want the live holder named", err)
	}
	r.HolderGone = func(h string) bool { return h == other }
	locks, err := r.acquire(context.Background(), lock, &stepRun{r: r, step: step})
	if err != nil {
		t.Fatal(err)
	}
	defer locks.release(context.Background())
	if h := *w.leases["east/db/pgtopo-orders"].Spec.HolderIdentity; !strings.HasPrefix(h, "me/") {
		t.Fatalf("holder %q", h)
	}
}

// A Lease held across runs (a drill): a run given it takes and releases
// nothing, another holder's run is kept out, and Release frees it.
func TestHeldLockSpansRuns(t *testing.T) {
	w := newWorld()
	lock := &plan.Lock{Lease: "pgtopo-orders", Sites: []plan.Subject{{Site: "east", Namespace: "db"}, {Site: "west", Namespace: "db"}}}
	step := plan.Step{Action: plan.ActionLock, Payload: lock}
	drill := &Runner{Holder: "drill", LockTimeout: time.Second, Sites: w.Sites}
	held, err := drill.HoldLock(context.Background(), lock)
	if err != nil {
		t.Fatal(err)
	}
	holder := func() string {
		w.mu.Lock()
		defer w.mu.Unlock()
		if l := w.leases["east/db/pgtopo-orders"]; l != nil && l.Spec.HolderIdentity != nil {
			return *l.Spec.HolderIdentity
		}
		return ""
	}
	run := &Runner{Holder: "drill", LockTimeout: time.Second, Sites: w.Sites, Held: held}
	for range 2 {
		if err := (&stepRun{r: run, step: step}).Lock(context.Background(), plan.Subject{}, lock); err != nil {
			t.Fatal(err)
		}
		run.held.release(context.Background()) // what a run's end does
		if h := holder(); !strings.HasPrefix(h, "drill/") {
			t.Fatalf("after a run given the held lock: holder %q, want drill/<run>", h)
		}
	}
	other := &Runner{Holder: "reconcile-1", LockTimeout: 10 * time.Millisecond, Sites: w.Sites}
	var busy *LockHeldError
	if err := (&stepRun{r: other, step: step}).Lock(context.Background(), plan.Subject{}, lock); !errors.As(err, &busy) {
		t.Fatalf("another holder's run during the drill: %v, want the Lease held", err)
	}
	wrong := &Runner{Holder: "drill", Sites: w.Sites, Held: held}
	if err := (&stepRun{r: wrong}).Lock(context.Background(), plan.Subject{}, &plan.Lock{Lease: "pgtopo-billing", Sites: lock.Sites}); err == nil {
		t.Fatal("a held lock of another Lease was taken for this one")
	}
	held.Release(context.Background())
	if h := holder(); h != "" {
		t.Fatalf("after Release: holder %q", h)
	}
}

// Two runs of one process (an agent's loop and its quorum's fence lift)
// share its Holder but not the Lease: the second waits for the first, and
// cannot release what the first holds.
func TestRunsOfOneProcessExcludeEachOther(t *testing.T) {
	w := newWorld()
	lock := &plan.Lock{Lease: "pgtopo-orders", Sites: []plan.Subject{{Site: "east", Namespace: "db"}}}
	step := plan.Step{Action: plan.ActionLock, Payload: lock}
	gone := func(string) bool { return false }
	first := &Runner{Holder: "agent-1", LockTimeout: time.Second, Sites: w.Sites, HolderGone: gone}
	held, err := first.acquire(context.Background(), lock, &stepRun{r: first, step: step})
	if err != nil {
		t.Fatal(err)
	}
	defer held.release(context.Background())
	second := &Runner{Holder: "agent-1", LockTimeout: 50 * time.Millisecond, Sites: w.Sites, HolderGone: gone}
	_, err = second.acquire(context.Background(), lock, &stepRun{r: second, step: step})
	var busy *LockHeldError
	if !errors.As(err, &busy) || busy.Holder != first.lockHolder() {
		t.Fatalf("a second run of the same process: %v, want the Lease held by the first (%s)", err, first.lockHolder())
	}
	w.mu.Lock()
	h := *w.leases["east/db/pgtopo-orders"].Spec.HolderIdentity
	w.mu.Unlock()
	if h != first.lockHolder() {
		t.Fatalf("holder %q after the second run gave up, want the first's %q", h, first.lockHolder())
	}
}
