package apply

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pgtopo/pgtopo/plan"
)

// leaseSeconds is how long a holder that stopped renewing keeps the lock;
// it renews every third of it. A holder known to be gone (Runner.HolderGone)
// is taken over at once.
const leaseSeconds = 15

// LockHeldError is a Lease another live run holds past the lock timeout:
// the topology is busy, not broken.
type LockHeldError struct {
	Lease, Namespace, Site, Holder string
	Waited                         time.Duration
}

func (e *LockHeldError) Error() string {
	return fmt.Sprintf("lock %s/%s in site %s is held by %s; another pgtopo run is applying this topology (waited %s; --lock-timeout)",
		e.Namespace, e.Lease, e.Site, e.Holder, e.Waited)
}

// lease is a held pgtopo lock, renewed in the background until released.
type lease struct {
	w      LeaseStore
	ns     string
	name   string
	holder string
	stop   chan struct{}
	done   chan struct{}
	mu     sync.Mutex
	lost   error
}

// locks are the Leases a run holds, in the order taken.
type locks []*lease

// acquire takes the step's Lease in every site it names, in its order,
// waiting up to LockTimeout in all while another live holder has one. On
// failure it releases what it took.
func (r *Runner) acquire(ctx context.Context, step *plan.Lock, x *stepRun) (locks, error) {
	where := step.Sites
	if len(where) == 0 || step.Lease == "" {
		return nil, fmt.Errorf("lock: the plan's lock step names no site or Lease")
	}
	deadline := time.Now().Add(r.LockTimeout)
	var held locks
	for _, at := range where {
		l, err := r.acquireOne(ctx, step.Lease, at, deadline, x)
		if err != nil {
			held.release(context.Background())
			return nil, err
		}
		held = append(held, l)
	}
	var names []string
	for _, at := range where {
		names = append(names, at.Site+"/"+at.Namespace)
	}
	x.say(EventLock, "lock: holding Lease %s in %s as %s", step.Lease, strings.Join(names, ", "), r.lockHolder())
	return held, nil
}

func (r *Runner) acquireOne(ctx context.Context, name string, at plan.Subject, deadline time.Time, x *stepRun) (*lease, error) {
	w, err := r.Sites(at.Site)
	if err != nil {
		return nil, fmt.Errorf("lock in site %s: %w", at.Site, err)
	}
	announced := false
	for {
		holder, err := tryLock(ctx, w, at.Namespace, name, r.lockHolder(), r.HolderGone)
		if err != nil {
			return nil, fmt.Errorf("lock %s/%s in site %s: %w", at.Namespace, name, at.Site, err)
		}
		if holder == "" {
			l := &lease{w: w, ns: at.Namespace, name: name, holder: r.lockHolder(), stop: make(chan struct{}), done: make(chan struct{})}
			go l.renew()
			return l, nil
		}
		if time.Now().After(deadline) {
			return nil, &LockHeldError{Lease: name, Namespace: at.Namespace, Site: at.Site, Holder: holder, Waited: r.LockTimeout}
		}
		if !announced {
			x.say(EventLock, "lock: Lease %s/%s in site %s is held by %s; waiting up to %s", at.Namespace, name, at.Site, holder, r.LockTimeout)
			announced = true
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// HeldLock is a topology's Lease held across several runs, such as a
// drill's two switchovers and the time between them: no other run applies
// the topology meanwhile (a reconcile loop would undo the first move).
type HeldLock struct {
	lease string
	locks locks
}

// HoldLock takes the lock step's Leases, as a run's lock step would, and
// keeps them until Release; runs given it (Runner.Held) take none.
func (r *Runner) HoldLock(ctx context.Context, step *plan.Lock) (*HeldLock, error) {
	r.start = time.Now()
	held, err := r.acquire(ctx, step, &stepRun{r: r})
	if err != nil {
		return nil, err
	}
	return &HeldLock{lease: step.Lease, locks: held}, nil
}

// Err is the first Lease lost since it was taken, if any.
func (h *HeldLock) Err() error { return h.locks.err() }

// Release frees the Leases.
func (h *HeldLock) Release(ctx context.Context) { h.locks.release(ctx) }

// lockHolder is this run's name in a Lease: its Holder and a tag of its
// own. Runs of one process used to share the Holder, so a second run (an
// agent's fence lift beside its loop's rejoin) took the Lease the first
// held as its own, and its release freed it under the first: the soak saw
// another site's agent start the same rejoin then. HolderGone still reads
// the process from the Holder before the tag.
func (r *Runner) lockHolder() string {
	if r.lockAs == "" {
		b := make([]byte, 3)
		_, _ = rand.Read(b)
		r.lockAs = r.Holder + "/" + hex.EncodeToString(b)
	}
	return r.lockAs
}

// lockLost is the first Lease this run (or the lock it was given) lost
// since it was taken, if any: another run may act on the topology now.
func (r *Runner) lockLost() error {
	if err := r.held.err(); err != nil {
		return err
	}
	if r.Held != nil {
		return r.Held.locks.err()
	}
	return nil
}

// err is the first lost Lease, if any.
func (ls locks) err() error {
	for _, l := range ls {
		if err := l.err(); err != nil {
			return err
		}
	}
	return nil
}

// release frees every Lease, last taken first.
func (ls locks) release(ctx context.Context) {
	for i := len(ls) - 1; i >= 0; i-- {
		ls[i].release(ctx)
	}
}

// tryLock takes the Lease if it is free or expired and returns "", or
// returns the live holder. Updates carry the resourceVersion, so two runs
// racing for an expired Lease cannot both win.
func tryLock(ctx context.Context, w LeaseStore, ns, name, me string, gone func(holder string) bool) (string, error) {
	now := metav1.NewMicroTime(time.Now())
	secs := int32(leaseSeconds)
	l, err := w.GetLease(ctx, ns, name)
	if apierrors.IsNotFound(err) {
		_, err = w.CreateLease(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: &me, LeaseDurationSeconds: &secs, AcquireTime: &now, RenewTime: &now},
		})
		if apierrors.IsAlreadyExists(err) {
			return "another run (just now)", nil
		}
		return "", err
	}
	if err != nil {
		return "", err
	}
	holder := ""
	if l.Spec.HolderIdentity != nil {
		holder = *l.Spec.HolderIdentity
	}
	if holder != "" && holder != me && !expired(l) && (gone == nil || !gone(holder)) {
		return holder, nil
	}
	l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.AcquireTime, l.Spec.RenewTime = &me, &secs, &now, &now
	if _, err := w.UpdateLease(ctx, l); err != nil {
		if apierrors.IsConflict(err) {
			return "another run (just now)", nil
		}
		return "", err
	}
	return "", nil
}

func expired(l *coordinationv1.Lease) bool {
	if l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return true
	}
	return time.Since(l.Spec.RenewTime.Time) > time.Duration(*l.Spec.LeaseDurationSeconds)*time.Second
}

func (l *lease) renew() {
	defer close(l.done)
	t := time.NewTicker(leaseSeconds * time.Second / 3)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			holder, err := tryLock(ctx, l.w, l.ns, l.name, l.holder, nil)
			cancel()
			if err == nil && holder != "" {
				err = fmt.Errorf("lock %s/%s was taken by %s", l.ns, l.name, holder)
			}
			if err != nil {
				l.mu.Lock()
				l.lost = err
				l.mu.Unlock()
			}
		}
	}
}

func (l *lease) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lost
}

// release frees the Lease for the next run (holder cleared, not deleted,
// so its history stays visible).
func (l *lease) release(ctx context.Context) {
	close(l.stop)
	<-l.done
	cur, err := l.w.GetLease(ctx, l.ns, l.name)
	if err != nil || cur.Spec.HolderIdentity == nil || *cur.Spec.HolderIdentity != l.holder {
		return
	}
	empty := ""
	cur.Spec.HolderIdentity = &empty
	_, _ = l.w.UpdateLease(ctx, cur)
}
