package schema

import (
	"os"
	"strings"
	"testing"
)

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParsePGSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  string
	}{
		{"10GB", 10 << 30, ""},
		{"10240MB", 10 << 30, ""},
		{"10240", 10 << 30, ""}, // base unit of max_slot_wal_keep_size is MB
		{"512kB", 512 << 10, ""},
		{"1TB", 1 << 40, ""},
		{"-1", -1, ""},
		{" 2 GB ", 2 << 30, ""},
		{"10gb", 0, "case-sensitive"},
		{"ten", 0, "expected a number"},
	} {
		got, err := parsePGSize(tc.in, 1<<20)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parsePGSize(%q) error = %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parsePGSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestWarningsDoNotFail(t *testing.T) {
	v, err := NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		value    string
		warnings int
	}{
		{"1GB", 1},
		{"9999MB", 1},
		{"10GB", 0},
		{"-1", 0},
		{"lots", 1},
	} {
		doc := strings.Replace(validDoc, "WALKEEP", tc.value, 1)
		top, fs, err := v.Load("t.yaml", []byte(doc))
		if err != nil || top == nil || fs.HasErrors() {
			t.Fatalf("%s: top=%v err=%v findings=%v", tc.value, top, err, fs)
		}
		if len(fs) != tc.warnings {
			t.Errorf("%s: %d warnings, want %d: %v", tc.value, len(fs), tc.warnings, fs)
		}
		for _, f := range fs {
			if f.Severity != SeverityWarning || f.Line != 9 {
				t.Errorf("%s: %v", tc.value, f)
			}
		}
	}
}

const validDoc = `apiVersion: pgtopo.dev/v1alpha1
kind: Topology
metadata:
  name: orders
spec:
  postgres:
    version: "15"
    parameters:
      max_slot_wal_keep_size: "WALKEEP"
  replication: {serviceType: NodePort}
  sites:
    - {name: east, context: a}
    - {name: west, context: b}
  clusters:
    - {name: orders-east, site: east, namespace: db, volume: {size: 1Gi}, instances: 3}
    - {name: orders-west, site: west, namespace: db, volume: {size: 1Gi}}
  primary: orders-east
`

// FuzzLoad feeds arbitrary bytes through parse, both validators and decode:
// whatever the input, pgtopo must answer with findings, never panic.
func FuzzLoad(f *testing.F) {
	for _, c := range []string{validDoc, "", "---\n", "a: [", "spec: {clusters: [{name: 1}]}", "- 1\n- 2",
		"apiVersion: pgtopo.dev/v1alpha1\nkind: Topology\nspec: {sites: [{name: a, context: b}], clusters: [{name: x, site: y}], primary: z}"} {
		f.Add([]byte(c))
	}
	v, err := NewValidator()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		top, fs, err := v.Load("fuzz.yaml", data)
		if err != nil {
			t.Fatalf("internal error: %v", err)
		}
		if top == nil && !fs.HasErrors() {
			t.Fatalf("no topology and no error findings")
		}
		for _, x := range fs {
			if x.Line < 1 || x.Column < 1 {
				t.Fatalf("finding without a position: %v", x)
			}
			if i := strings.IndexFunc(x.String(), func(r rune) bool { return r < 0x20 || r == 0x7f || r == '\u2028' || r == '\u2029' || r == '\ufeff' }); i >= 0 {
				t.Fatalf("finding prints a raw control character: %q", x.String())
			}
		}
		if top != nil {
			if _, err := top.Desired(); err != nil {
				t.Fatalf("valid topology without a desired state: %v", err)
			}
		}
	})
}
