package cli

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/pgtopo/pgtopo/apply"
	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/reconcile"
	"github.com/pgtopo/pgtopo/topology"
)

// A site's slots bound the switchovers there: a second taker waits until
// the first gives its slot back; takers of the same sites in opposite
// orders never hold one each; a taker whose context ends takes nothing.
func TestSiteSlots(t *testing.T) {
	s := newSiteSlots(1)
	ctx := context.Background()
	release, waited, err := s.acquire(ctx, []string{"east", "west"}, nil)
	if err != nil || waited != 0 {
		t.Fatalf("first taker: waited %s, %v", waited, err)
	}
	got := make(chan time.Duration)
	go func() {
		r, w, err := s.acquire(ctx, []string{"west"}, nil)
		if err != nil {
			t.Error(err)
		}
		r()
		got <- w
	}()
	select {
	case <-got:
		t.Fatal("a second switchover took west's one slot while the first held it")
	case <-time.After(50 * time.Millisecond):
	}
	release()
	if w := <-got; w < 50*time.Millisecond {
		t.Fatalf("waited %s, want the time the first held it", w)
	}

	// Opposite orders, many times: no deadlock.
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sites := []string{"east", "west"}
			if i%2 == 1 {
				sites = []string{"west", "east"}
			}
			r, _, err := s.acquire(ctx, sites, nil)
			if err != nil {
				t.Error(err)
				return
			}
			r()
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("takers in opposite orders deadlocked")
	}

	// A context that ends: an error, and the slot it had taken is given back.
	hold, _, _ := s.acquire(ctx, []string{"west"}, nil)
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, _, err := s.acquire(short, []string{"east", "west"}, nil); err == nil {
		t.Fatal("took west while it was held")
	}
	hold()
	r, waited, err := s.acquire(ctx, []string{"east"}, nil)
	if err != nil || waited != 0 {
		t.Fatalf("east after a cancelled taker: waited %s, %v (its slot was not given back)", waited, err)
	}
	r()
}

// A plan's slots are its sites' kube contexts: two topologies whose sites
// have other names but the same contexts share them.
func TestPlanSlotsKeyByContext(t *testing.T) {
	s := newSiteSlots(1)
	a := planSlots{slots: s, contexts: map[string]string{"east": "lab-east"}}
	b := planSlots{slots: s, contexts: map[string]string{"dc1": "lab-east"}}
	release, _, err := a.Acquire(context.Background(), []string{"east"})
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, _, err := b.Acquire(ctx, []string{"dc1"}); err == nil {
		t.Fatal("dc1 (context lab-east) took a slot east (the same context) held")
	}
}

// A file's own bound for a site holds for its switchovers: with the flag at
// 2 and the file saying 1, its second waits while one runs there, and one
// without a bound of its own still takes the second slot.
func TestPlanSlotsHoldTheFilesBound(t *testing.T) {
	s := newSiteSlots(2)
	ctx := context.Background()
	one := planSlots{slots: s, contexts: map[string]string{"east": "lab-east"}, limits: map[string]int{"east": 1}}
	free := planSlots{slots: s, contexts: map[string]string{"east": "lab-east"}}
	r1, _, err := one.Acquire(ctx, []string{"east"})
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, _, err := one.Acquire(short, []string{"east"}); err == nil {
		t.Fatal("a second switchover of a file bounded to 1 in east took a slot")
	}
	r2, _, err := free.Acquire(ctx, []string{"east"})
	if err != nil {
		t.Fatalf("a file without a bound of its own: %v (the flag allows 2)", err)
	}
	r1()
	r2()
}

// A run takes its switchover's slots before the topology's Lease, so it
// never holds the Lease while waiting for a slot; its switchover then
// takes them without waiting. A plan changed under the Lease to other
// sites gives the early slots back before waiting for its own.
func TestPlanSlotsTakenAheadOfTheLease(t *testing.T) {
	s := newSiteSlots(1)
	ctx := context.Background()
	sw := func(from, to string) plan.Plan {
		return plan.Plan{Steps: []plan.Step{{Action: plan.ActionSwitchover, Payload: &plan.Switchover{
			From: plan.Subject{Cluster: "a", Site: from}, To: plan.Subject{Cluster: "b", Site: to}}}}}
	}
	ps := planSlots{slots: s, ahead: &aheadSlots{}}
	_, release, err := ps.TakeAhead(ctx, sw("east", "west"))
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, _, err := s.acquire(short, []string{"site east"}, nil); err == nil {
		t.Fatal("east's slot was free while taken ahead")
	}
	got, waited, err := ps.Acquire(ctx, []string{"east", "west"})
	if err != nil || waited != 0 {
		t.Fatalf("the switchover waited %v for slots taken ahead: %v", waited, err)
	}
	got()
	release() // nothing left: the switchover gave them back
	if r, _, err := s.acquire(ctx, []string{"site east", "site west"}, nil); err != nil {
		t.Fatal(err)
	} else {
		r()
	}

	// Replanned to other sites: the early pair is given back first.
	_, release, _ = ps.TakeAhead(ctx, sw("east", "west"))
	got, _, err = ps.Acquire(ctx, []string{"east", "north"})
	if err != nil {
		t.Fatal(err)
	}
	if r, _, err := s.acquire(short, []string{"site west"}, nil); err != nil {
		t.Fatalf("west still held after the plan moved to north: %v", err)
	} else {
		r()
	}
	got()
	release()

	// Taken ahead, never used (another replica ran it): release frees it.
	_, release, _ = ps.TakeAhead(ctx, sw("east", "west"))
	release()
	if r, _, err := s.acquire(short, []string{"site east", "site west"}, nil); err != nil {
		t.Fatalf("slots taken ahead stayed held: %v", err)
	} else {
		r()
	}

	// A resumed switchover is past its fence: it takes nothing ahead.
	resumed := sw("east", "west")
	resumed.Steps[0].Payload.(*plan.Switchover).Resume = "demoting"
	_, release, _ = ps.TakeAhead(ctx, resumed)
	defer release()
	if r, _, err := s.acquire(short, []string{"site east", "site west"}, nil); err != nil {
		t.Fatalf("a resumed switchover took slots ahead: %v", err)
	} else {
		r()
	}
}

// memLeases is a site's Leases in memory, with the API server's
// compare-and-swap on resourceVersion.
type memLeases struct {
	mu     sync.Mutex
	leases map[string]coordinationv1.Lease
	rv     int
}

func (m *memLeases) GetLease(_ context.Context, ns, name string) (*coordinationv1.Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l, ok := m.leases[ns+"/"+name]
	if !ok {
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "leases"}, name)
	}
	return l.DeepCopy(), nil
}

func (m *memLeases) CreateLease(_ context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.leases[l.Namespace+"/"+l.Name]; ok {
		return nil, apierrors.NewAlreadyExists(schema.GroupResource{Resource: "leases"}, l.Name)
	}
	m.rv++
	c := *l.DeepCopy()
	c.ResourceVersion = strconv.Itoa(m.rv)
	m.leases[l.Namespace+"/"+l.Name] = c
	return c.DeepCopy(), nil
}

func (m *memLeases) UpdateLease(_ context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur, ok := m.leases[l.Namespace+"/"+l.Name]; !ok || cur.ResourceVersion != l.ResourceVersion {
		return nil, apierrors.NewConflict(schema.GroupResource{Resource: "leases"}, l.Name, errors.New("stale resourceVersion"))
	}
	m.rv++
	c := *l.DeepCopy()
	c.ResourceVersion = strconv.Itoa(m.rv)
	m.leases[l.Namespace+"/"+l.Name] = c
	return c.DeepCopy(), nil
}

// Two processes (reconcile replicas), each with its own slots in memory,
// share a site's bound through its slot Leases: with a bound of 1 the
// second waits, says who holds the slot, and takes it once it is given
// back. A Patroni site (no context) keeps no Leases.
func TestPlanSlotsSharedByProcesses(t *testing.T) {
	stores := map[string]*memLeases{"east": {leases: map[string]coordinationv1.Lease{}}, "west": {leases: map[string]coordinationv1.Lease{}}}
	pl := plan.Plan{
		Sites: []plan.Site{{Name: "east", Context: "lab-east"}, {Name: "west", Context: "lab-west"}, {Name: "dc1"}},
		Steps: []plan.Step{{Action: plan.ActionSwitchover, Payload: &plan.Switchover{
			From: plan.Subject{Cluster: "a-east", Site: "east", Namespace: "db"}, To: plan.Subject{Cluster: "a-west", Site: "west", Namespace: "db"}}}},
	}
	replica := func(name string) planSlots {
		return newPlanSlots(newSiteSlots(1), pl, &topology.Desired{}, &slotLeases{
			store: func(site string) (apply.LeaseStore, error) {
				if s, ok := stores[site]; ok {
					return s, nil
				}
				return nil, fmt.Errorf("site %s keeps no Leases", site)
			},
			holder: name, retry: 5 * time.Millisecond})
	}
	a, b := replica("replica-a"), replica("replica-b")
	ctx := context.Background()
	releaseA, _, err := a.Acquire(ctx, []string{"east", "west", "dc1"})
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, _, err := b.Acquire(short, []string{"east", "west"}); err == nil || !strings.Contains(err.Error(), "site east: 1 of 1 switchover slots held (replica-a/slot-") {
		t.Fatalf("the second replica: %v, want it to wait for east's slot, naming its holder", err)
	}
	got := make(chan error, 1)
	go func() {
		release, waited, err := b.Acquire(ctx, []string{"east", "west"})
		if err == nil {
			release()
			if waited == 0 {
				err = errors.New("took the slot without waiting")
			}
		}
		got <- err
	}()
	time.Sleep(30 * time.Millisecond)
	releaseA()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the second replica never took the slot the first gave back")
	}
}

// Under a reconcile's Lease a switchover whose slots were not taken
// ahead (its plan changed after locking) does not wait for them: with
// the slot held by another replica's Lease, or by another run of its
// own process, it reports the topology busy at once and holds nothing;
// with the slot free it takes it.
func TestPlanSlotsDoNotWaitUnderTheLease(t *testing.T) {
	stores := map[string]*memLeases{"east": {leases: map[string]coordinationv1.Lease{}}, "west": {leases: map[string]coordinationv1.Lease{}}}
	pl := plan.Plan{
		Sites: []plan.Site{{Name: "east", Context: "lab-east"}, {Name: "west", Context: "lab-west"}},
		Steps: []plan.Step{{Action: plan.ActionSwitchover, Payload: &plan.Switchover{
			From: plan.Subject{Cluster: "a-east", Site: "east", Namespace: "db"}, To: plan.Subject{Cluster: "a-west", Site: "west", Namespace: "db"}}}},
	}
	replica := func(name string, slots *siteSlots) planSlots {
		p := newPlanSlots(slots, pl, &topology.Desired{}, &slotLeases{
			store:  func(site string) (apply.LeaseStore, error) { return stores[site], nil },
			holder: name, retry: 5 * time.Millisecond})
		p.busyUnderLease = true
		return p
	}
	ctx := context.Background()
	sites := []string{"east", "west"}
	shared := newSiteSlots(1)
	a, b, sameProcess := replica("replica-a", newSiteSlots(1)), replica("replica-b", shared), replica("replica-b", shared)

	releaseA, _, err := a.Acquire(ctx, sites)
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	bounded, cancel := context.WithTimeout(ctx, 3*time.Second) // a wait fails, not hangs
	defer cancel()
	_, _, err = b.Acquire(bounded, sites)
	var busy *reconcile.BusyError
	if !errors.As(err, &busy) || !strings.Contains(err.Error(), "replica-a/slot-") {
		t.Fatalf("replica-b with replica-a holding the slot's Lease: %v, want the topology busy, naming the holder", err)
	}
	if waited := time.Since(began); waited > time.Second {
		t.Fatalf("replica-b waited %s for a slot under the Lease", waited)
	}
	releaseA()

	releaseB, waited, err := b.Acquire(ctx, sites)
	if err != nil || waited != 0 {
		t.Fatalf("replica-b with the slot free: waited %s, %v", waited, err)
	}
	// replica-b gave nothing back after its busy try: had it kept the
	// in-memory slot, or a Lease, this would be its own second.
	if _, _, err := sameProcess.Acquire(ctx, sites); !errors.As(err, &busy) {
		t.Fatalf("a second run of replica-b's process while its first holds the slot: %v, want busy", err)
	}
	releaseB()
	releaseC, _, err := sameProcess.Acquire(ctx, sites)
	if err != nil {
		t.Fatalf("the slots given back, a second run: %v", err)
	}
	releaseC()
}

// Two processes' topologies in one site but different namespaces share
// the site's bound across the processes only through one slot namespace
// (--slot-namespace): by default each takes its slot Lease in its own
// cluster's namespace, and both go.
func TestPlanSlotsOneNamespaceForASite(t *testing.T) {
	for _, tc := range []struct {
		name, slotNamespace string
		secondWaits         bool
	}{
		{name: "each in its cluster's namespace", secondWaits: false},
		{name: "--slot-namespace pgtopo", slotNamespace: "pgtopo", secondWaits: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stores := map[string]*memLeases{"east": {leases: map[string]coordinationv1.Lease{}}, "west": {leases: map[string]coordinationv1.Lease{}}}
			inNamespace := func(ns string) plan.Plan {
				return plan.Plan{
					Sites: []plan.Site{{Name: "east", Context: "lab-east"}, {Name: "west", Context: "lab-west"}},
					Steps: []plan.Step{{Action: plan.ActionSwitchover, Payload: &plan.Switchover{
						From: plan.Subject{Cluster: ns + "-east", Site: "east", Namespace: ns}, To: plan.Subject{Cluster: ns + "-west", Site: "west", Namespace: ns}}}},
				}
			}
			replica := func(name, ns string) planSlots {
				slots := newSiteSlots(1)
				slots.leaseNamespace = tc.slotNamespace
				return newPlanSlots(slots, inNamespace(ns), &topology.Desired{}, &slotLeases{
					store:  func(site string) (apply.LeaseStore, error) { return stores[site], nil },
					holder: name, retry: 5 * time.Millisecond})
			}
			ctx := context.Background()
			release, _, err := replica("replica-a", "billing").Acquire(ctx, []string{"east", "west"})
			if err != nil {
				t.Fatal(err)
			}
			defer release()
			short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
			defer cancel()
			releaseB, _, err := replica("replica-b", "orders").Acquire(short, []string{"east", "west"})
			if waited := err != nil; waited != tc.secondWaits {
				t.Fatalf("replica-b's switchover in namespace orders while replica-a's in billing holds east's slot: waited %v (%v), want %v", waited, err, tc.secondWaits)
			}
			if err == nil {
				releaseB()
			}
			if tc.slotNamespace != "" {
				if _, err := stores["east"].GetLease(ctx, tc.slotNamespace, "pgtopo.switchover-slot-0"); err != nil {
					t.Fatalf("east's slot Lease not in %s: %v", tc.slotNamespace, err)
				}
			}
		})
	}
}
