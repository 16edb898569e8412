package scale

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgtopo/pgtopo/apply"
	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/planner"
	"github.com/pgtopo/pgtopo/reconcile"
	"github.com/pgtopo/pgtopo/schema"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

func desired(t testing.TB, n, primary int) *topology.Desired {
	t.Helper()
	v, err := schema.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	top, fs, err := v.Load("fleet.yaml", Topology(n, 50, primary))
	if err != nil || top == nil {
		t.Fatalf("generated topology of %d clusters: %v %v", n, err, fs)
	}
	d, err := top.Desired()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// The generators are what the benchmarks claim: an in-sync world plans
// nothing, and moving the primary plans one switchover and a repoint for
// every other standby.
func TestGenerators(t *testing.T) {
	for _, n := range []int{3, 120} {
		d := desired(t, n, 0)
		snap := InSync(d, Name(0))
		if p := planner.Compute(d, snap, plan.Options{}); !p.InSync() {
			t.Fatalf("%d clusters: not in sync: %s %+v", n, p.Summary(), p.Refusals)
		}
		p := planner.Compute(desired(t, n, 1), snap, plan.Options{})
		count := map[plan.Action]int{}
		for _, s := range p.Steps {
			count[s.Action]++
		}
		if p.Refused() || count[plan.ActionSwitchover] != 1 || count[plan.ActionRepoint] != n-2 {
			t.Fatalf("%d clusters, primary moved: %v %+v", n, count, p.Refusals)
		}
	}
}

// The reconcile loop's memory stays flat: many cycles of load, validate,
// plan do not grow the heap (a validator that kept one CUE context did,
// with every load).
func TestReconcileHeapIsFlat(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "fleet.yaml")
	if err := os.WriteFile(path, Topology(50, 10, 0), 0o644); err != nil {
		t.Fatal(err)
	}
	v, err := schema.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	l := &reconcile.Loop{Source: &reconcile.FileSource{Path: path, Validator: v}, Observer: syncObserver{},
		Apply: func(context.Context, *topology.Desired, plan.Plan, *snapshot.Snapshot, plan.Options) (*apply.Result, error) {
			return nil, fmt.Errorf("nothing to apply in sync")
		}}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	for range 20 {
		if c := l.Once(context.Background()); c.Outcome != reconcile.OutcomeInSync {
			t.Fatalf("cycle: %s %v", c.Outcome, c.Err)
		}
	}
	before := heap()
	for range 300 {
		l.Once(context.Background())
	}
	after := heap()
	if grown := int64(after) - int64(before); grown > 4<<20 {
		t.Fatalf("heap grew by %d KiB over 300 cycles (from %d KiB)", grown>>10, before>>10)
	}
}

// syncObserver observes a world in sync with any topology.
type syncObserver struct{}

func (syncObserver) Observe(_ context.Context, d *topology.Desired) (*snapshot.Snapshot, error) {
	return InSync(d, d.Primary().Name), nil
}

// median runs f rounds times and returns its median duration.
func median(rounds int, f func()) time.Duration {
	ds := make([]time.Duration, rounds)
	for i := range ds {
		began := time.Now()
		f()
		ds[i] = time.Since(began)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[rounds/2]
}

// BenchmarkScale prints, side by side: validate at 50, 500 and 5000
// clusters (the real binary: wall time and peak RSS), the planner in sync
// and with a switchover at 100, 1000 and 10000 clusters, and reconcile's
// RSS after 1000 cycles against after 10; with each linearity ratio
// (time per cluster at the largest size / at the smallest; goal <= 1.5)
// and the goals beside them.
func BenchmarkScale(b *testing.B) {
	bin := pgtopoBinary(b)
	dir := b.TempDir()
	for i := 0; i < b.N; i++ {
		fmt.Println("validate (bin/pgtopo validate, 50 sites):")
		per := map[int]float64{}
		for _, n := range []int{50, 500, 5000} {
			path := filepath.Join(dir, fmt.Sprintf("fleet-%d.yaml", n))
			if err := os.WriteFile(path, Topology(n, 50, 0), 0o644); err != nil {
				b.Fatal(err)
			}
			var rss int64
			wall := median(3, func() { rss = max(rss, runRSS(b, bin, "validate", path)) })
			per[n] = wall.Seconds() / float64(n)
			goal := map[int]string{50: "", 500: "goal < 300 ms, < 100 MB", 5000: "goal < 3 s, < 500 MB"}[n]
			fmt.Printf("  %5d clusters: %8s  peak RSS %4d MB  %s\n", n, wall.Round(time.Millisecond), rss>>20, goal)
		}
		fmt.Printf("  time per cluster at 5000 / at 50: %.2f (goal <= 1.5)\n", per[5000]/per[50])

		fmt.Println("planner (planner.Compute, 50 sites):")
		for _, scenario := range []string{"in sync", "switchover"} {
			per := map[int]float64{}
			for _, n := range []int{100, 1000, 10000} {
				d := desired(b, n, 0)
				snap := InSync(d, Name(0))
				if scenario == "switchover" {
					d = desired(b, n, 1)
				}
				t := median(5+20000/n, func() { planner.Compute(d, snap, plan.Options{}) })
				per[n] = t.Seconds() / float64(n)
				goal := ""
				if n == 1000 && scenario == "in sync" {
					goal = "goal < 5 ms"
				}
				fmt.Printf("  %-10s %5d clusters: %10s  %s\n", scenario, n, t.Round(10*time.Microsecond), goal)
			}
			fmt.Printf("  %-10s time per cluster at 10000 / at 100: %.2f (goal <= 1.5)\n", scenario, per[10000]/per[100])
		}

		fmt.Println("reconcile (bin/pgtopo reconcile, 50 clusters in 50 sites, every site refusing connections):")
		r10, r1000 := reconcileRSS(b, bin, dir)
		fmt.Printf("  RSS after 10 cycles %d MB, after 1000 cycles %d MB: ratio %.2f (goal <= 1.1)\n", r10>>20, r1000>>20, float64(r1000)/float64(r10))

		fmt.Println("reconcile over a fleet (bin/pgtopo reconcile -f DIR, a loop per topology, 2 clusters in 2 sites each, every site refusing connections):")
		for _, n := range []int{10, 100} {
			rss := fleetRSS(b, bin, dir, n)
			goal := map[int]string{100: "goal <= 300 MB"}[n]
			fmt.Printf("  %3d topologies: RSS after 5 cycles of each %4d MB  %s\n", n, rss>>20, goal)
		}
	}
}

// fleetRSS runs pgtopo reconcile over a directory of n topologies against
// sites that refuse connections and reads its resident memory once every
// topology has cycled five times.
func fleetRSS(b testing.TB, bin, dir string, n int) int64 {
	fleet := filepath.Join(dir, fmt.Sprintf("fleet-%d", n))
	if err := os.MkdirAll(fleet, 0o755); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < n; i++ {
		doc := strings.NewReplacer("name: fleet\n", fmt.Sprintf("name: fleet-%03d\n", i), "pg-", fmt.Sprintf("t%03d-", i)).Replace(string(Topology(2, 2, 0)))
		if err := os.WriteFile(filepath.Join(fleet, fmt.Sprintf("t%03d.yaml", i)), []byte(doc), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	sc, pid, stop := startReconcile(b, bin, refusingKubeconfig(b, dir, 2), "-f", fleet, "--interval", "10ms")
	defer stop()
	cycles := map[string]int{}
	done := 0
	for sc.Scan() {
		var rec struct{ Msg, Topology, Error string }
		if json.Unmarshal(sc.Bytes(), &rec) != nil || rec.Msg != "cycle" {
			continue
		}
		if cycles[rec.Topology]++; cycles[rec.Topology] == 5 {
			if done++; done == n {
				return vmRSS(b, pid)
			}
		}
	}
	b.Fatalf("reconcile ended after %d of %d topologies cycled five times", done, n)
	return 0
}

func pgtopoBinary(b testing.TB) string {
	bin, err := filepath.Abs("../bin/pgtopo")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		b.Fatalf("%s missing: run make build", bin)
	}
	return bin
}

// runRSS runs the binary and returns its peak RSS in bytes.
func runRSS(b testing.TB, bin string, args ...string) int64 {
	cmd := exec.Command(bin, args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("%s %v: %v\n%s", bin, args, err, out)
	}
	return cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss << 10
}

// reconcileRSS runs pgtopo reconcile against sites that refuse connections
// (so every cycle loads, validates, observes and plans, fast) and reads its
// resident memory after 10 and after 1000 cycles.
func reconcileRSS(b testing.TB, bin, dir string) (after10, after1000 int64) {
	path := filepath.Join(dir, "reconcile.yaml")
	// One cluster per site: a site's failed reads are throttled by its
	// client's rate limit, which would make cycles slow, not memory grow.
	const sites = 50
	if err := os.WriteFile(path, Topology(50, sites, 0), 0o644); err != nil {
		b.Fatal(err)
	}
	sc, pid, stop := startReconcile(b, bin, refusingKubeconfig(b, dir, sites), "-f", path, "--interval", "1ms")
	defer stop()
	cycles := 0
	for sc.Scan() {
		var rec struct{ Msg string }
		if json.Unmarshal(sc.Bytes(), &rec) != nil || rec.Msg != "cycle" {
			continue
		}
		cycles++
		switch cycles {
		case 10:
			after10 = vmRSS(b, pid)
		case 1000:
			return after10, vmRSS(b, pid)
		}
	}
	b.Fatalf("reconcile ended after %d cycles", cycles)
	return 0, 0
}

// refusingKubeconfig writes a kubeconfig of contexts ctx-0 … ctx-(sites-1),
// each a cluster at an address that refuses connections, and returns it.
func refusingKubeconfig(b testing.TB, dir string, sites int) string {
	kc := filepath.Join(dir, fmt.Sprintf("kubeconfig-%d", sites))
	var cfg strings.Builder
	cfg.WriteString("apiVersion: v1\nkind: Config\nclusters:\n")
	for s := 0; s < sites; s++ {
		fmt.Fprintf(&cfg, "- name: c%d\n  cluster: {server: \"https://127.0.0.1:1\"}\n", s)
	}
	cfg.WriteString("users:\n- name: u\n  user: {token: x}\ncontexts:\n")
	for s := 0; s < sites; s++ {
		fmt.Fprintf(&cfg, "- name: ctx-%d\n  context: {cluster: c%d, user: u}\n", s, s)
	}
	if err := os.WriteFile(kc, []byte(cfg.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	return kc
}

// startReconcile starts pgtopo reconcile with a kubeconfig and returns its
// JSON log lines to scan, its pid, and what stops it.
func startReconcile(b testing.TB, bin, kubeconfig string, args ...string) (*bufio.Scanner, int, func()) {
	cmd := exec.Command(bin, append([]string{"reconcile", "--listen", "127.0.0.1:0", "--log-format", "json"}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	return bufio.NewScanner(stderr), cmd.Process.Pid, func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
}

func vmRSS(b testing.TB, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "VmRSS:")), "%d", &kb)
			return kb << 10
		}
	}
	b.Fatal("no VmRSS")
	return 0
}
