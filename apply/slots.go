package apply

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// LeaseStore keeps a site's Leases: what a lock needs of a SiteWriter.
type LeaseStore interface {
	GetLease(ctx context.Context, ns, name string) (*coordinationv1.Lease, error)
	CreateLease(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error)
	UpdateLease(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error)
}

// slotLeasePrefix names a site's switchover slots, pgtopo.switchover-slot-0
// and on: a topology's own Lease is pgtopo-NAME, NAME a DNS label without
// dots, so no topology's Lease is ever a slot's.
const slotLeasePrefix = "pgtopo.switchover-slot-"

// SlotSite is one site of a switchover as its slot Leases see it: where
// they live, how many are held at most while this switchover takes one
// (its bound), and how many there are to look at (the process's bound,
// which no file's exceeds).
type SlotSite struct {
	Name, Namespace string
	Bound, Scan     int
	Store           LeaseStore
}

// TakeSlotLeases takes one switchover slot Lease in every site, or none: a
// site has one free while fewer than its Bound are held by live holders.
// Processes share the bound so, as one process's runs share it in memory:
// several reconcile replicas hold no more switchovers at once in a site
// than one would. A holder that dies frees its slot when its Lease expires
// (15 s), or at once when gone says it is gone. busy, when no error and no
// release, says which site is full and who holds its slots.
func TakeSlotLeases(ctx context.Context, sites []SlotSite, holder string, gone func(string) bool) (release func(), busy string, err error) {
	tag := make([]byte, 3)
	_, _ = rand.Read(tag)
	me := holder + "/slot-" + hex.EncodeToString(tag)
	var held locks
	for _, s := range sites {
		l, holders, err := takeSlot(ctx, s, me, gone)
		if err != nil {
			held.release(context.Background())
			return nil, "", fmt.Errorf("switchover slot in site %s (%s): %w", s.Name, s.Namespace, err)
		}
		if l == nil {
			held.release(context.Background())
			return nil, fmt.Sprintf("site %s: %d of %d switchover slots held (%s)", s.Name, len(holders), s.Bound, strings.Join(holders, ", ")), nil
		}
		held = append(held, l)
	}
	return func() { held.release(context.Background()) }, "", nil
}

// takeSlot takes the lowest free slot of a site while fewer than its bound
// are held, or returns their live holders. A slot another taker wrote
// between this one's look and its write sends it to look again at once:
// several switchovers starting together (a site evacuated) all race for
// slot 0, and each loser waiting out a retry before it looked again
// started them half a second apart.
func takeSlot(ctx context.Context, s SlotSite, me string, gone func(string) bool) (*lease, []string, error) {
	var holders []string
	// Each lost race means another slot held, so more looks than slots
	// find none free.
	for range max(s.Scan, s.Bound) + 1 {
		l, seen, raced, err := takeFreeSlot(ctx, s, me, gone)
		if err != nil || l != nil || !raced {
			return l, seen, err
		}
		holders = seen
	}
	return nil, holders, nil
}

// takeFreeSlot looks at every slot once and takes the lowest free one;
// raced says another taker wrote it first.
func takeFreeSlot(ctx context.Context, s SlotSite, me string, gone func(string) bool) (_ *lease, holders []string, raced bool, _ error) {
	free := -1
	for i := 0; i < max(s.Scan, s.Bound); i++ {
		l, err := s.Store.GetLease(ctx, s.Namespace, slotLeaseName(i))
		if err != nil && !apierrors.IsNotFound(err) {
			return nil, nil, false, err
		}
		if err == nil && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" && !expired(l) &&
			(gone == nil || !gone(*l.Spec.HolderIdentity)) {
			holders = append(holders, *l.Spec.HolderIdentity)
			continue
		}
		if free < 0 && i < s.Bound {
			free = i
		}
	}
	if free < 0 || len(holders) >= s.Bound {
		return nil, holders, false, nil
	}
	name := slotLeaseName(free)
	who, err := tryLock(ctx, s.Store, s.Namespace, name, me, gone)
	if err != nil {
		return nil, nil, false, err
	}
	if who != "" { // taken between the look and the write
		return nil, append(holders, who), true, nil
	}
	l := &lease{w: s.Store, ns: s.Namespace, name: name, holder: me, stop: make(chan struct{}), done: make(chan struct{})}
	go l.renew()
	return l, nil, false, nil
}

func slotLeaseName(i int) string { return fmt.Sprintf("%s%d", slotLeasePrefix, i) }
