package apply

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// Failover promotes the target after its primary's site was lost
// (docs/disaster-recovery.md): confirm the old primary unreachable through
// Kubernetes (the step's precondition) and PostgreSQL, record the failover
// with its consent and fork point on every reachable cluster, promote,
// wait for the new timeline, record it done. A run killed anywhere resumes
// from the record; no promotion happens without it.
func (x *stepRun) Failover(ctx context.Context, _ plan.Subject, f *plan.Failover) error {
	from, to := f.From.Cluster, f.To.Cluster
	var rec snapshot.FailoverRecord
	if f.Resume == "" {
		t := x.cluster(to)
		if err := x.confirmLost(ctx, f, t); err != nil {
			return err
		}
		if t.PG.SystemID != f.SystemID || t.PG.Timeline != f.FromTimeline {
			return fmt.Errorf("%s is on system %s timeline %d, but the consent is for system %s timeline %d: plan again",
				to, t.PG.SystemID, t.PG.Timeline, f.SystemID, f.FromTimeline)
		}
		consent := "spec.acceptDataLoss in the file"
		if f.Consent == plan.ConsentFlag {
			consent = "--accept-data-loss, run by " + x.r.Holder
		}
		rec = snapshot.FailoverRecord{Epoch: f.Epoch, From: from, To: to, Phase: snapshot.FailoverPromoting,
			SystemID: f.SystemID, FromTimeline: f.FromTimeline, ForkLSN: t.PG.ReplayLSN,
			LastReplayedCommit: t.PG.LastReplayedCommit, Consent: consent, At: time.Now().UTC().Format(time.RFC3339)}
		if err := x.recordFailover(ctx, rec, to); err != nil {
			return err
		}
		x.emit(Event{Type: EventJournal, Journal: rec.Phase, LSN: rec.ForkLSN.String(), Message: fmt.Sprintf(
			"failover recorded (epoch %d, consent: %s): %s forks from %s at %s on timeline %d; %s's writes past it are lost to the new primary",
			rec.Epoch, consent, to, from, rec.ForkLSN, rec.FromTimeline, from)})
	} else {
		cur := x.last.LastFailover()
		if cur == nil || cur.Epoch != f.Epoch || cur.To != to {
			return fmt.Errorf("resume failover %s → %s: its record (epoch %d) is gone or names another failover", from, to, f.Epoch)
		}
		rec = *cur
		x.emit(Event{Type: EventResume, Journal: rec.Phase, Message: fmt.Sprintf("resuming failover %s → %s (epoch %d, consent: %s)", from, to, rec.Epoch, rec.Consent)})
	}
	if rec.Phase != snapshot.FailoverPromoting && rec.Phase != snapshot.FailoverDone {
		return fmt.Errorf("promote %s: the failover record is at phase %q: no recorded consent", to, rec.Phase)
	}
	if err := x.promote(ctx, f.To, f.Promoted, f.PromoteFirst, rec.Phase); err != nil {
		return err
	}
	if err := x.waitEvery(ctx, x.r.pollSwitchover(), fmt.Sprintf("%s writable on a timeline after %d", to, rec.FromTimeline), []string{to}, func(snap *snapshot.Snapshot) (bool, string) {
		cs, _ := snap.Cluster(to)
		return cs.Writable() && cs.PG.Timeline > rec.FromTimeline, statusWords(cs)
	}); err != nil {
		return err
	}
	newTL := x.cluster(to).PG.Timeline
	if err := x.growPromoted(ctx, f.To, f.Promoted, f.PromoteFirst); err != nil {
		return err
	}
	// WAL on the new timeline at once, so followers see it.
	if err := x.sql(ctx, x.cluster(to), "CHECKPOINT"); err != nil {
		return err
	}
	rec.Phase = snapshot.FailoverDone
	if err := x.recordFailover(ctx, rec, to); err != nil {
		return err
	}
	x.emit(Event{Type: EventSwitched, Message: fmt.Sprintf("failover %s → %s done: %s writable on timeline %d; %s is fenced and demoted when it answers again", from, to, to, newTL, from)})
	return nil
}

// confirmLost proves the old primary unreachable through PostgreSQL too:
// nothing answers at the address the target streamed from.
func (x *stepRun) confirmLost(ctx context.Context, f *plan.Failover, t *snapshot.ClusterState) error {
	site, _ := x.last.Site(f.From.Site)
	kubeWhy := "site not observed"
	if site != nil {
		kubeWhy = site.Error
	}
	if f.FromEndpoint == nil {
		x.say(EventStep, "confirmed: %s unreachable through Kubernetes (%s); %s has no peer address to try it through PostgreSQL", f.From.Cluster, kubeWhy, f.To.Cluster)
		return nil
	}
	probe := &snapshot.ClusterState{Name: f.From.Cluster, Site: t.Site, Namespace: t.Namespace, Credentials: t.Credentials, Endpoint: f.FromEndpoint}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	sess, err := x.r.Database.Open(cctx, probe)
	if err == nil {
		_ = sess.Close(context.Background())
		return fmt.Errorf("%s answers through PostgreSQL at %s: it is not lost; refusing to fail over (fence it with pgtopo fence, or wait for its site)", f.From.Cluster, f.FromEndpoint)
	}
	x.say(EventStep, "confirmed: %s unreachable through Kubernetes (%s) and through PostgreSQL at %s (%v)", f.From.Cluster, kubeWhy, f.FromEndpoint, err)
	return nil
}

// recordFailover writes the record on every reachable cluster, first
// cluster first, keeping their other marks.
func (x *stepRun) recordFailover(ctx context.Context, rec snapshot.FailoverRecord, first string) error {
	var order []snapshot.ClusterState
	for _, c := range x.last.Clusters {
		if !c.Exists || x.last.SiteDown(c.Name) {
			continue
		}
		if c.Name == first {
			order = append([]snapshot.ClusterState{c}, order...)
		} else {
			order = append(order, c)
		}
	}
	for _, c := range order {
		m := x.marksOf(c.Name)
		r := rec
		m.Failover = &r
		if err := x.writeMarks(ctx, plan.Subject{Site: c.Site, Namespace: c.Namespace, Cluster: c.Name}, m); err != nil {
			return err
		}
	}
	return nil
}

// rewindBound is how long a demoted lost primary may take to stream from
// the new primary (pg_rewind included) before it is rebuilt instead.
const rewindBound = 3 * time.Minute

// Rejoin fences a lost primary that answers again, reports what it wrote
// after the fork, and makes it a standby of the new primary: by rewind, a
// rebuild, or (policy manual) leaves it demoted for a DBA.
func (x *stepRun) Rejoin(ctx context.Context, at plan.Subject, r *plan.Rejoin) error {
	name, rec := at.Cluster, r.Record
	o := x.cluster(name)
	ret := snapshot.Returned{At: time.Now().UTC().Format(time.RFC3339), Rejoin: r.Policy}
	if own := x.marksOf(name).Failover; own != nil && own.Epoch == rec.Epoch && own.Returned != nil {
		ret = *own.Returned // resumed: keep what was measured at the fence
	}
	if r.Rebuild {
		// The rebuild the plan showed as its own step, once the return was
		// fenced and measured: fenced again (idempotent) until it goes.
		if o.Writable() {
			if err := x.fenceOnly(ctx, o); err != nil {
				return fmt.Errorf("%s: fencing it again before its rebuild: %w", name, err)
			}
		}
		rec.Returned = &ret
		if r.Secret != nil {
			if err := x.copySecret(ctx, at, *r.Secret); err != nil {
				return err
			}
		}
		return x.rebuild(ctx, at, r, rec)
	}
	if o.PG == nil || o.PG.InRecovery && !o.Object.Spec.Replication.IsReplica {
		var err error
		if o, err = x.fenceBeforeItAnswers(ctx, at, r); err != nil {
			return err
		}
	}
	if o.Writable() {
		end, last, ended, err := x.fenceReturned(ctx, o)
		if err != nil {
			return err
		}
		x.say(EventFence, "fence on return: %s refuses new writes; %d client session(s) ended", name, ended)
		ret.EndLSN, ret.LastCommit = end, last
		if end > rec.ForkLSN {
			ret.Diverged = int64(end - rec.ForkLSN)
		}
		x.emit(Event{Type: EventFence, LSN: end.String(), Message: divergenceWords(name, rec, ret)})
	} else if o.PG != nil && !o.PG.ReadOnlyDefault {
		// Answering in recovery, it may still be promoted by its site's
		// Patroni before the demotion lands: fenced, it takes no writes
		// then. Best effort: the timeline checks below still catch it.
		if err := x.fenceOnly(ctx, o); err != nil {
			x.say(EventFence, "fence on return: %s answers in recovery; fencing it failed (%v): going on to demote it", name, err)
		} else {
			x.say(EventFence, "fence on return: %s answers in recovery, fenced all the same: a promotion in its own site before the demotion would take no writes", name)
		}
	}
	rec.Returned = &ret
	if err := x.markReturned(ctx, at, rec); err != nil {
		return err
	}
	if r.Secret != nil {
		if err := x.copySecret(ctx, at, *r.Secret); err != nil {
			return err
		}
	}
	// Patroni rewinds only a timeline older than the new primary's: one
	// promoted inside its own site (its Patroni took its leader lock on
	// return) has a timeline of the same number and another history, and
	// would wait for, then take, the new primary's WAL. It needs a
	// rebuild, which is a step of its own.
	if r.Policy == topology.RejoinRewind && o.Writable() && o.PG.Timeline != rec.FromTimeline {
		return x.needsRebuild(ctx, at, r, rec, fmt.Sprintf("it is on timeline %d, not %d where it was lost (promoted in its own site meanwhile): its history cannot be told apart from %s's by timeline, and Patroni would not rewind it", o.PG.Timeline, rec.FromTimeline, r.Primary.Cluster))
	}
	if r.Policy == topology.RejoinRebuild {
		return x.needsRebuild(ctx, at, r, rec, "its rejoin policy is rebuild")
	}
	if err := x.writeSpec(ctx, at, r.Demoted); err != nil {
		return err
	}
	x.emit(Event{Type: EventDemote, Message: fmt.Sprintf("demote: %s isReplica true, peer %s (%s)", name, r.Demoted.Replication.Peer(), r.Primary.Cluster)})
	if err := x.wait(ctx, name+" in recovery", []string{name}, func(snap *snapshot.Snapshot) (bool, string) {
		cs, _ := snap.Cluster(name)
		return cs.PG != nil && cs.PG.InRecovery, statusWords(cs)
	}); err != nil {
		return err
	}
	// Promoted in its own site after the fence and demoted again: seen now
	// it is rebuilt before it waits for, then takes, WAL of another history.
	// The server may restart for pg_rewind meanwhile, so a failed read here
	// only defers the check to the one after streaming.
	if r.Policy == topology.RejoinRewind {
		if own, why, err := x.timelineOfItsOwn(ctx, name, r.Primary.Cluster, rec.FromTimeline); err == nil && own {
			return x.needsRebuild(ctx, at, r, rec, why)
		}
	}
	if r.Policy == "manual" {
		rec.Returned.Done = true
		x.say(EventSwitched, "%s is fenced and demoted; rejoin policy manual: rewinding or rebuilding it is left to a DBA", name)
		return x.markReturned(ctx, at, rec)
	}
	bounded, cancel := context.WithTimeout(ctx, rewindBound)
	err := x.waitStreaming(bounded, name, r.Primary.Cluster)
	ranOut := errors.Is(err, errWaitedOut) || errors.Is(bounded.Err(), context.DeadlineExceeded)
	cancel()
	if err != nil {
		// Only a wait that ran out says the rewind failed: one stopped
		// from outside (the run's lock lost, a site away) says nothing
		// of it, and the next run's rejoin waits again.
		if ctx.Err() != nil || !ranOut {
			return err
		}
		return x.needsRebuild(ctx, at, r, rec, fmt.Sprintf("it did not rejoin by pg_rewind within %s (%v)", rewindBound, err))
	}
	own, why, err := x.timelineOfItsOwn(ctx, name, r.Primary.Cluster, rec.FromTimeline)
	if err != nil {
		return fmt.Errorf("%s: checking its timeline's history against %s's: %w", name, r.Primary.Cluster, err)
	}
	if own {
		return x.needsRebuild(ctx, at, r, rec, fmt.Sprintf("%s: it streams, but on top of a history %s never had", why, r.Primary.Cluster))
	}
	// The fence on return stays in its postgresql.auto.conf unless pg_rewind
	// replaced that file with the new primary's (a return with nothing past
	// the fork needs no rewind): it would refuse writes the next time it is
	// primary.
	if c := x.cluster(name); c.PG != nil && c.PG.ReadOnlyDefault {
		if err := x.unfence(ctx, x.last, name); err != nil {
			return err
		}
	}
	rec.Returned.Done = true
	x.say(EventSwitched, "%s rejoined as a standby of %s", name, r.Primary.Cluster)
	return x.markReturned(ctx, at, rec)
}

// answerBound is how long a returned primary fenced in its object is
// waited for to answer as a primary, so that its fence is confirmed and
// what it wrote after the fork is measured before anything else is written
// for it.
const answerBound = time.Minute

// fenceBeforeItAnswers fences a returned primary that does not answer yet
// (its site's API is back before its pods, or its Patroni is restarting
// it), or answers in recovery while its object still makes it a primary
// (its Patroni starts it so and then promotes it), where its operator
// applies the fence before the server accepts writes: as a parameter of
// its object. Demoting it instead would race its own Patroni, which may
// promote it before the operator acts on the demotion, and a demotion
// would rewind away what it wrote after the fork before anyone measured
// it. It waits until the server is out of recovery (its end of WAL can
// then be read) and returns the cluster as seen then; one that answers
// but stays in recovery past the bound is returned as it is.
func (x *stepRun) fenceBeforeItAnswers(ctx context.Context, at plan.Subject, r *plan.Rejoin) (*snapshot.ClusterState, error) {
	name := at.Cluster
	if err := x.writeSpec(ctx, at, r.Fenced); err != nil {
		return nil, fmt.Errorf("fence on return: %s is not fenced and its fence could not be written in its object, so it may take writes when it is promoted: %w", name, err)
	}
	state := "does not answer yet"
	if o := x.cluster(name); o.PG != nil {
		state = "answers in recovery, and its object makes it a primary"
	}
	x.emit(Event{Type: EventFence, Message: fmt.Sprintf("fence on return: %s %s; fenced in its object (%s on), which its operator applies before the server starts: it refuses writes once promoted", name, state, snapshot.FenceParameter)})
	bounded, cancel := context.WithTimeout(ctx, answerBound)
	defer cancel()
	err := x.waitEvery(bounded, x.r.pollSwitchover(), name+" answering as a primary", []string{name}, func(snap *snapshot.Snapshot) (bool, string) {
		cs, _ := snap.Cluster(name)
		return cs.Writable(), statusWords(cs)
	})
	if err != nil && ctx.Err() != nil {
		return nil, err
	}
	o := x.cluster(name)
	if err == nil {
		if !o.PG.ReadOnlyDefault {
			x.say(EventFence, "fence on return: %s answers writable: it was started before its operator applied the fence in its object; fencing it by SQL now", name)
		}
		return o, nil
	}
	if o = x.observedNow(ctx, name); o.PG != nil {
		x.say(EventFence, "fence on return: %s answers but stays in recovery %s after its fence was written: what it wrote after the fork is measured only if it is promoted", name, answerBound)
		return o, nil
	}
	return nil, fmt.Errorf("fence on return: %s NOT CONFIRMED: it does not answer %s after its fence was written in its object (%w); the fence holds when it starts, and the next run confirms it before anything else", name, answerBound, err)
}

// observedNow looks at every site again and returns one cluster from it.
func (x *stepRun) observedNow(ctx context.Context, name string) *snapshot.ClusterState {
	x.last = x.r.Observer.Observe(ctx)
	return x.cluster(name)
}

// timelineOfItsOwn reports whether the returned standby's timeline, past
// the one it was lost on, is not the new primary's: the switch points in
// its history file differ. A timeline number alone cannot tell, since a
// lost primary promoted in its own site numbers its timeline as the new
// primary did; pg_rewind and the WAL receiver copy the primary's history
// files as they are.
func (x *stepRun) timelineOfItsOwn(ctx context.Context, standby, primary string, lostOn int) (bool, string, error) {
	sb, pr := x.cluster(standby), x.cluster(primary)
	if sb.PG == nil || pr.PG == nil || sb.PG.Timeline <= lostOn {
		return false, "", nil
	}
	tli := sb.PG.Timeline
	mine, err := x.timelineHistory(ctx, sb, tli)
	if err != nil || mine == nil {
		return false, "", err // no history file: no timeline it made itself
	}
	theirs, err := x.timelineHistory(ctx, pr, tli)
	if err != nil {
		return false, "", err
	}
	if slices.Equal(mine, theirs) {
		return false, "", nil
	}
	theirWords := fmt.Sprintf("%s has no timeline %d", primary, tli)
	if len(theirs) > 0 {
		theirWords = fmt.Sprintf("%s's timeline %d branched %s", primary, tli, branchWords(theirs))
	}
	return true, fmt.Sprintf("%s is on a timeline %d of its own, promoted in its own site (it branched %s; %s)",
		standby, tli, branchWords(mine), theirWords), nil
}

// historySQL reads the history file of timeline $1, empty when the server has
// none.
const historySQL = `SELECT coalesce(pg_read_file('pg_wal/' || lpad(upper(to_hex($1::int)), 8, '0') || '.history', 0, 1048576, true), '')`

// timelineHistory reads a server's history of timeline tli as its switch
// points ("1 0/5000060", the reason text left out), nil when it has none.
func (x *stepRun) timelineHistory(ctx context.Context, c *snapshot.ClusterState, tli int) ([]string, error) {
	var text string
	if err := x.session(ctx, c, func(sess Session) error {
		return sess.QueryRow(ctx, historySQL, tli).Scan(&text)
	}); err != nil {
		return nil, err
	}
	var points []string
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || strings.HasPrefix(f[0], "#") {
			continue
		}
		points = append(points, f[0]+" "+f[1])
	}
	return points, nil
}

// branchWords says where the last timeline of a (non-empty) history
// branched off.
func branchWords(points []string) string {
	f := strings.Fields(points[len(points)-1])
	return fmt.Sprintf("from timeline %s at %s", f[0], f[1])
}

// NeedsRebuildError stops a rejoin that cannot go on by rewind: the
// rebuild deletes data, so it is a step of its own in the next plan.
type NeedsRebuildError struct{ Cluster, Why, Diverged string }

func (e *NeedsRebuildError) Error() string {
	return fmt.Sprintf("%s needs a rebuild: %s; stopped after its fence, still fenced: the next plan shows the rebuild as a step of its own (it deletes %s's data, including %s written after the fork), under the rebuild policy's consent", e.Cluster, e.Why, e.Cluster, e.Diverged)
}

// needsRebuild records why the returned primary needs a rebuild and stops
// the rejoin there; a Patroni cluster is held fenced with the way back.
func (x *stepRun) needsRebuild(ctx context.Context, at plan.Subject, r *plan.Rejoin, rec snapshot.FailoverRecord, why string) error {
	name := at.Cluster
	rec.Returned.NeedsRebuild = why
	if err := x.markReturned(ctx, at, rec); err != nil {
		return err
	}
	if r.Demoted.Flavor == snapshot.FlavorPatroni {
		return rebuildByHand(name, r.Primary.Cluster)
	}
	x.say(EventFence, "%s needs a rebuild: %s; the rejoin stops here, fenced", name, why)
	return &NeedsRebuildError{Cluster: name, Why: why, Diverged: snapshot.HumanBytes(rec.Returned.Diverged)}
}

// rebuildByHand is the error for a Patroni cluster that needs a rebuild:
// its data is on machines pgtopo does not manage, so it is held fenced,
// never deleted, with what a DBA does.
func rebuildByHand(name, primary string) error {
	return fmt.Errorf("%s needs a rebuild and is held fenced, not demoted: pgtopo does not rebuild a Patroni cluster outside Kubernetes; "+
		"rebuild its members by hand as a standby of %s (stop Patroni on every member, move their data directories away, remove the cluster from the DCS with patronictl remove, start them with the bootstrap from pgtopo render patroni-bootstrap %s), then run pgtopo again",
		name, primary, name)
}

// fenceOnly fences a cluster in one session (read-only by default, client
// sessions ended), reading nothing.
func (x *stepRun) fenceOnly(ctx context.Context, o *snapshot.ClusterState) error {
	return x.session(ctx, o, func(sess Session) error { _, err := fenceNow(ctx, sess); return err })
}

// rebuild removes the lost primary's object (and, with it, its data) and
// creates it again as a standby from birth.
func (x *stepRun) rebuild(ctx context.Context, at plan.Subject, r *plan.Rejoin, rec snapshot.FailoverRecord) error {
	name := at.Cluster
	if r.Demoted.Flavor == snapshot.FlavorPatroni {
		return rebuildByHand(name, r.Primary.Cluster)
	}
	if err := x.deleteForRebuild(ctx, at, true); err != nil {
		return err
	}
	if err := x.writeSpec(ctx, at, r.Demoted); err != nil {
		return err
	}
	x.say(EventWrite, "rebuild: %s created as a standby of %s from birth", name, r.Primary.Cluster)
	if err := x.waitStreaming(ctx, name, r.Primary.Cluster); err != nil {
		return err
	}
	rec.Returned.Done = true
	rec.Returned.Rejoin = "rebuild"
	return x.markReturned(ctx, at, rec)
}

// markReturned records the failover, with what was found on return, on
// the returned cluster's own object: from then on it is known handled.
func (x *stepRun) markReturned(ctx context.Context, s plan.Subject, rec snapshot.FailoverRecord) error {
	x.last = x.r.Observer.Observe(ctx)
	m := x.marksOf(s.Cluster)
	m.Failover = &rec
	return x.writeMarks(ctx, s, m)
}

// fenceReturned fences a returned primary in one session and reads its end
// of WAL and last commit time.
func (x *stepRun) fenceReturned(ctx context.Context, o *snapshot.ClusterState) (snapshot.LSN, string, int, error) {
	var end snapshot.LSN
	var last string
	var ended int
	err := x.session(ctx, o, func(sess Session) error {
		var err error
		if ended, err = fenceNow(ctx, sess); err != nil {
			return err
		}
		if end, err = endOfWAL(ctx, sess); err != nil {
			return err
		}
		return sess.QueryRow(ctx, lastCommitSQL).Scan(&last)
	})
	return end, last, ended, err
}

const lastCommitSQL = `SELECT CASE WHEN current_setting('track_commit_timestamp')::bool
  THEN coalesce(to_char((pg_last_committed_xact()).timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), '') ELSE '' END`

// divergenceWords says what a returned lost primary wrote that the new
// primary never had.
func divergenceWords(name string, rec snapshot.FailoverRecord, ret snapshot.Returned) string {
	if ret.Diverged == 0 {
		return fmt.Sprintf("divergence: none: %s's end of WAL %s is not past the fork at %s", name, ret.EndLSN, rec.ForkLSN)
	}
	span := fmt.Sprintf("commits after %s (the last one %s replayed)", cmp.Or(rec.LastReplayedCommit, "-"), rec.To)
	if ret.LastCommit != "" {
		span += " up to " + ret.LastCommit + " (its last commit)"
	} else {
		span += "; its last commit time is unknown (track_commit_timestamp is off)"
	}
	return fmt.Sprintf("divergence: %s wrote %s..%s (%s) after the fork at %s on timeline %d that %s never received: %s; they are not merged, and leave with its rejoin",
		name, rec.ForkLSN, ret.EndLSN, snapshot.HumanBytes(ret.Diverged), rec.ForkLSN, rec.FromTimeline, rec.To, span)
}
