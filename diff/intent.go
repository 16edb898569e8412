package diff

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// Intent is one thing a change to the topology file asks for, said in
// words: what merging a pull request will do, independent of live state.
type Intent struct {
	Kind    IntentKind `json:"kind"`
	Subject *Subject   `json:"subject,omitempty"`
	Text    string     `json:"text"`
}

// IntentKind classifies an intent.
type IntentKind string

// Intent kinds.
const (
	IntentNewTopology IntentKind = "new-topology"
	IntentSwitchover  IntentKind = "switchover"
	IntentNewCluster  IntentKind = "new-cluster"
	IntentRemoved     IntentKind = "removed-cluster"
	IntentChange      IntentKind = "change"
	IntentSite        IntentKind = "site"
	IntentSetting     IntentKind = "setting"
)

// Describe says what changing the file from base to head asks for. base
// is nil when the file is new.
func Describe(base, head *topology.Desired) []Intent {
	var out []Intent
	add := func(kind IntentKind, subj *Subject, format string, args ...any) {
		out = append(out, Intent{Kind: kind, Subject: subj, Text: fmt.Sprintf(format, args...)})
	}
	if base == nil {
		p := head.Primary()
		add(IntentNewTopology, nil, "new topology %s: %d cluster(s) in %d site(s), primary %s in site %s",
			head.Name, len(head.Clusters), len(head.Sites()), p.Name, p.Site.Name)
		for _, c := range head.Clusters {
			if c.Name != p.Name {
				s := subjectOf(c)
				add(IntentNewCluster, &s, "new standby %s in site %s (namespace %s), streaming from %s", c.Name, c.Site.Name, c.Namespace, c.Peer)
			}
		}
		return out
	}
	if base.Name != head.Name {
		add(IntentSetting, nil, "topology renamed %s → %s: pgtopo treats the clusters as a new topology's (labels, Lease and bootstrap secret change name)", base.Name, head.Name)
	}
	if bp, hp := base.Primary(), head.Primary(); bp.Name != hp.Name {
		s := subjectOf(hp)
		if bp.Site.Patroni() != hp.Site.Patroni() {
			// Moving between kinds of site is a migration: say so.
			add(IntentSwitchover, &s, "switchover: primary %s → %s: moves primary from %s (%s) to %s (%s)", bp.Name, hp.Name,
				bp.Site.Name, bp.Site.KindName(), hp.Site.Name, hp.Site.KindName())
		} else {
			add(IntentSwitchover, &s, "switchover: primary %s → %s (site %s → %s)", bp.Name, hp.Name, bp.Site.Name, hp.Site.Name)
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
			add(IntentNewCluster, &s, "new %s %s in site %s (namespace %s)", role, c.Name, c.Site.Name, c.Namespace)
			continue
		}
		for _, ch := range clusterChanges(old, c) {
			add(IntentChange, &s, "%s: %s", c.Name, ch)
		}
	}
	for _, c := range base.Clusters {
		if _, ok := head.Cluster(c.Name); !ok {
			s := subjectOf(c)
			if head.DeletionPolicy == topology.DeletionDelete {
				add(IntentRemoved, &s, "%s removed from the file: spec.deletionPolicy is delete, so merging DELETES it: its CR in site %s, its volumes and data, its catalogue row and its slot on the primary (a cluster that says it is a primary is refused)", c.Name, c.Site.Name)
			} else {
				add(IntentRemoved, &s, "%s removed from the file: its CR in site %s is left alone (spec.deletionPolicy orphan: pgtopo reports it and deletes nothing)", c.Name, c.Site.Name)
			}
		}
	}
	baseSites := map[string]topology.Site{}
	for _, s := range base.Sites() {
		baseSites[s.Name] = s
	}
	for _, s := range head.Sites() {
		if old, ok := baseSites[s.Name]; ok && old.Context != s.Context {
			add(IntentSite, nil, "site %s: kube context %s → %s", s.Name, old.Context, s.Context)
		}
	}
	if base.MaxLagBytes != head.MaxLagBytes {
		add(IntentSetting, nil, "maxLagBytes %s → %s: the most a switchover target may lag", snapshot.HumanBytes(base.MaxLagBytes), snapshot.HumanBytes(head.MaxLagBytes))
	}
	if base.ServiceType != head.ServiceType {
		add(IntentSetting, nil, "service type %s → %s: standbys reach their peer another way", base.ServiceType, head.ServiceType)
	}
	return out
}

// clusterChanges lists, in words, what changed in one cluster's spec.
// Roles are left out: the switchover intent says them.
func clusterChanges(old, c topology.DesiredCluster) []string {
	var out []string
	changed := func(what, a, b string) {
		if a != b {
			out = append(out, fmt.Sprintf("%s %s → %s", what, show(a), show(b)))
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

// PullRequest is what pgtopo says about a pull request: the intents of the
// change, then the live plan for the head revision (nil when not observed).
type PullRequest struct {
	Base    string   `json:"base"`
	Head    string   `json:"head"`
	Path    string   `json:"path"`
	Intents []Intent `json:"intents"`
	Plan    *Plan    `json:"plan,omitempty"`
}

// Headline says in one line what merging does.
func (pr *PullRequest) Headline() string {
	if len(pr.Intents) == 0 {
		return fmt.Sprintf("merging %s changes nothing in %s", ShortRevision(pr.Head), pr.Path)
	}
	for _, in := range pr.Intents {
		if in.Kind == IntentSwitchover || in.Kind == IntentNewTopology {
			return "merging " + ShortRevision(pr.Head) + ": " + in.Text
		}
	}
	return fmt.Sprintf("merging %s: %d change(s) to %s", ShortRevision(pr.Head), len(pr.Intents), pr.Path)
}

var intentSymbols = map[IntentKind]string{
	IntentNewTopology: "+", IntentSwitchover: "<>", IntentNewCluster: "+", IntentRemoved: "-",
	IntentChange: "~", IntentSite: "~", IntentSetting: "~",
}

// WriteText renders the pull request for a terminal or a CI log.
func (pr *PullRequest) WriteText(w io.Writer) error {
	var b strings.Builder
	put(&b, "%s\n", pr.Headline())
	put(&b, "%s: base %s, head %s\n", pr.Path, ShortRevision(pr.Base), ShortRevision(pr.Head))
	if len(pr.Intents) > 0 {
		put(&b, "\nWhat merging does:\n")
		for _, in := range pr.Intents {
			put(&b, "  %-2s %s\n", intentSymbols[in.Kind], in.Text)
		}
	}
	if pr.Plan != nil {
		put(&b, "\nLive plan for %s:\n", ShortRevision(pr.Head))
	}
	if _, err := w.Write([]byte(b.String())); err != nil {
		return err
	}
	if pr.Plan != nil {
		return pr.Plan.WriteText(w)
	}
	return nil
}

// WriteMarkdown renders the pull request as a comment to post on it.
func (pr *PullRequest) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	put(&b, "## pgtopo: %s\n\n", pr.Headline())
	put(&b, "`%s`, base `%s`, head `%s`\n\n", pr.Path, ShortRevision(pr.Base), ShortRevision(pr.Head))
	if len(pr.Intents) == 0 {
		put(&b, "The topology is the same at both revisions.\n")
	}
	for _, in := range pr.Intents {
		put(&b, "- %s\n", in.Text)
	}
	if pr.Plan == nil {
		put(&b, "\n_Live state was not observed (--live=false)._\n")
	} else {
		put(&b, "\n")
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	if pr.Plan != nil {
		return pr.Plan.WriteMarkdown(w)
	}
	return nil
}

// WriteJSON renders the pull request for machines, versioned like a plan.
func (pr *PullRequest) WriteJSON(w io.Writer) error {
	type jsonPR struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Headline   string `json:"headline"`
		PullRequest
		Plan *jsonPlan `json:"plan,omitempty"`
	}
	doc := jsonPR{APIVersion: PlanAPIVersion, Kind: "PullRequestPlan", Headline: pr.Headline(), PullRequest: *pr}
	if pr.Plan != nil {
		doc.Plan = &jsonPlan{APIVersion: PlanAPIVersion, Kind: "Plan", InSync: pr.Plan.InSync(), Refused: pr.Plan.Refused(), Summary: pr.Plan.Summary(), Plan: *pr.Plan}
	}
	doc.PullRequest.Plan = nil
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}
