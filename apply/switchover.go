package apply

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgtopo/pgtopo/diff"
	"github.com/pgtopo/pgtopo/flavor/alauda"
	"github.com/pgtopo/pgtopo/live"
	"github.com/pgtopo/pgtopo/topology"
)

// switchover runs DESIGN.md section 6: journal, demote, gate, promote,
// follow. Every phase is journaled on both CRs before the next begins, so a
// run killed anywhere resumes here from the journal and live state, and
// promotion never happens unless this run saw the target replay up to the
// old primary's end of WAL.
func (x *exec) switchover(ctx context.Context, snap *live.Snapshot) error {
	sw := x.step.Switchover
	from, to := x.cluster(sw.From), x.cluster(sw.To)
	fo, _ := snap.Cluster(from.Name)
	j, _, err := journalOf(snap, from.Name, to.Name)
	if err != nil {
		return err
	}
	phase := sw.Resume
	if phase == "" {
		if fo.PG == nil {
			return fmt.Errorf("cannot read %s: %s", from.Name, fo.PGError)
		}
		j = alauda.Journal{From: from.Name, To: to.Name, Phase: alauda.PhaseDemoting, SystemID: fo.PG.SystemID, Timeline: fo.PG.Timeline}
		if err := x.journal(ctx, snap, j, from, to); err != nil {
			return err
		}
		x.progress("journal: switchover %s → %s begins (system identifier %s, timeline %d)", from.Name, to.Name, j.SystemID, j.Timeline)
		phase = alauda.PhaseDemoting
	} else {
		x.progress("resuming switchover %s → %s at phase %s", from.Name, to.Name, phase)
	}

	var demoted *live.Snapshot // the snapshot that read the end of WAL, in this run
	if phase == alauda.PhaseDemoting {
		gate, err := x.demote(ctx, j, from, to)
		if err != nil {
			return err
		}
		j.Phase, j.GateLSN = alauda.PhaseGated, gate.String()
		if err := x.journal(ctx, x.last, j, from, to); err != nil {
			return err
		}
		x.progress("journal: gate recorded: %s must replay up to %s", to.Name, gate)
		phase, demoted = alauda.PhaseGated, x.last
	}

	if phase == alauda.PhaseGated {
		gate, err := live.ParseLSN(j.GateLSN)
		if err != nil {
			return fmt.Errorf("journal: %w", err)
		}
		if err := x.waitGate(ctx, j, gate, to, demoted); err != nil {
			return err
		}
		j.Phase = alauda.PhasePromoted
		if err := x.journal(ctx, x.last, j, from, to); err != nil {
			return err
		}
		phase = alauda.PhasePromoted
	} else {
		// Resuming at promoted: nothing observed yet in this run.
		x.last = x.r.Observer.Observe(ctx, x.d)
	}

	// Promote (idempotent when resuming), then wait for the new timeline and
	// for the old primary to follow. The gate's snapshot is fresh: the
	// journal write since changed only the annotation set again here.
	tOb, _ := x.last.Cluster(to.Name)
	ann := keepAnnotations(tOb)
	ann[alauda.AnnotationSwitchover] = j.Encode()
	if err := x.applyCR(ctx, to, alauda.Shape{IsReplica: false, Instances: to.DeclaredInstances, Annotations: ann}); err != nil {
		return err
	}
	x.progress("promote: %s isReplica false, numberOfInstances %d", to.Name, to.DeclaredInstances)
	if err := x.waitEvery(ctx, pollSwitchover, fmt.Sprintf("%s writable on timeline %d", to.Name, j.Timeline+1), func(s *live.Snapshot) (bool, string) {
		cs, _ := s.Cluster(to.Name)
		return cs.Writable() && cs.PG.Timeline > j.Timeline, statusWords(cs)
	}); err != nil {
		return err
	}
	// A checkpoint writes WAL on the new timeline, so followers see the
	// timeline at once; without writes they report the old one for as long
	// as checkpoint_timeout.
	snap = x.r.Observer.Observe(ctx, x.d)
	if tOb, _ = snap.Cluster(to.Name); tOb.Writable() {
		if err := x.sql(ctx, tOb, "CHECKPOINT"); err != nil {
			return err
		}
	}
	if err := x.waitStreaming(ctx, from.Name, to.Name); err != nil {
		return fmt.Errorf("%s does not follow the new primary %s and needs a rebuild (delete its CR and volumes; pgtopo recreates it as a standby): %w", from.Name, to.Name, err)
	}

	// Done: clear the journal on both CRs.
	snap = x.r.Observer.Observe(ctx, x.d)
	for _, c := range []topology.DesiredCluster{from, to} {
		o, _ := snap.Cluster(c.Name)
		ann := keepAnnotations(o)
		delete(ann, alauda.AnnotationSwitchover)
		if err := x.applyCR(ctx, c, shapeOf(o, ann)); err != nil {
			return err
		}
	}
	x.progress("switchover %s → %s done; journal cleared", from.Name, to.Name)
	return nil
}

// demote fences the old primary, waits until the target has everything it
// wrote, turns it into a standby of the target, and returns its end of WAL
// (its replay position once in recovery and settled) for the gate.
//
// The fence exists because a standby cluster that streams through a slot
// connects only to a read-write peer (Patroni adds
// target_session_attrs=read-write), so WAL the old primary flushed but had
// not streamed when it was demoted could never reach the target.
func (x *exec) demote(ctx context.Context, j alauda.Journal, from, to topology.DesiredCluster) (live.LSN, error) {
	snap := x.r.Observer.Observe(ctx, x.d)
	fo, _ := snap.Cluster(from.Name)
	tOb, _ := snap.Cluster(to.Name)
	if tOb.Endpoint == nil {
		return 0, fmt.Errorf("%s has no endpoint", to.Name)
	}
	if fo.Writable() {
		if err := x.fence(ctx, fo, to); err != nil {
			// Not demoted: writes must resume at once.
			_ = x.unfence(context.Background(), x.r.Observer.Observe(context.Background(), x.d), from.Name)
			return 0, err
		}
	}
	ann := keepAnnotations(fo)
	ann[alauda.AnnotationSwitchover] = j.Encode()
	if err := x.applyCR(ctx, from, alauda.Shape{IsReplica: true, Instances: 1, PeerHost: tOb.Endpoint.Host, PeerPort: tOb.Endpoint.Port, Annotations: ann}); err != nil {
		return 0, err
	}
	x.progress("demote: %s isReplica true, numberOfInstances 1, peer %s", from.Name, tOb.Endpoint)
	var end live.LSN
	err := x.waitEvery(ctx, pollSwitchover, fmt.Sprintf("%s in recovery, for its end of WAL", from.Name), func(s *live.Snapshot) (bool, string) {
		cs, _ := s.Cluster(from.Name)
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
		return 0, err
	}
	// Lift the fence now that it is a standby (ALTER SYSTEM works in
	// recovery): left in place, it would make the cluster read-only the
	// next time it is primary, even after a switchover abandoned here.
	if err := x.unfence(ctx, x.last, from.Name); err != nil {
		return 0, err
	}
	return end, nil
}

// fence makes the old primary refuse new writes (new sessions default to
// read-only, open sessions but Patroni's are ended, so no transaction
// commits after it; what Patroni might still write, the gate covers),
// then waits until the target replayed everything the old primary flushed.
func (x *exec) fence(ctx context.Context, fo *live.ClusterState, to topology.DesiredCluster) error {
	var end live.LSN
	err := x.session(ctx, fo, func(c *pgx.Conn) error {
		for _, stmt := range []string{
			"ALTER SYSTEM SET default_transaction_read_only = on",
			"SELECT pg_reload_conf()",
			// Patroni's own session is spared: ended, it costs Patroni a
			// loop and delays the demotion this fence precedes.
			"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND application_name NOT LIKE 'Patroni%'",
		} {
			if _, err := c.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("fence: %w", err)
			}
		}
		var inRecovery bool
		var lsn string
		if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN '' ELSE pg_current_wal_lsn()::text END").Scan(&inRecovery, &lsn); err != nil {
			return fmt.Errorf("fence: end of WAL: %w", err)
		}
		if inRecovery {
			return fmt.Errorf("fence: in recovery already, not the primary")
		}
		var err error
		end, err = live.ParseLSN(lsn)
		return err
	})
	if err != nil {
		return err
	}
	x.progress("fence: %s refuses new writes; %s must replay up to %s", fo.Name, to.Name, end)
	return x.wait(ctx, fmt.Sprintf("%s replay >= %s", to.Name, end), func(s *live.Snapshot) (bool, string) {
		cs, _ := s.Cluster(to.Name)
		if cs.PG == nil {
			return false, statusWords(cs)
		}
		if cs.PG.ReplayLSN < end {
			return false, fmt.Sprintf("%s replay %s, %s behind", to.Name, cs.PG.ReplayLSN, diff.HumanBytes(int64(end-cs.PG.ReplayLSN)))
		}
		if !streamsFrom(cs, s, fo.Name) {
			return false, fmt.Sprintf("%s caught up but does not stream from %s (wal receiver %s)", to.Name, fo.Name, describeReceiver(cs.PG.WalReceiver))
		}
		return true, fmt.Sprintf("%s replay %s, streaming from %s", to.Name, cs.PG.ReplayLSN, fo.Name)
	})
}

// unfence removes the fence; ALTER SYSTEM works on a standby too, and the
// setting must not outlive the switchover (it would make the cluster
// read-only the next time it is primary).
func (x *exec) unfence(ctx context.Context, snap *live.Snapshot, name string) error {
	o, _ := snap.Cluster(name)
	if o.PG == nil {
		return fmt.Errorf("unfence %s: cannot connect: %s", name, o.PGError)
	}
	return x.session(ctx, o, func(c *pgx.Conn) error {
		for _, stmt := range []string{"ALTER SYSTEM RESET default_transaction_read_only", "SELECT pg_reload_conf()"} {
			if _, err := c.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("unfence: %w", err)
			}
		}
		return nil
	})
}

// waitGate waits until the target has replayed the old primary's end of WAL
// on the same system and timeline: the zero-data-loss gate. Replay only
// moves forward, so seen, the snapshot that read that end of WAL, is
// evidence enough when it already shows the target past it.
func (x *exec) waitGate(ctx context.Context, j alauda.Journal, gate live.LSN, to topology.DesiredCluster, seen *live.Snapshot) error {
	what := fmt.Sprintf("gate: %s replay >= %s", to.Name, gate)
	cond := func(s *live.Snapshot) (bool, string) {
		cs, _ := s.Cluster(to.Name)
		if cs.PG == nil {
			return false, statusWords(cs)
		}
		if !cs.PG.InRecovery {
			return false, fmt.Sprintf("%s is writable before the gate passed", to.Name)
		}
		// A standby reports the timeline of its last checkpoint until WAL of
		// a newer one arrives, and a demoted primary sends none, so an older
		// timeline is expected here; the shared history was proven by the
		// fence, where the target caught up while streaming from the old
		// primary. Only a newer timeline means it forked off.
		if cs.PG.SystemID != j.SystemID || cs.PG.Timeline > j.Timeline {
			return false, fmt.Sprintf("system identifier %s timeline %d, journal says %s timeline %d", cs.PG.SystemID, cs.PG.Timeline, j.SystemID, j.Timeline)
		}
		if cs.PG.ReplayLSN < gate {
			return false, fmt.Sprintf("%s replay %s, %s behind", to.Name, cs.PG.ReplayLSN, diff.HumanBytes(int64(gate-cs.PG.ReplayLSN)))
		}
		return true, fmt.Sprintf("%s replay %s", to.Name, cs.PG.ReplayLSN)
	}
	if seen != nil {
		if ok, detail := cond(seen); ok {
			x.progress("%s (%s)", what, detail)
			return nil
		}
	}
	return x.waitEvery(ctx, pollSwitchover, what, cond)
}

// streamsFrom reports whether a standby's WAL receiver streams from the
// named cluster's endpoint.
func streamsFrom(cs *live.ClusterState, s *live.Snapshot, from string) bool {
	src, _ := s.Cluster(from)
	w := cs.PG.WalReceiver
	return w != nil && w.Status == "streaming" && src != nil && src.Endpoint != nil &&
		w.SenderHost == src.Endpoint.Host && w.SenderPort == src.Endpoint.Port
}

// journal writes the journal annotation on both CRs, each keeping its
// current shape.
func (x *exec) journal(ctx context.Context, snap *live.Snapshot, j alauda.Journal, clusters ...topology.DesiredCluster) error {
	for _, c := range clusters {
		o, _ := snap.Cluster(c.Name)
		if !o.Exists {
			return fmt.Errorf("%s has no CR", c.Name)
		}
		ann := keepAnnotations(o)
		ann[alauda.AnnotationSwitchover] = j.Encode()
		if err := x.applyCR(ctx, c, shapeOf(o, ann)); err != nil {
			return err
		}
	}
	return nil
}

// shapeOf is a CR's current shape with the given annotations.
func shapeOf(o *live.ClusterState, ann map[string]string) alauda.Shape {
	r := o.CR.Replication
	return alauda.Shape{IsReplica: r.IsReplica, Instances: o.CR.Instances, PeerHost: r.PeerHost, PeerPort: r.PeerPort, Annotations: ann}
}

func journalOf(snap *live.Snapshot, names ...string) (alauda.Journal, bool, error) {
	for _, n := range names {
		o, _ := snap.Cluster(n)
		if o == nil || !o.Exists {
			continue
		}
		j, ok, err := alauda.ParseJournal(o.CR.Annotations)
		if err != nil || ok {
			return j, ok, err
		}
	}
	return alauda.Journal{}, false, nil
}
