package planner

import (
	"bytes"
	"strings"
	"testing"

	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/render"

	"github.com/pgtopo/pgtopo/schema"
	"github.com/pgtopo/pgtopo/topology"
)

const baseTopology = `apiVersion: pgtopo.dev/v1alpha1
kind: Topology
metadata: {name: orders}
spec:
  postgres:
    version: "15"
    parameters: {max_slot_wal_keep_size: 10GB}
  replication: {serviceType: NodePort, maxLagBytes: 16Mi}
  sites:
    - {name: east, context: lab-east}
    - {name: west, context: lab-west}
  clusters:
    - {name: orders-east, site: east, namespace: db, instances: 2, volume: {size: 1Gi}}
    - {name: orders-west, site: west, namespace: db, instances: 2, volume: {size: 1Gi}}
  primary: orders-east
`

func desiredFrom(t *testing.T, text string) *topology.Desired {
	t.Helper()
	v, err := schema.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	top, fs, err := v.Load("topology.yaml", []byte(text))
	if err != nil || top == nil {
		t.Fatalf("%v %v", err, fs)
	}
	d, err := top.Desired()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestDescribe(t *testing.T) {
	edit := func(pairs ...string) string {
		return strings.NewReplacer(pairs...).Replace(baseTopology)
	}
	cases := []struct {
		name string
		head string
		want []string // texts, in order
		kind []plan.IntentKind
	}{
		{name: "no change", head: baseTopology},
		{name: "switchover", head: edit("primary: orders-east", "primary: orders-west"),
			want: []string{"switchover: primary orders-east → orders-west (site east → west)"}, kind: []plan.IntentKind{plan.IntentSwitchover}},
		{name: "new standby in a new site", head: edit(
			"    - {name: west, context: lab-west}\n", "    - {name: west, context: lab-west}\n    - {name: south, context: lab-south}\n",
			"  primary:", "    - {name: orders-south, site: south, namespace: db, instances: 2, volume: {size: 1Gi}}\n  primary:"),
			want: []string{"new standby orders-south in site south (namespace db)"}, kind: []plan.IntentKind{plan.IntentNewCluster}},
		{name: "cluster removed", head: edit("    - {name: orders-west, site: west, namespace: db, instances: 2, volume: {size: 1Gi}}\n", ""),
			want: []string{"orders-west removed from the file: its CR in site west is left alone (spec.deletionPolicy orphan: pgtopo reports it and deletes nothing)"}, kind: []plan.IntentKind{plan.IntentRemoved}},
		{name: "cluster removed under deletionPolicy delete", head: edit("    - {name: orders-west, site: west, namespace: db, instances: 2, volume: {size: 1Gi}}\n", "",
			"  primary: orders-east", "  deletionPolicy: delete\n  primary: orders-east"),
			want: []string{"orders-west removed from the file: spec.deletionPolicy is delete, so merging DELETES it: its CR in site west, its volumes and data, its catalogue row and its slot on the primary (a cluster that says it is a primary is refused)"},
			kind: []plan.IntentKind{plan.IntentRemoved}},
		{name: "sizes and parameters", head: edit(
			"{name: orders-west, site: west, namespace: db, instances: 2, volume: {size: 1Gi}}", "{name: orders-west, site: west, namespace: db, instances: 3, volume: {size: 2Gi}}",
			"{max_slot_wal_keep_size: 10GB}", "{max_slot_wal_keep_size: 20GB, max_connections: \"200\"}"),
			want: []string{
				"orders-east: parameter max_connections (none) → 200",
				"orders-east: parameter max_slot_wal_keep_size 10GB → 20GB",
				"orders-west: instances 2 → 3",
				"orders-west: volume size 1Gi → 2Gi",
				"orders-west: parameter max_connections (none) → 200",
				"orders-west: parameter max_slot_wal_keep_size 10GB → 20GB",
			}},
		{name: "context and lag", head: edit("context: lab-west}", "context: prod-west}", "maxLagBytes: 16Mi", "maxLagBytes: 32Mi"),
			want: []string{"site west: kube context lab-west → prod-west", "maxLagBytes 16 MiB → 32 MiB: the most a switchover target may lag"},
			kind: []plan.IntentKind{plan.IntentSite, plan.IntentSetting}},
	}
	base := desiredFrom(t, baseTopology)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := Describe(base, desiredFrom(t, c.head))
			var texts []string
			for i, in := range got {
				texts = append(texts, in.Text)
				if i < len(c.kind) && in.Kind != c.kind[i] {
					t.Errorf("intent %d kind = %s, want %s", i, in.Kind, c.kind[i])
				}
			}
			if strings.Join(texts, "\n") != strings.Join(c.want, "\n") {
				t.Errorf("intents:\n%s\nwant:\n%s", strings.Join(texts, "\n"), strings.Join(c.want, "\n"))
			}
		})
	}
}

func TestDescribeNewFile(t *testing.T) {
	got := Describe(nil, desiredFrom(t, baseTopology))
	want := []string{
		"new topology orders: 2 cluster(s) in 2 site(s), primary orders-east in site east",
		"new standby orders-west in site west (namespace db), streaming from orders-east",
	}
	if len(got) != len(want) {
		t.Fatalf("got %d intents: %+v", len(got), got)
	}
	for i := range want {
		if got[i].Text != want[i] {
			t.Errorf("intent %d = %q, want %q", i, got[i].Text, want[i])
		}
	}
}

func TestPullRequestRenderers(t *testing.T) {
	base := desiredFrom(t, baseTopology)
	head := desiredFrom(t, strings.Replace(baseTopology, "primary: orders-east", "primary: orders-west", 1))
	pr := render.PullRequest{Base: strings.Repeat("a", 40), Head: strings.Repeat("b", 40), Path: "topology.yaml", Intents: Describe(base, head)}
	var text, md, js bytes.Buffer
	if err := pr.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if err := pr.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	if err := pr.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	golden(t, "testdata/pull-request.txt", text.Bytes())
	golden(t, "testdata/pull-request.md", md.Bytes())
	golden(t, "testdata/pull-request.json", js.Bytes())
	if !strings.Contains(text.String(), "merging bbbbbbbbbbbb: switchover: primary orders-east → orders-west") {
		t.Errorf("text headline missing:\n%s", text.String())
	}
}
