package e2e

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgtopo/pgtopo/apply"
)

// A site evacuated by one change: three topologies whose primaries all
// move from east to west in one apply of a directory, side by side but at
// most two switchovers at once per site, each with a writer that loses no
// acknowledged row.
func TestEvacuateASite(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "east", "west")
	names := []string{"billing", "ledger", "orders"}
	east, west := filepath.Join(h.dir, "east"), filepath.Join(h.dir, "west")
	for _, name := range names {
		h.fleetFile(east, name, "east")
		h.fleetFile(west, name, "west")
	}
	began := time.Now()
	r := h.pgtopo("apply", "-f", east, "--parallel", "3")
	h.expect(r, 0)
	if n := strings.Count(r.stdout, "Apply complete"); n != 3 {
		t.Fatalf("%d topologies applied, want 3:\n%s\n%s", n, r.stdout, r.stderr)
	}
	t.Logf("three topologies brought up side by side in %.1fs", time.Since(began).Seconds())

	writers := map[string]*writer{}
	for _, name := range names {
		h.createAcked("east", name+"-east")
		writers[name] = h.startWriterOn(name)
	}
	time.Sleep(time.Second)
	began = time.Now()
	r = h.pgtopo("apply", "-f", west, "--parallel", "3", "--max-switchovers-per-site", "2", "--progress-format", "json")
	wall := time.Since(began)
	for _, w := range writers {
		w.finish()
	}
	h.expect(r, 0)

	// Each file's progress, its lines led by the file's name.
	type span struct{ from, to time.Time }
	spans := map[string]*span{}
	windows := map[string]float64{}
	for _, line := range strings.Split(r.stderr, "\n") {
		file, js, ok := strings.Cut(line, ": {")
		if !ok {
			continue
		}
		var ev apply.Event
		if json.Unmarshal([]byte("{"+js), &ev) != nil {
			continue
		}
		name := strings.TrimSuffix(filepath.Base(file), ".yaml")
		switch {
		case ev.Type == apply.EventJournal && strings.Contains(ev.Message, "begins"):
			spans[name] = &span{from: ev.Time}
		case ev.Type == apply.EventSwitched && spans[name] != nil:
			spans[name].to = ev.Time
			windows[name] = ev.WritesRefused
		}
	}
	for _, name := range names {
		if s := spans[name]; s == nil || s.to.IsZero() {
			t.Fatalf("%s: no switchover begun and done in the progress:\n%s", name, r.stderr)
		}
	}
	// At most two at once (every switchover is in both sites), and the
	// bound was used: two did run side by side.
	most := 0
	for _, a := range spans {
		at := 0
		for _, b := range spans {
			if !b.from.After(a.from) && b.to.After(a.from) {
				at++
			}
		}
		most = max(most, at)
	}
	if most != 2 {
		t.Fatalf("%d switchovers at once at most, want 2 (--max-switchovers-per-site 2): %v", most, spans)
	}
	for _, name := range names {
		w := writers[name]
		if n := h.missing("west", name+"-west", w.acked); n != 0 {
			t.Fatalf("%s: %d acknowledged rows missing on %s-west", name, n, name)
		}
		if w.bothSeen.Load() > 0 {
			t.Fatalf("%s: both clusters writable in %d samples", name, w.bothSeen.Load())
		}
		t.Logf("%s: writes refused %.2fs, %d rows acknowledged, none lost", name, windows[name], len(w.acked))
	}
	t.Logf("evacuation of east: %.1fs for three topologies, at most %d switchovers at once", wall.Seconds(), most)
	for _, n := range slices.Sorted(maps.Keys(spans)) {
		t.Logf("  %s: %s → %s", n, spans[n].from.Format("15:04:05.000"), spans[n].to.Format("15:04:05.000"))
	}
	h.noSecretsInOutput()
}

// fleetFile writes topology name with its primary in site primary, one
// instance per cluster, into dir.
func (h *harness) fleetFile(dir, name, primary string) {
	h.t.Helper()
	src, err := os.ReadFile("../examples/topologies/lab-two-sites.yaml")
	if err != nil {
		h.t.Fatal(err)
	}
	data := strings.NewReplacer("name: orders\n", "name: "+name+"\n", "orders-", name+"-", "instances: 2", "instances: 1",
		"primary: orders-east", "primary: "+name+"-"+primary).Replace(string(src))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".yaml"), []byte(data), 0o644); err != nil {
		h.t.Fatal(err)
	}
}
