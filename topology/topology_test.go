package topology

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestPathString(t *testing.T) {
	for _, tc := range []struct {
		path Path
		want string
	}{
		{nil, ""},
		{Path{}.Child("spec").Child("clusters").Index(1).Child("site"), "spec.clusters[1].site"},
		{Path{}.Child("spec").Child("parameters").Child("a.b"), `spec.parameters["a.b"]`},
		{Path{}.Index(0), "[0]"},
	} {
		if got := tc.path.String(); got != tc.want {
			t.Errorf("%#v.String() = %q, want %q", tc.path, got, tc.want)
		}
	}
}

func TestParseDocumentPositions(t *testing.T) {
	doc, err := ParseDocument("t.yaml", []byte("a:\n  b: [x, {c: 1}]\n  \"1\": y\nl:\n  - z\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		segs []string
		want string
		pos  Pos
	}{
		{[]string{"a", "b", "1", "c"}, "a.b[1].c", Pos{2, 14}},
		{[]string{"a", "b", "0"}, "a.b[0]", Pos{2, 7}},
		{[]string{"a", "1"}, `a["1"]`, Pos{3, 8}}, // a mapping key that looks like an index
		{[]string{"l", "0"}, "l[0]", Pos{5, 5}},
		{[]string{"a", "missing"}, "a.missing", Pos{2, 3}}, // falls back to the parent mapping
	} {
		p := doc.Resolve(tc.segs)
		if p.String() != tc.want {
			t.Errorf("Resolve(%v) = %s, want %s", tc.segs, p, tc.want)
		}
		if got := doc.Position(p); got != tc.pos {
			t.Errorf("Position(%s) = %v, want %v", p, got, tc.pos)
		}
	}
	if got := doc.KeyPosition(Path{}.Child("a").Child("b")); got != (Pos{2, 3}) {
		t.Errorf("KeyPosition(a.b) = %v", got)
	}
}

func TestParseDocumentRefusals(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"empty", "", "t.yaml:1:1: file is empty"},
		{"comment only", "# hi\n", "t.yaml:1:1: file is empty"},
		{"two docs", "a: 1\n---\nb: 2\n", "t.yaml:2:1: a second YAML document"},
		{"duplicate key", "a:\n  b: 1\n  b: 2\n", `t.yaml:3:3: a.b: duplicate key "b" (first at line 2)`},
		{"tab", "a:\n\tb: 1\n", "t.yaml:2:1: not valid YAML"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseDocument("t.yaml", []byte(tc.in))
			var se *SyntaxError
			if !errors.As(err, &se) || !strings.HasPrefix(se.Error(), tc.want) {
				t.Fatalf("error = %v, want prefix %q", err, tc.want)
			}
		})
	}
}

func TestParseDocumentDepthLimit(t *testing.T) {
	in := strings.Repeat("[", 200) + strings.Repeat("]", 200)
	_, err := ParseDocument("t.yaml", []byte(in))
	if err == nil || !strings.Contains(err.Error(), "nested deeper") {
		t.Fatalf("error = %v", err)
	}
}

func load(t *testing.T, name string) *Topology {
	t.Helper()
	data, err := os.ReadFile("../examples/topologies/" + name)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := ParseDocument(name, data)
	if err != nil {
		t.Fatal(err)
	}
	top, err := doc.Decode()
	if err != nil {
		t.Fatal(err)
	}
	return top
}

func TestDesired(t *testing.T) {
	type row struct {
		Name, Site, Context, Namespace string
		Role                           Role
		Instances, Declared            int
		Peer                           string
	}
	for _, tc := range []struct {
		file        string
		serviceType string
		maxLag      int64
		rows        []row
		params      map[string]string
	}{
		{"two-sites-nodeport.yaml", "NodePort", 16 << 20, []row{
			{"orders-east", "east", "prod-east", "db", RolePrimary, 2, 2, ""},
			{"orders-west", "west", "prod-west", "db", RoleStandby, 1, 2, "orders-east"},
		}, map[string]string{"max_slot_wal_keep_size": "10GB", "max_connections": "200"}},
		{"three-sites.yaml", "NodePort", 16 << 20, []row{
			{"ledger-east", "east", "prod-east", "ledger", RolePrimary, 2, 2, ""},
			{"ledger-west", "west", "prod-west", "ledger", RoleStandby, 1, 2, "ledger-east"},
			{"ledger-south", "south", "prod-south", "ledger", RoleStandby, 1, 2, "ledger-east"},
		}, map[string]string{"max_slot_wal_keep_size": "10GB"}},
		{"two-sites-loadbalancer.yaml", "LoadBalancer", 8 << 20, []row{
			{"payments-fra", "fra", "gke-fra", "payments", RolePrimary, 3, 3, ""},
			{"payments-ams", "ams", "gke-ams", "payments", RoleStandby, 1, 3, "payments-fra"},
		}, map[string]string{"max_slot_wal_keep_size": "20GB"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			d, err := load(t, tc.file).Desired()
			if err != nil {
				t.Fatal(err)
			}
			if d.ServiceType != tc.serviceType || d.MaxLagBytes != tc.maxLag || d.Flavor != "alauda" {
				t.Errorf("group = %s %d %s", d.ServiceType, d.MaxLagBytes, d.Flavor)
			}
			var got []row
			for _, c := range d.Clusters {
				got = append(got, row{c.Name, c.Site.Name, c.Site.Context, c.Namespace, c.Role, c.Instances, c.DeclaredInstances, c.Peer})
				if !reflect.DeepEqual(c.Parameters, tc.params) {
					t.Errorf("%s parameters = %v", c.Name, c.Parameters)
				}
				if c.Version != "15" || c.TeamID != "ACID" {
					t.Errorf("%s version/team = %s/%s", c.Name, c.Version, c.TeamID)
				}
			}
			if !reflect.DeepEqual(got, tc.rows) {
				t.Errorf("clusters\n got  %+v\n want %+v", got, tc.rows)
			}
			if d.Primary().Name != tc.rows[0].Name || len(d.Standbys()) != len(tc.rows)-1 {
				t.Errorf("primary %s, %d standbys", d.Primary().Name, len(d.Standbys()))
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	doc, err := ParseDocument("t.yaml", []byte(`apiVersion: pgtopo.dev/v1alpha1
kind: Topology
metadata: {name: x}
spec:
  postgres: {version: "15", parameters: {hot_standby: true, work_mem: 4096, ratio: 0.5}}
  sites: [{name: a, context: in-cluster}]
  clusters: [{name: x1, site: a, namespace: db, volume: {size: 1Gi}}, {name: x2, site: a, namespace: db2, volume: {size: 1Gi}}]
  primary: x2
`))
	if err != nil {
		t.Fatal(err)
	}
	top, err := doc.Decode()
	if err != nil {
		t.Fatal(err)
	}
	d, err := top.Desired()
	if err != nil {
		t.Fatal(err)
	}
	if d.ServiceType != "ClusterIP" || d.MaxLagBytes != 16<<20 || d.Primary().Name != "x2" || d.PrimaryIndex != 1 {
		t.Errorf("defaults: %+v", d)
	}
	if c := d.Clusters[0]; c.Instances != 1 || c.Role != RoleStandby || c.Peer != "x2" || c.Site.Context != InCluster {
		t.Errorf("standby: %+v", c)
	}
	want := map[string]string{"hot_standby": "on", "work_mem": "4096", "ratio": "0.5"}
	if !reflect.DeepEqual(d.Clusters[0].Parameters, want) {
		t.Errorf("parameters = %v", d.Clusters[0].Parameters)
	}
}

func TestDecodeRejectsUnknownFields(t *testing.T) {
	doc, err := ParseDocument("t.yaml", []byte("apiVersion: pgtopo.dev/v1alpha1\nkind: Topology\nspec: {primry: x}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := doc.Decode(); err == nil || !strings.Contains(err.Error(), `unknown field "primry"`) {
		t.Fatalf("Decode error = %v", err)
	}
}

// TestLockSitesIgnorePrimary: the Leases a run takes depend on the sites
// and clusters, not on which cluster is primary, so runs of files that
// name different primaries contend for the same Leases.
func TestLockSitesIgnorePrimary(t *testing.T) {
	top := load(t, "three-sites.yaml")
	var got [][]LockSite
	for _, primary := range []string{"ledger-east", "ledger-west", "ledger-south"} {
		top.Spec.Primary = primary
		d, err := top.Desired()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, d.LockSites())
	}
	want := []LockSite{
		{Site: Site{Name: "east", Context: "prod-east"}, Namespace: "ledger"},
		{Site: Site{Name: "south", Context: "prod-south"}, Namespace: "ledger"},
		{Site: Site{Name: "west", Context: "prod-west"}, Namespace: "ledger"},
	}
	for i, g := range got {
		if fmt.Sprint(g) != fmt.Sprint(want) {
			t.Errorf("primary #%d: LockSites = %v, want %v", i, g, want)
		}
	}
}

// A file over the cap is refused without being read whole: /dev/zero ends
// at the cap and a byte.
func TestFileSizeCap(t *testing.T) {
	data, err := ReadFile("/dev/zero")
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != MaxFileBytes+1 {
		t.Fatalf("read %d bytes of /dev/zero, want %d", len(data), MaxFileBytes+1)
	}
	_, err = ParseDocument("zero", data)
	var se *SyntaxError
	if !errors.As(err, &se) || se.Pos != (Pos{1, 1}) || !strings.Contains(se.Msg, "the most a topology file may hold") {
		t.Fatalf("error %v, want a positioned refusal", err)
	}
	if _, err := ParseDocument("ok", bytes.Repeat([]byte("#"), MaxFileBytes)); errors.As(err, &se) && strings.Contains(se.Msg, "most a topology file") {
		t.Fatal("a file of exactly the cap is refused")
	}
}

// Every YAML error is positioned at the byte or token at fault, not at 1:1
// or at the line where the enclosing collection began.
func TestYAMLErrorsArePositioned(t *testing.T) {
	const head = "apiVersion: pgtopo.dev/v1alpha1\nkind: Topology\nmetadata:\n  name: orders\nspec:\n  primary: a\n"
	bomb := "  a: &a [x,x,x,x,x,x,x,x,x]\n"
	for _, c := range "bcdefg" {
		prev := string(c - 1)
		bomb += fmt.Sprintf("  %c: &%c [%s]\n", c, c, strings.Repeat("*"+prev+",", 8)+"*"+prev)
	}
	for _, tc := range []struct {
		name, body string
		want       Pos
		words      string
	}{
		{"NUL in a value", "  x: a\x00b\n", Pos{7, 7}, "control character U+0000"},
		{"a control character", "  x: a\x1bb\n", Pos{7, 7}, "control character U+001B"},
		{"invalid UTF-8", "  x: a\xffb\n", Pos{7, 7}, "byte 0xff is not UTF-8"},
		{"a tab in indentation", "\tfoo: 1\n", Pos{7, 1}, "a tab in indentation"},
		{"a tab in a list's indentation", "  sites:\n\t- a\n", Pos{8, 1}, "a tab in indentation"},
		{"an unclosed flow sequence", "  sites: [a, b\n  other: 1\n", Pos{7, 10}, "this collection is not closed"},
		{"an unclosed flow mapping", "  sites: {a: 1\n", Pos{7, 10}, "this collection is not closed"},
		{"an unknown alias", "  sites: *nope\n", Pos{7, 10}, "no anchor &nope is defined before it"},
		{"a complex key", "  ? [a, b]\n  : 1\n", Pos{7, 5}, "a complex mapping key"},
		{"colliding keys", "  1: a\n  \"1\": b\n", Pos{8, 3}, `duplicate key "1" (first at line 7)`},
		{"an alias bomb", bomb, Pos{12, 13}, "aliases expand this document by more than 100000 values"},
		{"a misindented line", "  clusters:\n    - name: a\n      site: b\n    site: c\n    - name: d\n", Pos{10, 5}, "did not find expected '-' indicator"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseDocument("t.yaml", []byte(head+tc.body))
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("error %v, want a SyntaxError", err)
			}
			if se.Pos != tc.want || !strings.Contains(se.Msg, tc.words) {
				t.Fatalf("%s, want at %d:%d saying %q", err, tc.want.Line, tc.want.Column, tc.words)
			}
		})
	}
}

// A large document written out is no alias bomb: only what aliases add
// counts against the bound.
func TestLargeDocumentIsNoAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("apiVersion: pgtopo.dev/v1alpha1\nkind: Topology\nmetadata: {name: big}\nspec:\n  notes:\n")
	for i := 0; i < 40000; i++ {
		fmt.Fprintf(&b, "    - [a%d, b]\n", i)
	}
	if _, err := ParseDocument("big.yaml", []byte(b.String())); err != nil {
		t.Fatalf("a 160000-value document written out: %v", err)
	}
}
