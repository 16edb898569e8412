package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgtopo/pgtopo/lab"
)

// BenchmarkAPIRequests counts, from the lab's audit logs, the Kubernetes
// API requests pgtopo makes as the examples' ServiceAccount (rbac.yaml):
// one look at 1 topology, at N and at 50 (diff, the first look a reconcile
// cycle takes of each), one switchover, and the wall time of a reconcile
// fleet's first cycle over N topologies in sync (--observe-only). The lab
// runs PGTOPO_BENCH_API_TOPOLOGIES (default 10); the look at 50 adds files
// of topologies not brought up, whose objects a look reads all the same
// (absent) and whose databases it does not probe. Goals (issue 28):
// requests for 50 topologies <= 5x those for 1; one fleet cycle <= 3 s.
func BenchmarkAPIRequests(b *testing.B) {
	n := envInt(b, "PGTOPO_BENCH_API_TOPOLOGIES", 10)
	benchIdle(b)
	h := newHarness(b, "east", "west")
	east, west := filepath.Join(h.dir, "east"), filepath.Join(h.dir, "west")
	const wide = 50
	fifty := filepath.Join(h.dir, "fifty")
	for i := 0; i < max(n, wide); i++ {
		name := fmt.Sprintf("t%02d", i)
		if i < n {
			h.fleetFile(east, name, "east")
			h.fleetFile(west, name, "west")
		}
		if i < wide {
			h.fleetFile(fifty, name, "east")
		}
	}
	if r := h.pgtopo("apply", "-f", east, "--parallel", "4"); r.code != 0 {
		b.Fatalf("bring-up of %d topologies: %s\n%s", n, r.stdout, r.stderr)
	}
	id := h.deployIdentity(rbacFile, "pgtopo", "east", "west")
	requests := func() int {
		total := 0
		for _, site := range []string{"east", "west"} {
			data, err := os.ReadFile(lab.Paths{Dir: h.lab.Dir}.AuditLog(site))
			if err != nil {
				b.Fatal(err)
			}
			// One event per request (the policy omits RequestReceived).
			total += bytes.Count(data, []byte(`"username":"`+id.user+`"`))
		}
		return total
	}
	// An apply as the ServiceAccount first: its requests begin the log,
	// and the files' revisions are recorded as its.
	if r := id.run(h, "apply", "-f", east); r.code != 0 {
		b.Fatalf("apply as the ServiceAccount: %s\n%s", r.stdout, r.stderr)
	}
	labSettled(b, "PGTOPO_BENCH_API_TOPOLOGIES")
	b.ResetTimer()
	var one, many, fiftyLook, swap, swapFull, cycle, cycleWide []float64
	for round := 0; round < b.N; round++ {
		before := requests()
		if r := id.run(h, "diff", "-f", filepath.Join(east, "t00.yaml")); r.code != 0 {
			b.Fatalf("diff of one topology: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		mid := requests()
		if r := id.run(h, "diff", "-f", east); r.code != 0 {
			b.Fatalf("diff of %d topologies: exit %d\n%s\n%s", n, r.code, r.stdout, r.stderr)
		}
		after := requests()
		one, many = append(one, float64(mid-before)), append(many, float64(after-mid))
		// Exit 4: the topologies not brought up are to create.
		if r := id.run(h, "diff", "-f", fifty); r.code != 4 && r.code != 0 {
			b.Fatalf("diff of %d topologies: exit %d\n%s\n%s", wide, r.code, r.stdout, r.stderr)
		}
		fiftyLook = append(fiftyLook, float64(requests()-after))

		// A switchover there and back, its waits polling what they wait
		// for; then the same with every poll a full look.
		for _, full := range []bool{false, true} {
			for _, dir := range []string{west, east} {
				env := []string{"KUBECONFIG=" + id.kubeconfig}
				if full {
					env = append(env, "PGTOPO_BENCH_FULL_POLLS=1")
				}
				before = requests()
				if r := h.pgtopoEnv(env, "apply", "-f", filepath.Join(dir, "t00.yaml")); r.code != 0 {
					b.Fatalf("switchover: %s\n%s", r.stdout, r.stderr)
				}
				if full {
					swapFull = append(swapFull, float64(requests()-before))
				} else {
					swap = append(swap, float64(requests()-before))
				}
			}
		}

		cycle = append(cycle, firstCycle(b, h, id, east, n, "in-sync"))
		// Fifty: those not brought up end their cycle in drift.
		cycleWide = append(cycleWide, firstCycle(b, h, id, fifty, wide, "in-sync", "drift"))
	}
	b.StopTimer()
	spread := func(xs []float64) string {
		return fmt.Sprintf("median %.0f, p95 %.0f over %d", median(xs), percentile(xs, 95), len(xs))
	}
	fmt.Printf("API requests (audit log, ServiceAccount of rbac.yaml, 2 sites):\n")
	fmt.Printf("  one look, 1 topology:   %s\n", spread(one))
	fmt.Printf("  one look, %d topologies: %s\n", n, spread(many))
	fmt.Printf("  one look, %d topologies (%d running): %s\n", wide, min(n, wide), spread(fiftyLook))
	fmt.Printf("  ratio %d topologies / 1: %.1f; %d / 1: %.1f (goal: <= 5)\n", n, median(many)/median(one), wide, median(fiftyLook)/median(one))
	fmt.Printf("  one switchover (apply), waits polling what they wait for: %s\n", spread(swap))
	fmt.Printf("  one switchover (apply), every poll a full look:          %s\n", spread(swapFull))
	fmt.Printf("  ratio full / focused: %.1f\n", median(swapFull)/median(swap))
	fmt.Printf("  first reconcile cycle over %d topologies in sync: median %.2fs, p95 %.2fs\n", n, median(cycle), percentile(cycle, 95))
	fmt.Printf("  first reconcile cycle over %d topologies (%d running): median %.2fs, p95 %.2fs (goal at 50: <= 3 s)\n", wide, min(n, wide), median(cycleWide), percentile(cycleWide, 95))
}

// firstCycle runs reconcile --observe-only over dir as id and returns the
// seconds from its start to the end of the first cycle of each of its n
// topologies, each ending in one of results.
func firstCycle(b *testing.B, h *harness, id identity, dir string, n int, results ...string) float64 {
	l := h.startLoopEnv([]string{"KUBECONFIG=" + id.kubeconfig}, "-f", dir, "--observe-only", "--interval", "1h")
	defer func() {
		_ = l.cmd.Process.Kill()
		<-l.done
	}()
	started, next := l.waitFor(b, 30*time.Second, "starting line", 0, func(r logRecord) bool { return r.Msg == "starting" })
	seen := map[string]bool{}
	var last time.Time
	for len(seen) < n {
		var r logRecord
		r, next = l.waitFor(b, 60*time.Second, "a cycle of every topology", next, func(r logRecord) bool { return r.Msg == "cycle" })
		if !slices.Contains(results, r.Result) {
			b.Fatalf("%s: cycle %s (%s%s), want %s", r.Topology, r.Result, r.Refusal, r.Error, strings.Join(results, " or "))
		}
		seen[r.Topology], last = true, r.Time
	}
	return last.Sub(started.Time).Seconds()
}
