package diff

import (
	"fmt"

	"github.com/pgtopo/pgtopo/live"
)

// Check re-evaluates a step's preconditions on a fresh snapshot. apply calls
// it right before acting, so a plan that went stale is refused, not forced.
func Check(step Step, snap *live.Snapshot) error {
	for _, c := range step.Preconditions {
		if err := check(c, snap); err != nil {
			return fmt.Errorf("%s %s: precondition %s no longer holds: %w", step.Action, step.Subject, c.Kind, err)
		}
	}
	return nil
}

func check(c Precondition, snap *live.Snapshot) error {
	cluster := func(name string) (*live.ClusterState, error) {
		cs, ok := snap.Cluster(name)
		if !ok {
			return nil, fmt.Errorf("%s is not observed", name)
		}
		return cs, nil
	}
	switch c.Kind {
	case CondSiteReachable:
		s, ok := snap.Site(c.Site)
		if !ok || !s.Reachable {
			return fmt.Errorf("site %s unreachable", c.Site)
		}
		return nil
	case CondCRAbsent, CondCRPresent:
		cs, err := cluster(c.Cluster)
		if err != nil {
			return err
		}
		if cs.Exists != (c.Kind == CondCRPresent) {
			return fmt.Errorf("%s CR exists: %v", c.Cluster, cs.Exists)
		}
		return nil
	case CondWritable:
		cs, err := cluster(c.Cluster)
		if err != nil {
			return err
		}
		if !cs.Writable() {
			return fmt.Errorf("%s is not writable (%s)", c.Cluster, orNone(cs.PGError))
		}
		return nil
	case CondOnlyPrimary:
		for _, cs := range snap.Clusters {
			if cs.Writable() && cs.Name != c.Cluster {
				return fmt.Errorf("%s is writable too", cs.Name)
			}
		}
		return nil
	}
	to, err := cluster(c.Cluster)
	if err != nil {
		return err
	}
	from, err := cluster(c.Other)
	if err != nil {
		return err
	}
	if to.PG == nil || from.PG == nil {
		return fmt.Errorf("cannot read %s or %s", c.Cluster, c.Other)
	}
	switch c.Kind {
	case CondStreamingFrom:
		w := to.PG.WalReceiver
		if w == nil || w.Status != "streaming" {
			return fmt.Errorf("%s is not streaming (wal receiver: %s)", c.Cluster, walStatus(w))
		}
		if from.Endpoint != nil && (w.SenderHost != from.Endpoint.Host || w.SenderPort != from.Endpoint.Port) {
			return fmt.Errorf("%s streams from %s:%d, not %s", c.Cluster, w.SenderHost, w.SenderPort, from.Endpoint)
		}
	case CondSameSystemID:
		if to.PG.SystemID != from.PG.SystemID {
			return fmt.Errorf("system identifiers differ: %s %s, %s %s", c.Cluster, to.PG.SystemID, c.Other, from.PG.SystemID)
		}
	case CondSameTimeline:
		if to.PG.Timeline > from.PG.Timeline {
			return fmt.Errorf("%s timeline %d is ahead of %s's %d", c.Cluster, to.PG.Timeline, c.Other, from.PG.Timeline)
		}
	case CondLagAtMost:
		if lag := lagBytes(from.PG, to.PG); lag > c.Bytes {
			return fmt.Errorf("lag %s > %s", humanBytes(lag), humanBytes(c.Bytes))
		}
	case CondSameMajor:
		if to.PG.ServerVersion/10000 != from.PG.ServerVersion/10000 {
			return fmt.Errorf("versions differ")
		}
	default:
		return fmt.Errorf("unknown precondition %q", c.Kind)
	}
	return nil
}

// HumanBytes formats a byte count for progress output.
func HumanBytes(n int64) string { return humanBytes(n) }
