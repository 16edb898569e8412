package apply

import (
	"context"
	"fmt"

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

	if phase == alauda.PhaseDemoting {
		gate, err := x.demote(ctx, j, from, to)
		if err != nil {
			return err
		}
		j.Phase, j.GateLSN = alauda.PhaseGated, gate.String()
		if err := x.journal(ctx, x.r.Observer.Observe(ctx, x.d), j, from, to); err != nil {
			return err
		}
		x.progress("journal: gate recorded: %s must replay up to %s", to.Name, gate)
		phase = alauda.PhaseGated
	}

	if phase == alauda.PhaseGated {
		gate, err := live.ParseLSN(j.GateLSN)
		if err != nil {
			return fmt.Errorf("journal: %w", err)
		}
		if err := x.waitGate(ctx, j, gate, from, to); err != nil {
			return err
		}
		j.Phase = alauda.PhasePromoted
		snap := x.r.Observer.Observe(ctx, x.d)
		if err := x.journal(ctx, snap, j, from, to); err != nil {
			return err
		}
		phase = alauda.PhasePromoted
	}

	// Promote (idempotent when resuming), then wait for the new timeline and
	// for the old primary to follow.
	snap = x.r.Observer.Observe(ctx, x.d)
	tOb, _ := snap.Cluster(to.Name)
	ann := keepAnnotations(tOb)
	ann[alauda.AnnotationSwitchover] = j.Encode()
	if err := x.applyCR(ctx, to, alauda.Shape{IsReplica: false, Instances: to.DeclaredInstances, Annotations: ann}); err != nil {
		return err
	}
	x.progress("promote: %s isReplica false, numberOfInstances %d", to.Name, to.DeclaredInstances)
	if err := x.wait(ctx, fmt.Sprintf("%s writable on timeline %d", to.Name, j.Timeline+1), func(s *live.Snapshot) (bool, string) {
		cs, _ := s.Cluster(to.Name)
		return cs.Writable() && cs.PG.Timeline > j.Timeline, statusWords(cs)
	}); err != nil {
		return err
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

// demote turns the old primary into a standby of the target and returns its
// end of WAL: the replay position once it is in recovery and has stopped
// moving (Patroni before 4.1 shuts down immediately, so the WAL it flushed
// but had not streamed is replayed locally after the restart).
func (x *exec) demote(ctx context.Context, j alauda.Journal, from, to topology.DesiredCluster) (live.LSN, error) {
	snap := x.r.Observer.Observe(ctx, x.d)
	fo, _ := snap.Cluster(from.Name)
	tOb, _ := snap.Cluster(to.Name)
	if tOb.Endpoint == nil {
		return 0, fmt.Errorf("%s has no endpoint", to.Name)
	}
	ann := keepAnnotations(fo)
	ann[alauda.AnnotationSwitchover] = j.Encode()
	if err := x.applyCR(ctx, from, alauda.Shape{IsReplica: true, Instances: 1, PeerHost: tOb.Endpoint.Host, PeerPort: tOb.Endpoint.Port, Annotations: ann}); err != nil {
		return 0, err
	}
	x.progress("demote: %s isReplica true, numberOfInstances 1, peer %s", from.Name, tOb.Endpoint)
	var last live.LSN
	stable := 0
	err := x.wait(ctx, fmt.Sprintf("%s in recovery with a settled end of WAL", from.Name), func(s *live.Snapshot) (bool, string) {
		cs, _ := s.Cluster(from.Name)
		if cs.PG == nil || !cs.PG.InRecovery {
			stable = 0
			return false, statusWords(cs)
		}
		if cs.PG.SystemID != j.SystemID {
			return false, fmt.Sprintf("system identifier %s, journal says %s", cs.PG.SystemID, j.SystemID)
		}
		end := cs.PG.ReplayLSN
		if cs.PG.ReceiveLSN > end {
			end = cs.PG.ReceiveLSN
		}
		if end == last {
			stable++
		} else {
			stable, last = 0, end
		}
		return stable >= 3, fmt.Sprintf("in recovery, end of WAL %s", end)
	})
	return last, err
}

// waitGate waits until the target has replayed the old primary's end of WAL
// on the same system and timeline: the zero-data-loss gate.
func (x *exec) waitGate(ctx context.Context, j alauda.Journal, gate live.LSN, from, to topology.DesiredCluster) error {
	return x.wait(ctx, fmt.Sprintf("gate: %s replay >= %s", to.Name, gate), func(s *live.Snapshot) (bool, string) {
		cs, _ := s.Cluster(to.Name)
		if cs.PG == nil {
			return false, statusWords(cs)
		}
		if !cs.PG.InRecovery {
			return false, fmt.Sprintf("%s is writable before the gate passed", to.Name)
		}
		if cs.PG.SystemID != j.SystemID || cs.PG.Timeline != j.Timeline {
			return false, fmt.Sprintf("system identifier %s timeline %d, journal says %s timeline %d", cs.PG.SystemID, cs.PG.Timeline, j.SystemID, j.Timeline)
		}
		if cs.PG.ReplayLSN < gate {
			return false, fmt.Sprintf("%s replay %s, %s behind", to.Name, cs.PG.ReplayLSN, diff.HumanBytes(int64(gate-cs.PG.ReplayLSN)))
		}
		return true, fmt.Sprintf("%s replay %s", to.Name, cs.PG.ReplayLSN)
	})
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
