package plan

import (
	"fmt"

	"github.com/pgtopo/pgtopo/snapshot"
)

// ConditionKind names a precondition.
type ConditionKind string

// Condition kinds: the planner refuses a step whose preconditions fail, and
// apply re-checks them on a fresh snapshot right before acting.
const (
	CondSiteReachable ConditionKind = "site-reachable"
	// CondSiteUnreachable: a lost primary's site, before a failover.
	CondSiteUnreachable ConditionKind = "site-unreachable"
	CondInRecovery      ConditionKind = "in-recovery"
	CondCRAbsent        ConditionKind = "cr-absent"
	CondCRPresent       ConditionKind = "cr-present"
	CondReadable        ConditionKind = "database-readable"
	CondWritable        ConditionKind = "writable"
	CondOnlyPrimary     ConditionKind = "only-writable"
	CondStandby         ConditionKind = "standby"
	CondStreamingFrom   ConditionKind = "streaming-from"
	CondSameSystemID    ConditionKind = "same-system-identifier"
	CondSameTimeline    ConditionKind = "same-timeline"
	CondLagAtMost       ConditionKind = "lag-at-most"
	CondSameMajor       ConditionKind = "same-major-version"
	CondNoOtherJournal  ConditionKind = "no-other-journal"
	// CondNotWritable: the cluster takes no writes (in recovery, or its
	// database down): never rebuild or delete a primary.
	CondNotWritable ConditionKind = "not-writable"
	// CondObjectReplica: the cluster's object says it is a standby
	// (isReplica): never delete one that says it is a primary.
	CondObjectReplica ConditionKind = "object-says-standby"
	// CondSlotInactive: nobody streams through the slot on the cluster.
	CondSlotInactive ConditionKind = "slot-inactive"
)

// Precondition is a condition on a cluster (and sometimes a second one).
type Precondition struct {
	Kind    ConditionKind `json:"kind"`
	Cluster string        `json:"cluster,omitempty"`
	Other   string        `json:"other,omitempty"`
	Site    string        `json:"site,omitempty"`
	Bytes   int64         `json:"bytes,omitempty"`
}

// Check re-evaluates a step's preconditions on a fresh snapshot. apply calls
// it right before acting, so a plan that went stale is refused, not forced.
func Check(step Step, snap *snapshot.Snapshot) error {
	for _, c := range step.Preconditions {
		if err := c.Holds(snap); err != nil {
			return fmt.Errorf("precondition %s no longer holds: %w", c.Kind, err)
		}
	}
	return nil
}

// Holds reports why the condition fails on snap, or nil.
func (c Precondition) Holds(snap *snapshot.Snapshot) error {
	switch c.Kind {
	case CondSiteReachable:
		if s, ok := snap.Site(c.Site); !ok || !s.Reachable {
			return fmt.Errorf("site %s unreachable", c.Site)
		}
		return nil
	case CondSiteUnreachable:
		if s, ok := snap.Site(c.Site); ok && s.Reachable {
			return fmt.Errorf("site %s answers again: not lost", c.Site)
		}
		return nil
	case CondOnlyPrimary:
		for _, cs := range snap.Clusters {
			if cs.Writable() && cs.Name != c.Cluster {
				return fmt.Errorf("%s is writable too", cs.Name)
			}
		}
		return nil
	case CondNoOtherJournal:
		for _, cs := range snap.Clusters {
			if j := cs.Journal(); j != nil && j.From != c.Cluster && j.To != c.Cluster {
				return fmt.Errorf("%s has an unfinished switchover %s → %s", cs.Name, j.From, j.To)
			}
		}
		return nil
	}
	if c.Kind == CondObjectReplica {
		return orphanIsReplica(snap, c.Cluster)
	}
	cs, ok := snap.Cluster(c.Cluster)
	if !ok {
		return fmt.Errorf("%s is not observed", c.Cluster)
	}
	switch c.Kind {
	case CondCRAbsent:
		if cs.Exists {
			return fmt.Errorf("%s exists already", c.Cluster)
		}
		return nil
	case CondCRPresent:
		if !cs.Exists {
			return fmt.Errorf("%s does not exist", c.Cluster)
		}
		return nil
	case CondReadable:
		if cs.PG == nil {
			return fmt.Errorf("cannot read %s's database: %s", c.Cluster, cs.PGErrorText())
		}
		return nil
	case CondWritable:
		if !cs.Writable() {
			return fmt.Errorf("%s is not writable (%s)", c.Cluster, cs.PGErrorText())
		}
		return nil
	case CondInRecovery:
		if cs.PG == nil || !cs.PG.InRecovery {
			return fmt.Errorf("%s is not a standby (%s)", c.Cluster, cs.PGErrorText())
		}
		return nil
	case CondNotWritable:
		if cs.Writable() {
			return fmt.Errorf("%s takes writes: pgtopo never rebuilds or deletes a primary", c.Cluster)
		}
		return nil
	case CondSlotInactive:
		if cs.PG == nil {
			return fmt.Errorf("cannot read %s (%s)", c.Cluster, cs.PGErrorText())
		}
		for _, sl := range cs.PG.Slots {
			if sl.Name == c.Other && sl.Active {
				return fmt.Errorf("slot %s on %s is active: something streams through it", c.Other, c.Cluster)
			}
		}
		return nil
	}
	other, ok := snap.Cluster(c.Other)
	if !ok {
		return fmt.Errorf("%s is not observed", c.Other)
	}
	to, from := cs.PG, other.PG
	if to == nil || from == nil {
		return fmt.Errorf("cannot read %s or %s", c.Cluster, c.Other)
	}
	switch c.Kind {
	case CondStandby:
		if !to.InRecovery {
			return fmt.Errorf("%s is not a standby", c.Cluster)
		}
	case CondStreamingFrom:
		if w := to.WalReceiver; w == nil || w.Status != "streaming" {
			return fmt.Errorf("%s is not streaming (wal receiver: %s)", c.Cluster, cs.Receiver())
		}
		if other.Endpoint != nil && !cs.StreamsFrom(other.Endpoint) {
			return fmt.Errorf("%s streams from %s:%d, not from %s at %s", c.Cluster, to.WalReceiver.SenderHost, to.WalReceiver.SenderPort, c.Other, other.Endpoint)
		}
	case CondSameSystemID:
		if to.SystemID != from.SystemID {
			return fmt.Errorf("%s system identifier %s differs from %s's (%s): not a standby of it", c.Cluster, to.SystemID, c.Other, from.SystemID)
		}
	case CondSameTimeline:
		// A lower timeline on a standby streaming from the primary is only
		// stale reporting (no WAL since the switch); a higher one forked off.
		if to.Timeline > from.Timeline {
			return fmt.Errorf("%s timeline %d is ahead of %s's %d: its history forked off", c.Cluster, to.Timeline, c.Other, from.Timeline)
		}
	case CondLagAtMost:
		if lag := snapshot.Lag(from, to); lag > c.Bytes {
			return fmt.Errorf("%s lag %s > maxLagBytes %s", c.Cluster, snapshot.HumanBytes(lag), snapshot.HumanBytes(c.Bytes))
		}
	case CondSameMajor:
		if to.ServerVersion/10000 != from.ServerVersion/10000 {
			return fmt.Errorf("%s runs PostgreSQL %d, %s runs %d: a switchover needs one major version", c.Cluster, to.ServerVersion/10000, c.Other, from.ServerVersion/10000)
		}
	default:
		return fmt.Errorf("unknown precondition %q", c.Kind)
	}
	return nil
}

// orphanIsReplica holds when a cluster the file no longer lists has an
// object that says it is a standby.
func orphanIsReplica(snap *snapshot.Snapshot, name string) error {
	for _, o := range snap.Orphans {
		if o.Name != name {
			continue
		}
		if o.Object == nil {
			return fmt.Errorf("%s's object could not be read", name)
		}
		if !o.Object.Spec.Replication.IsReplica {
			return fmt.Errorf("%s's object says it is a primary (isReplica false): pgtopo deletes only standbys; demote or fence it first, or delete it by hand", name)
		}
		return nil
	}
	return fmt.Errorf("%s is no longer there", name)
}
