package plan

import "testing"

// The plan's words: its closing line counts the steps by bucket (and
// deletions only when there are some), its headline says what happens to
// the roles, and a subject names its cluster or, without one, the topology.
func TestWords(t *testing.T) {
	step := func(a Action) Step { return Step{Action: a} }
	roles := func(now, after string) []ClusterRoles {
		return []ClusterRoles{{Name: "orders-east", Now: now, After: after}, {Name: "orders-west", Now: RoleStandby, After: RoleStandby}}
	}
	for _, tc := range []struct {
		name              string
		plan              Plan
		summary, headline string
		primaryNow        string
	}{
		{"in sync", Plan{Topology: "orders", Clusters: roles(RolePrimary, RolePrimary)},
			"No changes. The live topology matches the file.", "topology orders: primary orders-east", "orders-east"},
		{"bring-up", Plan{Topology: "orders", Clusters: roles("", RolePrimary),
			Steps: []Step{step(ActionLock), step(ActionEnsurePrimary), step(ActionCreateStandby), step(ActionRecord), step(ActionRecord)}},
			"Plan: 0 switchover, 2 to create, 2 to update, 0 refused.", "topology orders: bring up with primary orders-east", ""},
		{"switchover", Plan{Topology: "orders", Clusters: []ClusterRoles{{Name: "orders-east", Now: RolePrimary, After: RoleStandby}, {Name: "orders-west", Now: RoleStandby, After: RolePrimary}},
			Steps: []Step{step(ActionLock), step(ActionSwitchover), step(ActionRecord)}},
			"Plan: 1 switchover, 0 to create, 1 to update, 0 refused.", "topology orders: switchover orders-east → orders-west", "orders-east"},
		{"deletion", Plan{Topology: "orders", Clusters: roles(RolePrimary, RolePrimary),
			Steps: []Step{step(ActionLock), step(ActionDeleteCluster), step(ActionDropSlot)}},
			"Plan: 0 switchover, 0 to create, 0 to update, 2 to delete, 0 refused.", "topology orders: primary orders-east", "orders-east"},
		{"refused", Plan{Topology: "orders", Clusters: roles(RolePrimary, RolePrimary), Refusals: []Refusal{{Reason: "site west unreachable"}}},
			"Plan: 0 switchover, 0 to create, 0 to update, 1 refused.", "topology orders: refused", "orders-east"},
		{"split brain", Plan{Topology: "orders", Clusters: []ClusterRoles{{Name: "orders-east", Now: RolePrimary}, {Name: "orders-west", Now: RolePrimary}}, Refusals: []Refusal{{Reason: "two primaries"}}},
			"Plan: 0 switchover, 0 to create, 0 to update, 1 refused.", "topology orders: refused", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.plan.Summary(); got != tc.summary {
				t.Errorf("Summary() = %q, want %q", got, tc.summary)
			}
			if got := tc.plan.Headline(); got != tc.headline {
				t.Errorf("Headline() = %q, want %q", got, tc.headline)
			}
			if got := tc.plan.PrimaryNow(); got != tc.primaryNow {
				t.Errorf("PrimaryNow() = %q, want %q", got, tc.primaryNow)
			}
		})
	}
	for _, tc := range []struct {
		s    Subject
		want string
	}{
		{Subject{Site: "east", Namespace: "db", Cluster: "orders-east"}, "orders-east (east/db)"},
		{Subject{Site: "east", Namespace: "db"}, "topology (east/db)"},
	} {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("%#v.String() = %q, want %q", tc.s, got, tc.want)
		}
	}
	if got := ShortRevision("0123456789abcdef"); got != "0123456789ab" {
		t.Errorf("ShortRevision = %q", got)
	}
	if got := ShortRevision("0123"); got != "0123" {
		t.Errorf("ShortRevision of a short one = %q", got)
	}
}
