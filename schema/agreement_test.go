package schema

import (
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/txtar"

	"github.com/pgtopo/pgtopo/topology"
)

type corpusFile struct {
	name string
	data []byte
}

// corpus is every example and every YAML file in the testscripts: the cases
// the issue says both validators must agree on.
func corpus(t *testing.T) []corpusFile {
	t.Helper()
	var out []corpusFile
	examples, err := filepath.Glob("../examples/topologies/*.yaml")
	if err != nil || len(examples) < 4 {
		t.Fatalf("examples: found %d files (%v)", len(examples), err)
	}
	for _, f := range examples {
		out = append(out, corpusFile{f, readFile(t, f)})
	}
	scripts, err := filepath.Glob("../testscripts/*.txtar")
	if err != nil || len(scripts) == 0 {
		t.Fatalf("testscripts: found %d archives (%v)", len(scripts), err)
	}
	for _, s := range scripts {
		a, err := txtar.ParseFile(s)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range a.Files {
			if strings.HasSuffix(f.Name, ".yaml") {
				out = append(out, corpusFile{filepath.Base(s) + ":" + f.Name, f.Data})
			}
		}
	}
	return out
}

func keys(fs []Finding) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.Path+" "+string(f.Rule))
	}
	sort.Strings(out)
	return out
}

// TestValidatorsAgree proves CUE and the JSON Schema report the same
// structural problems (path and rule) on every file of the corpus. The
// relational rules are pgtopo's alone (schema/relations.go).
func TestValidatorsAgree(t *testing.T) {
	v, err := NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	compared, invalid := 0, 0
	for _, c := range corpus(t) {
		doc, err := topology.ParseDocument(c.name, c.data)
		if err != nil {
			continue // a syntax error stops before either validator runs
		}
		r, err := v.Check(doc)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		compared++
		if len(r.CUEStructural)+len(r.Relational) > 0 {
			invalid++
		}
		if got, want := keys(r.CUEStructural), keys(r.JSONSchema); strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("%s: validators disagree\n cue:        %q\n jsonschema: %q", c.name, got, want)
		}
		for _, f := range r.Relational {
			if f.Rule != RuleRelation {
				t.Errorf("%s: relational finding with rule %s", c.name, f.Rule)
			}
		}
	}
	if compared < 35 || invalid < 30 {
		t.Fatalf("corpus too small: compared %d documents, %d invalid", compared, invalid)
	}
	t.Logf("validators agree on %d documents (%d invalid)", compared, invalid)
}

func TestExamplesAreValid(t *testing.T) {
	v, err := NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob("../examples/topologies/*.yaml")
	for _, f := range files {
		top, fs, err := v.Load(f, readFile(t, f))
		if err != nil || fs.HasErrors() || top == nil {
			t.Errorf("%s: err=%v findings=%v", f, err, fs)
			continue
		}
		for _, x := range fs {
			t.Errorf("%s: unexpected %s", f, x)
		}
		if _, err := top.Desired(); err != nil {
			t.Errorf("%s: desired state: %v", f, err)
		}
	}
}
