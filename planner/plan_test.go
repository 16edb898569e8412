package planner

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgtopo/pgtopo/internal/fixture"
	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/render"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func loadDesired(t *testing.T, file string) *topology.Desired { return fixture.Desired(t, file) }

// cs is the named cluster of s, to edit in place.
func cs(s *snapshot.Snapshot, name string) *snapshot.ClusterState {
	c, _ := s.Cluster(name)
	return c
}

// loadSnapshot reads a fixture (fixture.Snapshot).
func loadSnapshot(t *testing.T, file string, d *topology.Desired) *snapshot.Snapshot {
	return fixture.Snapshot(t, file, d)
}

func golden(t *testing.T, file string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(file, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run go test ./planner -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (go test ./planner -update rewrites it):\n--- got\n%s\n--- want\n%s", file, got, want)
	}
}

// TestPlans runs the planner over every fixture pair and compares the
// rendered plans with the golden files; expectations that matter are also
// asserted directly so a careless -update cannot bless a wrong plan.
func TestPlans(t *testing.T) {
	expect := map[string]struct {
		inSync, refused bool
		actions         []plan.Action
		mention         string
	}{
		"fresh-bring-up": {actions: []plan.Action{plan.ActionLock, plan.ActionEnsurePrimary, plan.ActionCheckpoint, plan.ActionBootstrapSecret, plan.ActionCreateStandby, plan.ActionRecord, plan.ActionRecord}},
		"in-sync":        {inSync: true},
		"fresh-bring-up-stale-secret": {actions: []plan.Action{plan.ActionLock, plan.ActionEnsurePrimary, plan.ActionCheckpoint, plan.ActionBootstrapSecret, plan.ActionCreateStandby, plan.ActionRecord, plan.ActionRecord},
			mention: "secret orders-bootstrap: present, not a copy of postgres.orders-east.credentials.postgresql.acid.zalan.do → copy of"},
		"primary-changed":           {actions: []plan.Action{plan.ActionLock, plan.ActionBootstrapSecret, plan.ActionSwitchover}, mention: "switchover orders-east → orders-west"},
		"standby-missing":           {actions: []plan.Action{plan.ActionLock, plan.ActionCheckpoint, plan.ActionBootstrapSecret, plan.ActionCreateStandby, plan.ActionRecord}},
		"secret-missing":            {actions: []plan.Action{plan.ActionLock, plan.ActionBootstrapSecret}},
		"observer-secrets-unread":   {inSync: true, mention: "bootstrap Secret orders-bootstrap not read (observed with an observer login"},
		"lagging-target":            {refused: true, mention: "switchover to orders-west refused: orders-west lag 48 MiB > maxLagBytes 16 MiB"},
		"sysid-mismatch":            {refused: true, mention: "orders-west needs a rebuild: system identifier 7702118734059123321 differs from orders-east's (7710640626635289495): not a copy of the primary. pgtopo rebuilds a standby only where allowed"},
		"sysid-mismatch-switchover": {refused: true, mention: "orders-west system identifier 7702118734059123321 differs from orders-east's (7710640626635289495)"},
		"unreachable-site":          {refused: true, mention: "site west unreachable"},
		"hand-edited-two-writable":  {refused: true, mention: "live says primary is orders-west, file says orders-east"},
		"cluster-removed-from-file": {inSync: true, mention: "orders-old (west/db): labelled for topology orders but no longer in the file: left alone"},
		"drift-and-repoint":         {actions: []plan.Action{plan.ActionLock, plan.ActionRepoint, plan.ActionUpdate}},
		"target-not-streaming":      {refused: true, mention: "orders-west is not streaming (wal receiver: waiting from 127.100.10.1:31388)"},
		"resume-journal":            {actions: []plan.Action{plan.ActionLock, plan.ActionBootstrapSecret, plan.ActionSwitchover}, mention: "resume switchover orders-east → orders-west from phase gated"},
		"three-sites-switchover":    {actions: []plan.Action{plan.ActionLock, plan.ActionBootstrapSecret, plan.ActionSwitchover, plan.ActionRepoint}},
		"lb-empty-external-ip":      {actions: []plan.Action{plan.ActionLock, plan.ActionFillExternalIP, plan.ActionFillExternalIP}},
		"revision-forward":          {actions: []plan.Action{plan.ActionLock, plan.ActionRecord, plan.ActionRecord}},
		"revision-rollback-refused": {refused: true, mention: "orders-east, orders-west last applied revision 2b7e1c09f4d3; revision 5d41402abc4b is older than 2b7e1c09f4d3 (an ancestor of it): applying it rolls back. Pass --allow-rollback"},
		"revision-rollback-allowed": {actions: []plan.Action{plan.ActionLock, plan.ActionRecord, plan.ActionRecord}, mention: "(allowed by --allow-rollback)"},
		"revision-unknown-refused":  {refused: true, mention: "which this repository does not have"},
	}
	dirs, _ := filepath.Glob("testdata/*/snapshot.json")
	if len(dirs) != len(expect) {
		t.Fatalf("%d fixtures, %d expectations", len(dirs), len(expect))
	}
	for _, snapFile := range dirs {
		dir := filepath.Dir(snapFile)
		name := filepath.Base(dir)
		t.Run(name, func(t *testing.T) {
			ref, err := os.ReadFile(filepath.Join(dir, "topology"))
			if err != nil {
				t.Fatal(err)
			}
			d := loadDesired(t, filepath.Join("testdata", strings.TrimSpace(string(ref))))
			snap := loadSnapshot(t, snapFile, d)
			opt := loadOptions(t, dir)
			p := Compute(d, snap, opt)
			again := Compute(d, snap, opt)
			var text, js, md, text2 bytes.Buffer
			for _, w := range []func() error{
				func() error { return render.Text(&text, &p) }, func() error { return render.JSON(&js, &p) },
				func() error { return render.Markdown(&md, &p) }, func() error { return render.Text(&text2, &again) },
			} {
				if err := w(); err != nil {
					t.Fatal(err)
				}
			}
			if text.String() != text2.String() {
				t.Fatalf("planning twice gave different plans")
			}
			golden(t, filepath.Join(dir, "plan.txt"), text.Bytes())
			golden(t, filepath.Join(dir, "plan.json"), js.Bytes())
			golden(t, filepath.Join(dir, "plan.md"), md.Bytes())

			e := expect[name]
			if p.InSync() != e.inSync || p.Refused() != e.refused {
				t.Errorf("inSync=%v refused=%v, want %v %v", p.InSync(), p.Refused(), e.inSync, e.refused)
			}
			var actions []plan.Action
			for _, s := range p.Steps {
				actions = append(actions, s.Action)
			}
			checkPayloads(t, p)
			if strings.Join(actionStrings(actions), ",") != strings.Join(actionStrings(e.actions), ",") {
				t.Errorf("actions = %v, want %v", actions, e.actions)
			}
			if e.mention != "" && !strings.Contains(text.String(), e.mention) {
				t.Errorf("plan does not say %q:\n%s", e.mention, text.String())
			}
		})
	}
}

func actionStrings(as []plan.Action) []string {
	var out []string
	for _, a := range as {
		out = append(out, string(a))
	}
	return out
}

// loadOptions reads the fixture's options.json, if it has one.
func loadOptions(t *testing.T, dir string) plan.Options {
	t.Helper()
	var opt plan.Options
	data, err := os.ReadFile(filepath.Join(dir, "options.json"))
	if errors.Is(err, os.ErrNotExist) {
		return opt
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &opt); err != nil {
		t.Fatalf("%s/options.json: %v", dir, err)
	}
	return opt
}
