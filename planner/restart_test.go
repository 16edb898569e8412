package planner

import (
	"slices"
	"strings"
	"testing"

	"github.com/pgtopo/pgtopo/plan"

	"github.com/pgtopo/pgtopo/topology"
)

// Settings that need a restart: a hot standby minimum raised restarts the
// standbys first, lowered the primary first; the primary's restart needs
// consent; a server already waiting for a restart is not in sync.
func TestRestartPlans(t *testing.T) {
	type step struct {
		action  plan.Action
		cluster string
		primary bool
	}
	cases := []struct {
		name      string
		file      string // max_connections in the file, "" for none
		live      string // max_connections on both CRs
		pending   map[string][]string
		policy    string
		allow     bool
		refusal   string
		steps     []step
		inSync    bool
		mentioned string
		params    map[string][]string // each step's restart settings, where given
	}{
		{name: "raised: standbys first, the primary with consent", file: "200", live: "100", allow: true,
			steps:     []step{{plan.ActionUpdate, "orders-west", false}, {plan.ActionUpdate, "orders-east", true}},
			mentioned: "restarting the primary orders-east for max_connections refuses writes until it is back (a write outage, usually seconds) (allowed by --allow-primary-restart)"},
		{name: "lowered: the primary first", file: "50", live: "100", policy: topology.PrimaryRestartAllow,
			steps:     []step{{plan.ActionUpdate, "orders-east", true}, {plan.ActionUpdate, "orders-west", false}},
			mentioned: "(allowed by spec.replication.primaryRestart)"},
		{name: "the primary's restart without consent is refused", file: "200", live: "100",
			refusal: "restarting the primary orders-east for max_connections refuses writes until it is back (a write outage, usually seconds): allow it with spec.replication.primaryRestart: allow, or once with --allow-primary-restart"},
		{name: "nothing changed, nothing pending: in sync", file: "100", live: "100", inSync: true},
		{name: "a standby waiting for a restart is not in sync", file: "100", live: "100",
			pending: map[string][]string{"orders-west": {"max_connections"}},
			steps:   []step{{plan.ActionRestart, "orders-west", false}}, mentioned: "pending_restart: max_connections"},
		{name: "a change and what is already pending restart together", file: "200", live: "100", allow: true,
			pending: map[string][]string{"orders-west": {"shared_buffers"}},
			steps:   []step{{plan.ActionUpdate, "orders-west", false}, {plan.ActionUpdate, "orders-east", true}}, mentioned: "", params: map[string][]string{
				"orders-west": {"max_connections", "shared_buffers"}, "orders-east": {"max_connections"}}},
		{name: "a primary waiting for a restart needs consent", file: "100", live: "100",
			pending: map[string][]string{"orders-east": {"shared_buffers"}},
			refusal: "restarting the primary orders-east for shared_buffers"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := loadDesired(t, "testdata/two-sites.yaml")
			snap := loadSnapshot(t, "testdata/in-sync/snapshot.json", d)
			d.PrimaryRestart = tc.policy
			for i := range d.Clusters {
				d.Clusters[i].Parameters = map[string]string{"max_slot_wal_keep_size": "10GB", "max_connections": tc.file}
			}
			for i := range snap.Clusters {
				c := &snap.Clusters[i]
				setParameter(c, "max_connections", tc.live, false)
				if c.PG != nil {
					c.PG.PendingRestart = tc.pending[c.Name]
				}
			}
			p := Compute(d, snap, plan.Options{AllowPrimaryRestart: tc.allow})
			var reasons []string
			for _, r := range p.Refusals {
				reasons = append(reasons, r.Reason)
			}
			if tc.refusal != "" {
				if len(reasons) != 1 || !strings.Contains(reasons[0], tc.refusal) {
					t.Fatalf("refusals %q, want one saying %q", reasons, tc.refusal)
				}
				return
			}
			if len(reasons) > 0 {
				t.Fatalf("refused: %q", reasons)
			}
			if p.InSync() != tc.inSync {
				t.Fatalf("in sync %v, want %v", p.InSync(), tc.inSync)
			}
			var got []step
			var text []string
			for _, s := range p.Steps {
				if s.Action == plan.ActionLock {
					continue
				}
				r := restartOf(s)
				if r == nil {
					t.Fatalf("%s %s restarts nothing", s.Action, s.Subject.Cluster)
				}
				got = append(got, step{s.Action, s.Subject.Cluster, r.Primary})
				if want, ok := tc.params[s.Subject.Cluster]; ok && !slices.Equal(r.Parameters, want) {
					t.Errorf("%s restarts for %v, want %v", s.Subject.Cluster, r.Parameters, want)
				}
				text = append(text, s.Reason)
				if !r.Primary && r.Follows != "orders-east" {
					t.Errorf("%s's restart waits for it to follow %q, want orders-east", s.Subject.Cluster, r.Follows)
				}
			}
			if !slices.Equal(got, tc.steps) {
				t.Fatalf("steps %v, want %v", got, tc.steps)
			}
			if !strings.Contains(strings.Join(text, "\n"), tc.mentioned) {
				t.Fatalf("reasons %q lack %q", text, tc.mentioned)
			}
		})
	}
}
