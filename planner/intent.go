package planner

import (
	"fmt"
	"maps"
	"slices"

	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/printable"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// Describe says what changing the file from base to head asks for. base
// is nil when the file is new.
func Describe(base, head *topology.Desired) []plan.Intent {
	var out []plan.Intent
	add := func(kind plan.IntentKind, subj *plan.Subject, format string, args ...any) {
		out = append(out, plan.Intent{Kind: kind, Subject: subj, Text: fmt.Sprintf(format, args...)})
	}
	if base == nil {
		p := head.Primary()
		add(plan.IntentNewTopology, nil, "new topology %s: %d cluster(s) in %d site(s), primary %s in site %s",
			head.Name, len(head.Clusters), len(head.Sites()), p.Name, p.Site.Name)
		for _, c := range head.Clusters {
			if c.Name != p.Name {
				s := subjectOf(c)
				add(plan.IntentNewCluster, &s, "new standby %s in site %s (namespace %s), streaming from %s", c.Name, c.Site.Name, c.Namespace, c.Peer)
			}
		}
		return out
	}
	if base.Name != head.Name {
		add(plan.IntentSetting, nil, "topology renamed %s → %s: pgtopo treats the clusters as a new topology's (labels, Lease and bootstrap secret change name)", base.Name, head.Name)
	}
	if bp, hp := base.Primary(), head.Primary(); bp.Name != hp.Name {
		s := subjectOf(hp)
		if bp.Site.Patroni() != hp.Site.Patroni() {
			// Moving between kinds of site is a migration: say so.
			add(plan.IntentSwitchover, &s, "switchover: primary %s → %s: moves primary from %s (%s) to %s (%s)", bp.Name, hp.Name,
				bp.Site.Name, bp.Site.KindName(), hp.Site.Name, hp.Site.KindName())
		} else {
			add(plan.IntentSwitchover, &s, "switchover: primary %s → %s (site %s → %s)", bp.Name, hp.Name, bp.Site.Name, hp.Site.Name)
		}
	}
	for _, c := range head.Clusters {
		s := subjectOf(c)
		old, ok := base.Cluster(c.Name)
		if !ok {
			role := "standby"
			if c.Role == topology.RolePrimary {
				role = "primary"
			}
			add(plan.IntentNewCluster, &s, "new %s %s in site %s (namespace %s)", role, c.Name, c.Site.Name, c.Namespace)
			continue
		}
		for _, ch := range clusterChanges(old, c) {
			add(plan.IntentChange, &s, "%s: %s", c.Name, ch)
		}
	}
	for _, c := range base.Clusters {
		if _, ok := head.Cluster(c.Name); !ok {
			s := subjectOf(c)
			if head.DeletionPolicy == topology.DeletionDelete {
				add(plan.IntentRemoved, &s, "%s removed from the file: spec.deletionPolicy is delete, so merging DELETES it: its CR in site %s, its volumes and data, its catalogue row and its slot on the primary (a cluster that says it is a primary is refused)", c.Name, c.Site.Name)
			} else {
				add(plan.IntentRemoved, &s, "%s removed from the file: its CR in site %s is left alone (spec.deletionPolicy orphan: pgtopo reports it and deletes nothing)", c.Name, c.Site.Name)
			}
		}
	}
	baseSites := map[string]topology.Site{}
	for _, s := range base.Sites() {
		baseSites[s.Name] = s
	}
	for _, s := range head.Sites() {
		if old, ok := baseSites[s.Name]; ok && old.Context != s.Context {
			add(plan.IntentSite, nil, "site %s: kube context %s → %s", s.Name, old.Context, s.Context)
		}
	}
	if base.MaxLagBytes != head.MaxLagBytes {
		add(plan.IntentSetting, nil, "maxLagBytes %s → %s: the most a switchover target may lag", snapshot.HumanBytes(base.MaxLagBytes), snapshot.HumanBytes(head.MaxLagBytes))
	}
	if base.ServiceType != head.ServiceType {
		add(plan.IntentSetting, nil, "service type %s → %s: standbys reach their peer another way", base.ServiceType, head.ServiceType)
	}
	return out
}

// clusterChanges lists, in words, what changed in one cluster's spec.
// Roles are left out: the switchover intent says them.
func clusterChanges(old, c topology.DesiredCluster) []string {
	var out []string
	changed := func(what, a, b string) {
		if a != b {
			out = append(out, fmt.Sprintf("%s %s → %s", what, printable.OrNone(a), printable.OrNone(b)))
		}
	}
	if old.Site.Name != c.Site.Name || old.Namespace != c.Namespace {
		out = append(out, fmt.Sprintf("moved from %s/%s to %s/%s: pgtopo creates it anew there and leaves the old CR alone",
			old.Site.Name, old.Namespace, c.Site.Name, c.Namespace))
	}
	changed("instances", fmt.Sprint(old.DeclaredInstances), fmt.Sprint(c.DeclaredInstances))
	changed("PostgreSQL version", old.Version, c.Version)
	changed("volume size", old.VolumeSize, c.VolumeSize)
	changed("team", old.TeamID, c.TeamID)
	changed("endpoint", endpointText(old.Endpoint), endpointText(c.Endpoint))
	if old.Role == c.Role && old.Role == topology.RoleStandby {
		changed("streams from", old.Peer, c.Peer)
	}
	keys := slices.Sorted(maps.Keys(mergeKeys(old.Parameters, c.Parameters)))
	for _, k := range keys {
		changed("parameter "+k, old.Parameters[k], c.Parameters[k])
	}
	return out
}

func mergeKeys(a, b map[string]string) map[string]bool {
	m := map[string]bool{}
	for k := range a {
		m[k] = true
	}
	for k := range b {
		m[k] = true
	}
	return m
}

func endpointText(e *topology.Endpoint) string {
	if e == nil {
		return ""
	}
	return fmt.Sprintf("%s:%d", e.Host, e.Port)
}
