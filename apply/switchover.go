package apply

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/snapshot"
)

// outage is the write-outage budget of a running switchover: from the fence
// on, writes are refused; a wait that outlasts the budget, or whose watched
// position does not move for stall, ends it.
type outage struct {
	began time.Time
	limit time.Duration
	stall time.Duration
}

// errOutage is a budget exceeded or a stall, inside a switchover's wait.
type errOutage struct {
	what, detail string
	stalled      bool
	// unreachable: what it waits for can never come.
	unreachable bool
	after       time.Duration
}

func (e *errOutage) Error() string {
	if e.unreachable {
		return fmt.Sprintf("%s cannot pass: %s", e.what, e.detail)
	}
	if e.stalled {
		return fmt.Sprintf("stalled: %s made no progress for %.1fs (%s)", e.what, e.after.Seconds(), e.detail)
	}
	return fmt.Sprintf("write-outage budget of %.1fs exceeded waiting for %s (%s)", e.after.Seconds(), e.what, e.detail)
}

// BackedOutError is a switchover that backed out before the point of no
// return: the old primary is primary again, writes resumed.
type BackedOutError struct {
	From, To string
	Cause    error
	// Refused is how long writes were refused.
	Refused time.Duration
}

func (e *BackedOutError) Error() string {
	return fmt.Sprintf("switchover %s → %s backed out: %v; writes were refused for %.1fs; %s is primary again, the journal is cleared",
		e.From, e.To, e.Cause, e.Refused.Seconds(), e.From)
}

// pauseLimits are the budget's bounds: the stall threshold is a third of
// the budget, within these, so that a normal demotion (a Patroni restart,
// a few seconds without visible change) is not taken for one.
const (
	minStall = 3 * time.Second
	maxStall = 15 * time.Second
)

func (x *stepRun) startOutage(sw *plan.Switchover) {
	limit := x.r.MaxWritePause
	if limit <= 0 {
		limit = time.Duration(sw.MaxWritePauseSeconds * float64(time.Second))
	}
	if limit <= 0 {
		limit = 30 * time.Second
	}
	stall := min(max(limit/3, minStall), maxStall)
	if x.r.StallAfter > 0 {
		stall = x.r.StallAfter
	}
	x.outage = &outage{began: time.Now(), limit: limit, stall: stall}
}

// Switchover runs the two-phase role swap of docs/architecture.md
// ("Switchover"): journal, fence, demote, gate, promote, follow. Every phase
// is journaled on both clusters before the next begins, so a run killed
// anywhere resumes here from the journal and live state, and promotion
// never happens unless this run saw the target replay up to the old
// primary's end of WAL.
func (x *stepRun) Switchover(ctx context.Context, _ plan.Subject, sw *plan.Switchover) error {
	from, to := sw.From.Cluster, sw.To.Cluster
	var j snapshot.Journal
	var walInspect string // where pg_walinspect is, to read the end of WAL at the target
	phase := sw.Resume
	if phase == snapshot.PhaseAborting {
		x.emit(Event{Type: EventResume, Journal: phase, Message: fmt.Sprintf("backing out switchover %s → %s: restoring %s as primary", from, to, from)})
		return x.restore(ctx, sw)
	}
	if phase == "" && x.r.Switchovers != nil {
		// Taken before the fence, so waiting for a slot refuses no writes;
		// a resumed switchover is past its fence and takes none.
		release, waited, err := x.r.Switchovers.Acquire(ctx, []string{sw.From.Site, sw.To.Site})
		if err != nil {
			return fmt.Errorf("switchover %s → %s not begun, nothing fenced: waiting for a switchover slot in sites %s and %s: %w", from, to, sw.From.Site, sw.To.Site, err)
		}
		defer release()
		if waited > 0 {
			x.say(EventLock, "switchover slot taken in sites %s and %s after %.1fs (other switchovers ran there)", sw.From.Site, sw.To.Site, waited.Seconds())
		}
	}
	if phase == "" {
		// Begin only on a target its operator reports ready: one still
		// being created or scaled may never be promotable, and waiting for
		// it after the fence refuses writes for nothing. And only while
		// the old primary serves no base backup (an in-site replica being
		// built, a backup tool): its end writes WAL (BACKUP_END, a segment
		// switch) whenever it comes, and coming after the fence, the
		// demoted primary would hold WAL the target never received and,
		// streaming only from a read-write peer, never can. An old
		// primary its operator does not report ready may still be
		// building an instance whose base backup has not begun yet: it is
		// given oldPrimaryReadyPatience to become ready, and no more (an
		// instance that never comes up is no reason to keep the primary
		// where it is). Before the fence nothing is refused yet, so this
		// wait has the step's bound.
		began, patience := time.Now(), cmp.Or(x.r.ReadyPatience, DefaultReadyPatience)
		if err := x.wait(ctx, to+" ready (its operator reports it ready) and no base backup on "+from+" before the fence", []string{to, from}, func(snap *snapshot.Snapshot) (bool, string) {
			cs, _ := snap.Cluster(to)
			if !cs.Exists || !cs.Object.Ready {
				return false, to + ": " + statusWords(cs)
			}
			fo, _ := snap.Cluster(from)
			if fo.Exists && !fo.Object.Ready && time.Since(began) < patience {
				return false, fmt.Sprintf("%s: its operator reports it %q, not ready (an instance it builds would take a base backup from it; waited for up to %s)", from, fo.Object.Status, patience)
			}
			if fo.PG != nil && fo.PG.BaseBackups > 0 {
				return false, fmt.Sprintf("%s serves %d base backup(s)", from, fo.PG.BaseBackups)
			}
			return true, statusWords(cs)
		}); err != nil {
			return fmt.Errorf("switchover %s → %s not begun, nothing fenced: %w", from, to, err)
		}
		walInspect = x.prepareFinalAtTarget(ctx, sw)
		j = snapshot.Journal{From: from, To: to, Phase: snapshot.PhaseDemoting, SystemID: sw.SystemID, Timeline: sw.Timeline}
		if err := x.journal(ctx, &j, sw.From, sw.To); err != nil {
			return err
		}
		x.emit(Event{Type: EventJournal, Journal: j.Phase, Message: fmt.Sprintf("journal: switchover %s → %s begins (system identifier %s, timeline %d)", from, to, j.SystemID, j.Timeline)})
		phase = j.Phase
	} else {
		cur := x.journalOf(from, to)
		if cur == nil || cur.From != from || cur.To != to {
			return fmt.Errorf("resume at phase %s: the journal on %s and %s is gone or names another switchover", phase, from, to)
		}
		j, phase = *cur, cur.Phase
		x.emit(Event{Type: EventResume, Journal: phase, Message: fmt.Sprintf("resuming switchover %s → %s at phase %s", from, to, phase)})
	}

	// Writes are refused from the fence (or, resuming, from now) until the
	// target is promoted; before that, the switchover backs out when the
	// budget runs out or a wait stalls.
	x.startOutage(sw)
	backOut := func(err error) error {
		var o *errOutage
		if !errors.As(err, &o) {
			return err
		}
		return x.backOut(ctx, sw, j, err)
	}

	var demoted *snapshot.Snapshot // the snapshot that read the end of WAL, in this run
	if phase == snapshot.PhaseDemoting {
		gate, where, err := x.demote(ctx, j, sw, walInspect)
		if err != nil {
			return backOut(err)
		}
		j.Phase, j.GateLSN = snapshot.PhaseGated, gate.String()
		if err := x.journal(ctx, &j, sw.From, sw.To); err != nil {
			return err
		}
		x.emit(Event{Type: EventGateSet, Journal: j.Phase, LSN: j.GateLSN, Message: fmt.Sprintf("journal: gate recorded: %s must replay up to %s (%s)", to, gate, where)})
		phase, demoted = snapshot.PhaseGated, x.last
	}

	if phase == snapshot.PhaseGated {
		gate, err := snapshot.ParseLSN(j.GateLSN)
		if err != nil {
			return fmt.Errorf("journal: %w", err)
		}
		if err := x.waitGate(ctx, j, gate, to, demoted); err != nil {
			return backOut(err)
		}
		// Promote only a target whose operator reports it ready: one whose
		// Patroni does not answer would be told to become primary and never
		// act on it, past the point where backing out is safe.
		if err := x.waitEvery(ctx, x.r.pollSwitchover(), to+" ready for promotion (its operator reports it ready)", []string{to}, func(snap *snapshot.Snapshot) (bool, string) {
			cs, _ := snap.Cluster(to)
			return cs.Exists && cs.Object.Ready, statusWords(cs)
		}); err != nil {
			return backOut(err)
		}
		j.Phase = snapshot.PhasePromoted
		if err := x.journal(ctx, &j, sw.From, sw.To); err != nil {
			return err
		}
	}

	// Promote (idempotent when resuming), then wait for the new timeline and
	// for the old primary to follow. Only a journal at promoted (the gate
	// passed, in this run or the one that wrote it) lets it happen.
	if j.Phase != snapshot.PhasePromoted {
		return fmt.Errorf("promote %s: the journal is at phase %q, not %s: the gate has not passed", to, j.Phase, snapshot.PhasePromoted)
	}
	// The point of no return: once the target is told to become primary,
	// its operator or Patroni may act on it at any later moment (a queued
	// reconcile, a stopped Patroni that resumes), so making the old primary
	// primary again could make two. The budget still bounds the wait, but
	// ends it with the journal kept and what to do, never with a back-out.
	if err := x.promote(ctx, sw.To, sw.Promoted, sw.PromoteFirst, j.Phase); err != nil {
		return err
	}
	if err := x.waitEvery(ctx, x.r.pollSwitchover(), fmt.Sprintf("%s writable on timeline %d", to, j.Timeline+1), []string{to}, func(snap *snapshot.Snapshot) (bool, string) {
		cs, _ := snap.Cluster(to)
		return cs.Writable() && cs.PG.Timeline > j.Timeline, statusWords(cs)
	}); err != nil {
		var o *errOutage
		if errors.As(err, &o) {
			return fmt.Errorf("%w: %s was told to become primary and has not; its operator or Patroni is not acting on it. pgtopo will not make %s primary again, which could leave two primaries. The journal stays at %s: once %s's operator and Patroni run, apply the same file again to finish",
				err, to, from, snapshot.PhasePromoted, to)
		}
		return err
	}
	refused := 0.0
	if x.outage != nil { // a resume at promoted did not see the fence
		refused = time.Since(x.outage.began).Seconds()
	}
	newTimeline := x.cluster(to).PG.Timeline
	x.outage = nil
	if err := x.growPromoted(ctx, sw.To, sw.Promoted, sw.PromoteFirst); err != nil {
		return err
	}
	// A checkpoint writes WAL on the new timeline, so followers see the
	// timeline at once; without writes they report the old one for as long
	// as checkpoint_timeout.
	if err := x.sql(ctx, x.cluster(to), "CHECKPOINT"); err != nil {
		return err
	}
	if err := x.followNewPrimary(ctx, from, to); errors.Is(err, ErrDrained) {
		return err // the journal stays at promoted: the next run resumes here
	} else if err != nil {
		return fmt.Errorf("%s does not follow the new primary %s and needs a rebuild (delete its CR and volumes; pgtopo recreates it as a standby): %w", from, to, err)
	}
	// Lift the fence now that the old primary runs as a standby (ALTER
	// SYSTEM works in recovery): left in place, it would make the cluster
	// read-only the next time it is primary.
	if fo := x.cluster(from); fo.PG != nil && fo.PG.ReadOnlyDefault {
		if err := x.unfence(ctx, x.last, from); err != nil {
			return err
		}
	}

	// Done: clear the journal on both.
	if err := x.journal(ctx, nil, sw.From, sw.To); err != nil {
		return err
	}
	done := fmt.Sprintf("switchover %s → %s done: %s writable on timeline %d", from, to, to, newTimeline)
	if refused > 0 {
		done = fmt.Sprintf("switchover %s → %s done: writes refused for %.1f s, %s writable on timeline %d", from, to, refused, to, newTimeline)
	}
	x.emit(Event{Type: EventSwitched, WritesRefused: refused, Message: done + "; journal cleared"})
	return nil
}

// promote writes the target's spec as primary: first when the plan has
// one (the role alone, no new instance to wait for), else promoted.
func (x *stepRun) promote(ctx context.Context, to plan.Subject, promoted snapshot.Spec, first *snapshot.Spec, phase string) error {
	spec := promoted
	if first != nil {
		spec = *first
	}
	if err := x.writeSpec(ctx, to, spec); err != nil {
		return err
	}
	x.emit(Event{Type: EventPromote, Journal: phase, Message: fmt.Sprintf("promote: %s isReplica false, numberOfInstances %d", to.Cluster, spec.Instances)})
	return nil
}

// growPromoted writes the new primary's whole spec once it takes writes,
// when its promotion wrote the role alone.
func (x *stepRun) growPromoted(ctx context.Context, to plan.Subject, promoted snapshot.Spec, first *snapshot.Spec) error {
	if first == nil {
		return nil
	}
	if err := x.writeSpec(ctx, to, promoted); err != nil {
		return err
	}
	x.say(EventWrite, "%s takes writes: numberOfInstances %d → %d", to.Cluster, first.Instances, promoted.Instances)
	return nil
}

// followNewPrimary waits until a standby (the old primary after a
// switchover, or one repointed) streams from the new primary.
//
// Its WAL receiver failed while its upstream refused writes or was gone,
// and PostgreSQL waits wal_retrieve_retry_interval (5 s by default) before
// it tries again: that long without a standby. A reload wakes the startup
// process (its SIGHUP handler sets the recovery wakeup latch), which tries
// at once. It is woken now, and once more when the new primary first keeps
// its slot: an operator creates that only once its cluster is primary, and
// a try before fails on the missing slot. Best effort: the wait is what
// checks.
func (x *stepRun) followNewPrimary(ctx context.Context, from, to string) error {
	wake := func() {
		if err := x.sql(ctx, x.cluster(from), wakeReceiverSQL); err != nil {
			x.say(EventWaiting, "could not wake %s's WAL receiver (%v): it retries on its own", from, err)
		}
	}
	slotKept := func(snap *snapshot.Snapshot) bool {
		sb, _ := snap.Cluster(from)
		pr, _ := snap.Cluster(to)
		if sb == nil || pr == nil || pr.PG == nil || sb.SlotName == "" {
			return false
		}
		_, ok := slotNamed(pr.PG.Slots, sb.SlotName)
		return ok
	}
	wake()
	woken := slotKept(x.last)
	return x.waitStreamingWith(ctx, from, to, func(snap *snapshot.Snapshot) {
		if !woken && slotKept(snap) {
			woken = true
			wake()
		}
	})
}

// backOut ends a switchover before the point of no return: journal
// "aborting", then restore the old primary.
func (x *stepRun) backOut(ctx context.Context, sw *plan.Switchover, j snapshot.Journal, cause error) error {
	began := x.outage.began
	x.outage = nil
	x.emit(Event{Type: EventBackOut, Journal: snapshot.PhaseAborting, Message: fmt.Sprintf("backing out: %v", cause)})
	j.Phase = snapshot.PhaseAborting
	x.last = x.r.Observer.Observe(ctx)
	if err := x.journal(ctx, &j, sw.From, sw.To); err != nil {
		return fmt.Errorf("back out after %v: journal: %w", cause, err)
	}
	if err := x.restore(ctx, sw); err != nil {
		return fmt.Errorf("back out after %v: %w (the journal says %s; the next run finishes the back-out)", cause, err, snapshot.PhaseAborting)
	}
	return &BackedOutError{From: sw.From.Cluster, To: sw.To.Cluster, Cause: cause, Refused: time.Since(began)}
}

// restore makes the old primary primary again (its spec as before, if it
// was demoted), lifts the fence and clears the journal. Safe only while the
// target was never promoted, which the callers ensure.
func (x *stepRun) restore(ctx context.Context, sw *plan.Switchover) error {
	from := sw.From.Cluster
	x.last = x.r.Observer.Observe(ctx)
	if fo := x.cluster(from); !fo.Writable() || fo.Object.Spec.Replication.IsReplica {
		// Still writable under a demote spec: the demote was written and
		// not acted on yet, and its operator may act on it after the
		// restore is written, taking the cluster down once more.
		inFlight := fo.Writable()
		if err := x.writeSpec(ctx, sw.From, sw.Restore); err != nil {
			return err
		}
		if err := x.waitEvery(ctx, x.r.pollSwitchover(), from+" writable again", []string{from}, func(snap *snapshot.Snapshot) (bool, string) {
			cs, _ := snap.Cluster(from)
			return cs.Writable(), statusWords(cs)
		}); err != nil {
			return err
		}
		if inFlight {
			if err := x.stayWritable(ctx, from, x.r.restoreSettle()); err != nil {
				return err
			}
		}
	}
	// The demotion lifted the fence already when it got that far: lifted
	// once, it is said once.
	if fo := x.cluster(from); fo.PG == nil || fo.PG.ReadOnlyDefault {
		if err := x.unfence(ctx, x.last, from); err != nil {
			return err
		}
	}
	if err := x.journal(ctx, nil, sw.From, sw.To); err != nil {
		return err
	}
	x.emit(Event{Type: EventBackedOut, Message: fmt.Sprintf("backed out: %s is primary and takes writes; journal cleared", from)})
	return nil
}

// stayWritable waits until a cluster has been writable for d without a
// break, so that an operator's late action on an earlier spec shows.
func (x *stepRun) stayWritable(ctx context.Context, name string, d time.Duration) error {
	var since time.Time
	return x.waitEvery(ctx, x.r.pollSwitchover(), fmt.Sprintf("%s writable for %s without a break (a demote written before the interruption may still be acted on)", name, d), []string{name}, func(snap *snapshot.Snapshot) (bool, string) {
		cs, _ := snap.Cluster(name)
		if !cs.Writable() {
			since = time.Time{}
			return false, statusWords(cs)
		}
		if since.IsZero() {
			since = time.Now()
		}
		return time.Since(since) >= d, fmt.Sprintf("writable for %.1f s", time.Since(since).Seconds())
	})
}

// demote fences the old primary, waits until the target has everything it
// wrote, turns it into a standby of the target, and returns its end of WAL
// for the gate, and where it was read: at the target, the end of the old
// primary's shutdown checkpoint (walInspect names pg_walinspect's schema;
// see finallsn.go), or on the old primary once in recovery (its replay
// position), whichever comes first.
//
// The fence exists because a standby cluster that streams through a slot
// connects only to a read-write peer (Patroni adds
// target_session_attrs=read-write), so WAL the old primary flushed but had
// not streamed when it was demoted could never reach the target.
func (x *stepRun) demote(ctx context.Context, j snapshot.Journal, sw *plan.Switchover, walInspect string) (snapshot.LSN, string, error) {
	from, to := sw.From.Cluster, sw.To.Cluster
	var fenced snapshot.LSN
	if fo := x.cluster(from); fo.Writable() {
		var err error
		if fenced, err = x.fence(ctx, fo, to); err != nil {
			// Resuming, the demote written before the interruption may be
			// taking effect: the server going away under the fence is
			// that, and the gate still holds the promotion.
			x.last = x.r.Observer.Observe(ctx)
			if sw.Resume == snapshot.PhaseDemoting && !x.cluster(from).Writable() {
				x.say(EventFence, "fence: %s went away under it (%v): its demotion is under way; the gate decides", from, err)
			} else {
				// Not demoted: writes must resume at once.
				_ = x.unfence(context.Background(), x.last, from)
				return 0, "", err
			}
		}
	}
	// Opened before the demote: once the old primary is down, each poll
	// is one query.
	atTarget := x.openFinalAtTarget(ctx, x.cluster(to), walInspect, fenced)
	defer func() { atTarget.close() }()
	if err := x.writeSpec(ctx, sw.From, sw.Demoted); err != nil {
		return 0, "", err
	}
	x.emit(Event{Type: EventDemote, Journal: j.Phase, Message: fmt.Sprintf("demote: %s isReplica true, numberOfInstances %d, peer %s", from, sw.Demoted.Instances, sw.Demoted.Replication.Peer())})
	var end snapshot.LSN
	readAtTarget := false
	what := fmt.Sprintf("%s in recovery, for its end of WAL", from)
	if atTarget != nil {
		what = fmt.Sprintf("%s's end of WAL: its shutdown checkpoint replayed by %s, or %s in recovery", from, to, from)
	}
	err := x.waitEvery(ctx, x.r.pollSwitchover(), what, []string{from}, func(snap *snapshot.Snapshot) (bool, string) {
		cs, _ := snap.Cluster(from)
		if atTarget != nil && !cs.Writable() && (cs.PG == nil || !cs.PG.InRecovery) {
			lsn, detail, err := atTarget.read(ctx)
			switch {
			case err != nil:
				x.say(EventNote, "final LSN: reading %s's shutdown checkpoint at %s: %v; reading it once %s restarts in recovery", from, to, err, from)
				atTarget.close()
				atTarget = nil
			case lsn != 0:
				end, readAtTarget = lsn, true
				return true, detail
			default:
				return false, statusWords(cs) + "; " + detail
			}
		}
		if cs.PG == nil || !cs.PG.InRecovery {
			return false, statusWords(cs)
		}
		if cs.PG.SystemID != j.SystemID {
			return false, fmt.Sprintf("system identifier %s, journal says %s", cs.PG.SystemID, j.SystemID)
		}
		// One read is final. A demoted primary that PostgreSQL finds shut
		// down replays nothing after its shutdown checkpoint; one that was
		// stopped with an immediate shutdown first replays all of pg_wal
		// (crash recovery) and admits no connection until it has. Its
		// upstream, the target, has no WAL it lacks. The replay position,
		// not the receive position: a restarted WAL receiver reports the
		// segment it asks for, which is no WAL at all.
		end = cs.PG.ReplayLSN
		return true, fmt.Sprintf("in recovery, replayed up to %s", end)
	})
	if err != nil {
		return 0, "", err
	}
	// The fence is lifted once the old primary streams from the new one:
	// not here, inside the write window. A run that ends before that
	// leaves a journal whose resume, or back-out, lifts it.
	if readAtTarget {
		return end, "the old primary's shutdown checkpoint, read at " + to, nil
	}
	return end, "its end of WAL, read in recovery", nil
}

// Fence statements: new sessions default to read-only, and open sessions
// but Patroni's are ended, so no transaction commits after it (what Patroni
// might still write, the gate covers). Patroni's own session is spared:
// ended, it costs Patroni a loop and delays the demotion this fence
// precedes.
var fenceSQL = []string{
	"ALTER SYSTEM SET default_transaction_read_only = on",
	"SELECT pg_reload_conf()",
	"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND application_name NOT LIKE 'Patroni%'",
}

const endOfWALSQL = "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN '' ELSE pg_current_wal_lsn()::text END"

// fence makes the old primary refuse new writes, in one session that then
// reads its end of WAL, and waits until the target replayed it while
// streaming from the old primary (the proof of their shared history).
func (x *stepRun) fence(ctx context.Context, fo *snapshot.ClusterState, to string) (snapshot.LSN, error) {
	var end snapshot.LSN
	err := x.session(ctx, fo, func(s Session) error {
		if _, err := fenceNow(ctx, s); err != nil {
			return err
		}
		var err error
		end, err = endOfWAL(ctx, s)
		return err
	})
	if err != nil {
		return 0, err
	}
	x.emit(Event{Type: EventFence, Journal: snapshot.PhaseDemoting, LSN: end.String(), Message: fmt.Sprintf("fence: %s refuses new writes; %s must replay up to %s", fo.Name, to, end)})
	return end, x.waitEvery(ctx, x.r.pollSwitchover(), fmt.Sprintf("%s replay >= %s", to, end), []string{to, fo.Name}, func(snap *snapshot.Snapshot) (bool, string) {
		cs, _ := snap.Cluster(to)
		if cs.PG == nil {
			return false, statusWords(cs)
		}
		if cs.PG.ReplayLSN < end {
			return false, fmt.Sprintf("%s replay %s, %s behind", to, cs.PG.ReplayLSN, snapshot.HumanBytes(int64(end-cs.PG.ReplayLSN)))
		}
		src, _ := snap.Cluster(fo.Name)
		if !cs.StreamsFrom(src.Endpoint) {
			return false, fmt.Sprintf("%s caught up but does not stream from %s (wal receiver %s)", to, fo.Name, cs.Receiver())
		}
		return true, fmt.Sprintf("%s replay %s, streaming from %s", to, cs.PG.ReplayLSN, fo.Name)
	})
}

// DefaultReadyPatience is how long a switchover waits, before its fence,
// for the old primary's operator to report it ready.
const DefaultReadyPatience = 20 * time.Second

// fenceNow makes new sessions read-only and ends the client sessions but
// Patroni's, in sess; it returns how many it ended.
func fenceNow(ctx context.Context, sess Session) (int, error) {
	for _, stmt := range fenceSQL[:2] {
		if err := sess.Exec(ctx, stmt); err != nil {
			return 0, fmt.Errorf("fence: %w", err)
		}
	}
	var ended int
	if err := sess.QueryRow(ctx, fenceSQL[2]).Scan(&ended); err != nil {
		return 0, fmt.Errorf("fence: %w", err)
	}
	return ended, nil
}

// endOfWAL reads a primary's end of WAL in sess.
func endOfWAL(ctx context.Context, sess Session) (snapshot.LSN, error) {
	var inRecovery bool
	var lsn string
	if err := sess.QueryRow(ctx, endOfWALSQL).Scan(&inRecovery, &lsn); err != nil {
		return 0, fmt.Errorf("fence: end of WAL: %w", err)
	}
	if inRecovery {
		return 0, fmt.Errorf("fence: in recovery already, not the primary")
	}
	return snapshot.ParseLSN(lsn)
}

// wakeReceiverSQL makes a standby retry streaming now rather than after
// wal_retrieve_retry_interval.
const wakeReceiverSQL = "SELECT pg_reload_conf()"

var unfenceSQL = []string{"ALTER SYSTEM RESET default_transaction_read_only", "SELECT pg_reload_conf()"}

// Fence is the break-glass fence (pgtopo fence): record the mark, then make
// the cluster refuse new writes. The mark comes first so that a run killed
// between the two leaves a trace.
func (x *stepRun) Fence(ctx context.Context, at plan.Subject, p *plan.Fence) error {
	c := x.cluster(at.Cluster)
	m := x.marksOf(c.Name)
	mark := p.Mark
	m.Fence = &mark
	if err := x.writeMarks(ctx, at, m); err != nil {
		return err
	}
	var ended int
	err := x.session(ctx, c, func(sess Session) error {
		var err error
		ended, err = fenceNow(ctx, sess)
		return err
	})
	if err != nil {
		return err
	}
	x.say(EventFence, "fence: %s refuses new writes; %d client session(s) ended", c.Name, ended)
	return nil
}

// Unfence lifts a break-glass fence, then removes its mark.
func (x *stepRun) Unfence(ctx context.Context, at plan.Subject, _ *plan.Unfence) error {
	name := at.Cluster
	if err := x.unfence(ctx, x.last, name); err != nil {
		return err
	}
	m := x.marksOf(name)
	m.Fence = nil
	return x.writeMarks(ctx, at, m)
}

// unfence removes the fence; ALTER SYSTEM works on a standby too, and the
// setting must not outlive the switchover (it would make the cluster
// read-only the next time it is primary).
func (x *stepRun) unfence(ctx context.Context, snap *snapshot.Snapshot, name string) error {
	o, ok := snap.Cluster(name)
	if !ok || o.PG == nil {
		return fmt.Errorf("unfence %s: cannot connect: %s", name, cmp.Or(o.PGError, "-"))
	}
	err := x.session(ctx, o, func(s Session) error {
		for _, stmt := range unfenceSQL {
			if err := s.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("unfence: %w", err)
			}
		}
		return nil
	})
	if err == nil {
		x.say(EventUnfence, "unfence: %s no longer refuses writes by default", name)
	}
	return err
}

// waitGate waits until the target has replayed the old primary's end of WAL
// on the same system and timeline: the zero-data-loss gate. Replay only
// moves forward, so seen, the snapshot that read that end of WAL, is
// evidence enough when it already shows the target past it.
func (x *stepRun) waitGate(ctx context.Context, j snapshot.Journal, gate snapshot.LSN, to string, seen *snapshot.Snapshot) error {
	what := fmt.Sprintf("gate: %s replay >= %s", to, gate)
	var short time.Time // since when the target lacks WAL it cannot receive
	cond := func(snap *snapshot.Snapshot) (bool, string, error) {
		ok, detail := gateHolds(snap, j, gate, to)
		if ok {
			short = time.Time{}
			return true, detail, nil
		}
		// The WAL the target lacks is only on the demoted primary, which
		// is in recovery now; a standby cluster streams only from a
		// read-write peer, so it can never arrive. Waiting on refuses
		// writes for nothing: back out now (after a second, for WAL
		// already received to be replayed).
		cs, _ := snap.Cluster(to)
		if cs.PG == nil || cs.PG.ReceiveLSN >= gate || cs.PG.WalReceiver != nil && cs.PG.WalReceiver.Status == "streaming" {
			short = time.Time{}
			return false, detail, nil
		}
		if short.IsZero() {
			short = time.Now()
		}
		if time.Since(short) < time.Second {
			return false, detail, nil
		}
		return false, detail, &errOutage{what: what, detail: fmt.Sprintf("%s; %s received up to %s and does not stream: the demoted primary holds WAL written after the fence (a base backup's end, a checkpoint) that %s cannot receive from a standby", detail, to, cs.PG.ReceiveLSN, to), unreachable: true}
	}
	if seen != nil {
		if ok, detail := gateHolds(seen, j, gate, to); ok {
			x.emit(Event{Type: EventGate, Journal: snapshot.PhaseGated, LSN: gate.String(), Message: fmt.Sprintf("%s (%s)", what, detail)})
			return nil
		}
	}
	if err := x.waitUntil(ctx, x.r.pollSwitchover(), what, []string{to}, cond); err != nil {
		return err
	}
	x.emit(Event{Type: EventGate, Journal: snapshot.PhaseGated, LSN: gate.String(), Message: what + ": passed"})
	return nil
}

// gateHolds says whether the target has replayed up to the gate, as the
// same system and on no newer timeline.
func gateHolds(snap *snapshot.Snapshot, j snapshot.Journal, gate snapshot.LSN, to string) (bool, string) {
	cs, _ := snap.Cluster(to)
	if cs.PG == nil {
		return false, statusWords(cs)
	}
	if !cs.PG.InRecovery {
		return false, fmt.Sprintf("%s is writable before the gate passed", to)
	}
	// A standby reports the timeline of its last checkpoint until WAL of
	// a newer one arrives, and a demoted primary sends none, so an older
	// timeline is expected here; the shared history was proven by the
	// fence. Only a newer timeline means it forked off.
	if cs.PG.SystemID != j.SystemID || cs.PG.Timeline > j.Timeline {
		return false, fmt.Sprintf("system identifier %s timeline %d, journal says %s timeline %d", cs.PG.SystemID, cs.PG.Timeline, j.SystemID, j.Timeline)
	}
	if cs.PG.ReplayLSN < gate {
		return false, fmt.Sprintf("%s replay %s, %s behind", to, cs.PG.ReplayLSN, snapshot.HumanBytes(int64(gate-cs.PG.ReplayLSN)))
	}
	return true, fmt.Sprintf("%s replay %s", to, cs.PG.ReplayLSN)
}

// journal writes j (nil clears it) on both clusters, keeping their other
// marks as last observed.
//
// The ends are written at once (two sites' round trips inside the write
// window cost one): a phase is written only once the one before is on
// both, so a run killed between leaves them at most one phase apart
// whichever write landed, and journalOf resumes from the further.
func (x *stepRun) journal(ctx context.Context, j *snapshot.Journal, ends ...plan.Subject) error {
	marks := make([]snapshot.Marks, len(ends))
	for i, s := range ends {
		c := x.cluster(s.Cluster)
		if !c.Exists {
			return fmt.Errorf("%s has no object to journal on", s.Cluster)
		}
		marks[i] = x.marksOf(s.Cluster)
		marks[i].Journal = j
	}
	errs := make([]error, len(ends))
	var wg sync.WaitGroup
	for i, s := range ends {
		wg.Go(func() { errs[i] = x.writeMarks(ctx, s, marks[i]) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// journalOf is the journal on either end, as last observed. A run killed
// between the two writes of one phase leaves the ends one phase apart; each
// phase is written only once the one before is done, so the further one is
// where to resume (a back-out, once begun, wins).
func (x *stepRun) journalOf(names ...string) *snapshot.Journal {
	rank := map[string]int{snapshot.PhaseDemoting: 1, snapshot.PhaseGated: 2, snapshot.PhasePromoted: 3, snapshot.PhaseAborting: 4}
	var best *snapshot.Journal
	for _, n := range names {
		if j := x.cluster(n).Journal(); j != nil && (best == nil || rank[j.Phase] > rank[best.Phase]) {
			best = j
		}
	}
	return best
}
