package apply

import (
	"context"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// slotSites are east and west of one fake world, each with bound slots.
func slotSites(w *world, bound, scan int) []SlotSite {
	return []SlotSite{
		{Name: "east", Namespace: "db", Bound: bound, Scan: scan, Store: &fakeSite{w: w, site: "east"}},
		{Name: "west", Namespace: "db", Bound: bound, Scan: scan, Store: &fakeSite{w: w, site: "west"}},
	}
}

// heldSlots counts a site's slot Leases with a live holder.
func heldSlots(w *world, site string) int {
	n := 0
	for key, l := range w.leases {
		if strings.HasPrefix(key, site+"/db/"+slotLeasePrefix) && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" && !expired(l) {
			n++
		}
	}
	return n
}

// Processes that share a site's slot Leases hold no more switchovers at
// once there than the bound, and a slot given back is taken by the next.
func TestSlotLeasesBoundSwitchoversAcrossProcesses(t *testing.T) {
	ctx := context.Background()
	w := newWorld()
	sites := slotSites(w, 2, 2)
	var releases []func()
	for _, replica := range []string{"replica-a", "replica-b"} {
		release, busy, err := TakeSlotLeases(ctx, sites, replica, nil)
		if err != nil || busy != "" {
			t.Fatalf("%s: busy %q, error %v, want a slot", replica, busy, err)
		}
		releases = append(releases, release)
	}
	release, busy, err := TakeSlotLeases(ctx, sites, "replica-c", nil)
	if err != nil || release != nil || !strings.Contains(busy, "site east: 2 of 2 switchover slots held (replica-a/slot-") {
		t.Fatalf("a third at once: busy %q, error %v, want east full", busy, err)
	}
	if e, wst := heldSlots(w, "east"), heldSlots(w, "west"); e != 2 || wst != 2 {
		t.Fatalf("slots held: east %d, west %d, want 2 each", e, wst)
	}
	releases[0]()
	release, busy, err = TakeSlotLeases(ctx, sites, "replica-c", nil)
	if err != nil || busy != "" {
		t.Fatalf("after a release: busy %q, error %v, want a slot", busy, err)
	}
	release()
	releases[1]()
	if e, wst := heldSlots(w, "east"), heldSlots(w, "west"); e != 0 || wst != 0 {
		t.Fatalf("slots held after every release: east %d, west %d, want none", e, wst)
	}
}

// A slot is free when its holder stopped renewing or is known to be gone;
// a file's bound lower than the process's counts every slot held; and a
// switchover takes its slots in all its sites or in none.
func TestSlotLeasesWhoHolds(t *testing.T) {
	stale := metav1.NewMicroTime(time.Now().Add(-time.Minute))
	fresh := metav1.NewMicroTime(time.Now())
	cases := []struct {
		name        string
		held        map[string]metav1.MicroTime // site/slot → renewed, held by "other"
		bound, scan int
		gone        bool
		want        string // "" takes a slot in both sites; else in busy
	}{
		{name: "free", bound: 2, scan: 2},
		{name: "one of two held", held: map[string]metav1.MicroTime{"east/0": fresh}, bound: 2, scan: 2},
		{name: "both held in one site: none taken in the other", held: map[string]metav1.MicroTime{"west/0": fresh, "west/1": fresh}, bound: 2, scan: 2,
			want: "site west: 2 of 2 switchover slots held (other, other)"},
		{name: "held but expired", held: map[string]metav1.MicroTime{"west/0": stale, "west/1": stale}, bound: 2, scan: 2},
		{name: "held by a process known gone", held: map[string]metav1.MicroTime{"west/0": fresh, "west/1": fresh}, bound: 2, scan: 2, gone: true},
		{name: "a file bound of 1 with the process's second slot held", held: map[string]metav1.MicroTime{"east/1": fresh}, bound: 1, scan: 2,
			want: "site east: 1 of 1 switchover slots held (other)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld()
			other, secs := "other", int32(leaseSeconds)
			for key, at := range tc.held {
				site, slot, _ := strings.Cut(key, "/")
				w.leases[site+"/db/"+slotLeasePrefix+slot] = &coordinationv1.Lease{
					ObjectMeta: metav1.ObjectMeta{Name: slotLeasePrefix + slot, Namespace: "db"},
					Spec:       coordinationv1.LeaseSpec{HolderIdentity: &other, LeaseDurationSeconds: &secs, RenewTime: &at},
				}
			}
			before := heldSlots(w, "east")
			var gone func(string) bool
			if tc.gone {
				gone = func(h string) bool { return h == "other" }
			}
			release, busy, err := TakeSlotLeases(context.Background(), slotSites(w, tc.bound, tc.scan), "me", gone)
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == "" {
				if busy != "" || release == nil {
					t.Fatalf("busy %q, want a slot", busy)
				}
				release()
				return
			}
			if busy != tc.want || release != nil {
				t.Fatalf("busy %q, want %q", busy, tc.want)
			}
			if after := heldSlots(w, "east"); after != before {
				t.Fatalf("east holds %d slots after a refusal, %d before: a switchover took part of its slots", after, before)
			}
		})
	}
}

// staleLook is a site's Leases as a taker that lost a race sees them: its
// first look at slot 0 finds it free though another holds it.
type staleLook struct {
	LeaseStore
	looked bool
}

func (s *staleLook) GetLease(ctx context.Context, ns, name string) (*coordinationv1.Lease, error) {
	if name == slotLeaseName(0) && !s.looked {
		s.looked = true
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "leases"}, name)
	}
	return s.LeaseStore.GetLease(ctx, ns, name)
}

// A taker whose write loses slot 0 to another (switchovers of a site
// evacuated start together) looks again at once and takes slot 1, rather
// than reporting the site busy and waiting out a retry; with the bound
// reached it still reports busy.
func TestSlotLeasesLookAgainAfterALostRace(t *testing.T) {
	ctx := context.Background()
	w := newWorld()
	first, busy, err := TakeSlotLeases(ctx, slotSites(w, 2, 2)[:1], "replica-a", nil)
	if err != nil || busy != "" {
		t.Fatalf("replica-a: busy %q, error %v", busy, err)
	}
	defer first()
	late := []SlotSite{{Name: "east", Namespace: "db", Bound: 2, Scan: 2, Store: &staleLook{LeaseStore: &fakeSite{w: w, site: "east"}}}}
	release, busy, err := TakeSlotLeases(ctx, late, "replica-b", nil)
	if err != nil || busy != "" {
		t.Fatalf("replica-b after losing slot 0: busy %q, error %v, want slot 1 at once", busy, err)
	}
	if n := heldSlots(w, "east"); n != 2 {
		t.Fatalf("east: %d slots held, want 2", n)
	}
	full := []SlotSite{{Name: "east", Namespace: "db", Bound: 2, Scan: 2, Store: &staleLook{LeaseStore: &fakeSite{w: w, site: "east"}}}}
	if r, busy, err := TakeSlotLeases(ctx, full, "replica-c", nil); err != nil || r != nil || !strings.Contains(busy, "2 of 2 switchover slots held") {
		t.Fatalf("replica-c with both held: busy %q, error %v, want east full", busy, err)
	}
	release()
}
