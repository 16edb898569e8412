package topology

import (
	"strings"
	"testing"
)

// SetPrimary changes the primary's line and writes the consent on the line
// after it, replacing a consent the file had, and keeps every other line
// as written.
func TestSetPrimary(t *testing.T) {
	const head = "apiVersion: pgtopo.dev/v1alpha1\nkind: Topology\nmetadata: {name: orders}\nspec:\n  # who takes writes\n"
	consent := Consent{Cluster: "orders-east", SystemIdentifier: "7716492010205413347", Timeline: 4}
	const want = "  primary: orders-west # moved by a failover\n  acceptDataLoss: {cluster: orders-east, systemIdentifier: \"7716492010205413347\", timeline: 4}\n"
	for _, tc := range []struct{ name, in, out string }{
		{"plain", head + "  primary: orders-east # moved by a failover\n  sites: []\n", head + want + "  sites: []\n"},
		{"quoted", head + "  primary: \"orders-east\" # moved by a failover\n  sites: []\n", head + want + "  sites: []\n"},
		{"an old consent in block style", head + "  acceptDataLoss:\n    cluster: orders-west\n    systemIdentifier: \"1\"\n    timeline: 1\n  primary: orders-east # moved by a failover\n  sites: []\n", head + want + "  sites: []\n"},
		{"an old consent in flow style, after", head + "  primary: orders-east # moved by a failover\n  acceptDataLoss: {cluster: orders-west, systemIdentifier: \"1\", timeline: 1}\n  sites: []\n", head + want + "  sites: []\n"},
		{"last line, no newline", head + "  primary: orders-east # moved by a failover", head + want},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := SetPrimary("orders.yaml", []byte(tc.in), "orders-west", consent)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.out {
				t.Fatalf("got\n%s\nwant\n%s", got, tc.out)
			}
			if _, err := ParseDocument("orders.yaml", got); err != nil {
				t.Fatal(err)
			}
		})
	}
	if _, err := SetPrimary("orders.yaml", []byte(head+"  sites: []\n"), "orders-west", consent); err == nil || !strings.Contains(err.Error(), "no spec.primary") {
		t.Fatalf("no primary: %v", err)
	}
}
