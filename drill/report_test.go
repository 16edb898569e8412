package drill

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// The reports people file, each kind with what can go wrong in it, as
// text and markdown (golden files; -update rewrites them).
func TestReportGolden(t *testing.T) {
	at := time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)
	reports := map[string]*Report{
		"switchover-passed": {Drill: "switchover", Topology: "orders", Started: at, Finished: at.Add(40 * time.Second), Result: "passed",
			Ready: "DR ready: orders-west 0 B behind", Hold: "30s", Acknowledged: 380, StreamingAfter: 1.5,
			Moves: []Move{{From: "orders-east", To: "orders-west", LagBytes: 120, Seconds: 4.2, LongestGap: 1.31},
				{From: "orders-west", To: "orders-east", Seconds: 3.9, LongestGap: 1.18}}},
		"switchover-backed-out": {Drill: "switchover", Topology: "orders", Started: at, Finished: at.Add(9 * time.Second), Result: "backed out",
			Ready: "DR ready: orders-west 0 B behind", Hold: "0s", Acknowledged: 20, Missing: 1,
			Error: "move orders-east → orders-west: switchover backed out | stalled",
			Moves: []Move{{From: "orders-east", To: "orders-west", Seconds: 4.3, LongestGap: 4.22, Error: "switchover backed out | stalled"}}},
		"isolated-passed": {Drill: KindIsolated, Topology: "orders", Started: at, Finished: at.Add(30 * time.Second), Result: "passed",
			Ready: "DR ready: orders-west 0 B behind", Acknowledged: 210,
			Isolation: &Isolation{From: "orders-west", Clone: "west/db/orders-west-drill", StreamingAfter: 3.3, ReplayedAtCut: 140, KeptAfterPromotion: 141,
				RTO: 0.37, Checks: []Check{{Name: "recent-order", Passed: true}}, Production: "unchanged",
				StatusOnly: []string{"object east/db/orders-east: resourceVersion 7 → 9, what pgtopo owns and its marks unchanged (its operator's status)"}}},
		"isolated-failed": {Drill: KindIsolated, Topology: "orders", Started: at, Finished: at.Add(30 * time.Second), Result: "failed",
			Ready: "DR ready: orders-west 0 B behind", Acknowledged: 210,
			Error: "check(s) failed on the promoted clone: recent-order; production changed during the drill",
			Isolation: &Isolation{From: "orders-west", Clone: "west/db/orders-west-drill", StreamingAfter: 3.3, ReplayedAtCut: 140, KeptAfterPromotion: 138,
				RTO: 0.52, RPO: 0.25, LostHeartbeats: 2, Removed: []string{"west/db/orders-west-drill"},
				Checks:     []Check{{Name: "recent-order", Error: "returned false"}, {Name: "rows", Passed: true}},
				Production: "changed", Changes: []string{"replication on orders-east to orders-west: streaming async → catchup async"}}},
	}
	for name, rep := range reports {
		for ext, out := range map[string]string{"txt": rep.Text(), "md": rep.Markdown()} {
			golden(t, filepath.Join("testdata", name+"."+ext), out)
		}
		rec := rep.Record()
		golden(t, filepath.Join("testdata", name+".record"), rec.Summary+"\n")
	}
}

func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./drill -run TestReportGolden -update)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs (-update rewrites it):\n--- want\n%s\n--- got\n%s", path, want, got)
	}
}
