package e2e

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgtopo/pgtopo/apply"
	"github.com/pgtopo/pgtopo/lab/labtest"
)

// BenchmarkEvacuate moves every primary of many topologies from east to
// west in one apply of a directory, against one topology's switchover alone
// in the same run, each with a writer: wall time and each database's
// write window (goals: wall <= 2x the one alone, each window <= 1.5x the
// one alone's, 0 acknowledged rows lost). PGTOPO_BENCH_TOPOLOGIES sets how
// many (6: on a 2-core machine the lab's own idle load of 20 topologies,
// 40 PostgreSQL servers and their Patronis, saturates it);
// PGTOPO_BENCH_PER_SITE the switchovers at once per site (default: all).
func BenchmarkEvacuate(b *testing.B) {
	n := envInt(b, "PGTOPO_BENCH_TOPOLOGIES", 6)
	perSite := envInt(b, "PGTOPO_BENCH_PER_SITE", n)
	benchIdle(b)
	h := newHarness(b, "east", "west")
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("t%02d", i)
	}
	dirs := map[string]string{"east": filepath.Join(h.dir, "east"), "west": filepath.Join(h.dir, "west")}
	for _, name := range names {
		h.fleetFile(dirs["east"], name, "east")
		h.fleetFile(dirs["west"], name, "west")
	}
	began := time.Now()
	if r := h.pgtopo("apply", "-f", dirs["east"], "--parallel", "8"); r.code != 0 {
		b.Fatalf("bring-up of %d topologies: %s\n%s", n, r.stdout, r.stderr)
	}
	b.Logf("%d topologies brought up in %.0fs", n, time.Since(began).Seconds())
	for _, name := range names {
		h.createAcked("east", name+"-east")
	}
	labSettled(b, "PGTOPO_BENCH_TOPOLOGIES")

	b.ResetTimer()
	var lone, fleet []float64       // wall seconds
	var loneWin, fleetWin []float64 // writes refused, seconds
	var lost int64
	from, to := "east", "west"
	for round := 0; round < b.N; round++ {
		writers := map[string]*writer{}
		for _, name := range names {
			writers[name] = h.startWriterWith(name, false)
		}
		time.Sleep(2 * time.Second)
		// One alone: the first topology.
		t0 := time.Now()
		r := h.pgtopo("apply", "-f", filepath.Join(dirs[to], names[0]+".yaml"), "--progress-format", "json")
		if r.code != 0 {
			b.Fatalf("apply %s alone: %s\n%s", names[0], r.stdout, r.stderr)
		}
		lone = append(lone, time.Since(t0).Seconds())
		loneWin = append(loneWin, refusedIn(r.stderr, "")...)
		// The rest, side by side.
		t0 = time.Now()
		r = h.pgtopo("apply", "-f", dirs[to], "--parallel", strconv.Itoa(n), "--max-switchovers-per-site", strconv.Itoa(perSite), "--progress-format", "json")
		if r.code != 0 {
			b.Fatalf("evacuate %s: %s\n%s", from, r.stdout, r.stderr)
		}
		fleet = append(fleet, time.Since(t0).Seconds())
		wins := refusedIn(r.stderr, ": ")
		if len(wins) != n-1 {
			b.Fatalf("%d switchovers reported done, want %d:\n%s", len(wins), n-1, r.stderr)
		}
		fleetWin = append(fleetWin, wins...)
		for _, name := range names {
			writers[name].finish()
			lost += h.missing(to, name+"-"+to, writers[name].acked)
		}
		b.Logf("round %d: %s → %s: one alone %.1fs (window %.2fs), %d side by side %.1fs", round+1, from, to, lone[len(lone)-1], loneWin[len(loneWin)-1], n-1, fleet[len(fleet)-1])
		from, to = to, from
	}
	b.StopTimer()
	wall, one := median(fleet), median(lone)
	winMed, winP95, oneWin := median(fleetWin), percentile(fleetWin, 95), median(loneWin)
	fmt.Printf("evacuate a site: %d topologies, at most %d switchovers at once per site, %d round(s) (each a whole site moved)\n", n, perSite, b.N)
	fmt.Printf("  wall: %d side by side %.1fs (median; spread %.1f-%.1f) vs one alone %.1fs: ratio %.2f (goal <= 2)\n", n-1, wall, slices.Min(fleet), slices.Max(fleet), one, wall/one)
	fmt.Printf("  write window: side by side median %.2fs, p95 %.2fs vs one alone %.2fs: ratio %.2f (goal <= 1.5); %d acknowledged rows lost (goal 0)\n", winMed, winP95, oneWin, winP95/oneWin, lost)
	b.ReportMetric(wall/one, "wall/one-alone")
	b.ReportMetric(winP95/oneWin, "p95-window/one-alone")
}

// refusedIn reads the writes-refused seconds of each finished switchover
// in apply's JSON progress; with several files each line is led by its
// file and sep.
func refusedIn(stderr, sep string) []float64 {
	var out []float64
	for _, line := range strings.Split(stderr, "\n") {
		if sep != "" {
			_, rest, ok := strings.Cut(line, sep+"{")
			if !ok {
				continue
			}
			line = "{" + rest
		}
		var ev apply.Event
		if json.Unmarshal([]byte(line), &ev) == nil && ev.Type == apply.EventSwitched {
			out = append(out, ev.WritesRefused)
		}
	}
	return out
}

func median(xs []float64) float64 { return percentile(xs, 50) }

// percentile is the nearest-rank percentile of xs.
func percentile(xs []float64, p int) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	i := (p*len(s) + 99) / 100
	return s[max(i-1, 0)]
}

func envInt(b *testing.B, key string, def int) int {
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 2 {
		b.Fatalf("%s=%q: want a number of at least 2", key, v)
	}
	return n
}

// benchIdle checks the bench's assumption that nothing else loads the
// machine before its lab starts: the one-minute load average falls below
// half the cores within three minutes, or the bench says so and stops
// rather than print ratios measured on a busy machine.
func benchIdle(b *testing.B) {
	limit := float64(runtime.NumCPU()) / 2
	var load float64
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(5 * time.Second) {
		data, err := os.ReadFile("/proc/loadavg")
		if err != nil {
			b.Logf("no /proc/loadavg (%v): idleness not checked", err)
			return
		}
		load, _ = strconv.ParseFloat(strings.Fields(string(data))[0], 64)
		if load < limit {
			b.Logf("machine idle enough: load average %.2f < %.1f", load, limit)
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("machine busy before the lab started: one-minute load average %.2f, not below %.1f (half the cores) after three minutes; stop what else runs and bench again", load, limit)
		}
	}
}

// labSettled checks that the lab, idle, leaves the machine room to
// measure: the CPU busy over five seconds (of all cores) comes under 60%
// within two minutes of bring-up (replicas being built, checkpoints after
// it), or the bench says the lab is too big for the machine and stops.
// sizeVar, when set, names the variable that makes the lab smaller.
func labSettled(b *testing.B, sizeVar string) {
	var seen []string
	for deadline := time.Now().Add(2 * time.Minute); ; {
		busy := cpuBusy(b, 5*time.Second)
		if busy <= 0.6 {
			b.Logf("the idle lab keeps the machine %.0f%% busy (after %s)", busy*100, cmp.Or(strings.Join(seen, ", "), "no wait"))
			return
		}
		seen = append(seen, fmt.Sprintf("%.0f%%", busy*100))
		if time.Now().After(deadline) {
			smaller := ""
			if sizeVar != "" {
				smaller = ", or set " + sizeVar + " lower"
			}
			b.Fatalf("the idle lab keeps the machine over 60%% busy for two minutes (%s): its servers and Patronis, or something else running, leave no room to measure; stop what else runs%s", strings.Join(seen, ", "), smaller)
		}
	}
}

// cpuBusy is the share of the machine's CPU time not idle over d.
func cpuBusy(b *testing.B, d time.Duration) float64 {
	before := readMachineTime(b)
	time.Sleep(d)
	return readMachineTime(b).since(before).percent() / 100
}

// reaperInEffect checks the bench's assumption that every PostgreSQL
// postmaster of the lab is reaped at once when it stops: its parent is the
// lab's subreaper (pglab reap), not the machine's init, which reaps every
// two seconds or so and would add that to every demotion measured.
func reaperInEffect(b *testing.B, h *harness) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		b.Fatalf("reaper not checked: %v", err)
	}
	postmasters, reaped := 0, 0
	var stray []string
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		// A postmaster keeps the command line it was started with (its
		// data directory in the lab); its children retitle theirs.
		cmd := procCmdline(pid)
		if first, _, _ := strings.Cut(cmd, " "); filepath.Base(first) != "postgres" || !strings.Contains(cmd, h.lab.Dir) {
			continue
		}
		parent := procPPid(pid)
		postmasters++
		if strings.Contains(procCmdline(parent), " reap ") {
			reaped++
		} else {
			stray = append(stray, fmt.Sprintf("%d (parent %d: %q)", pid, parent, procCmdline(parent)))
		}
	}
	if postmasters == 0 || len(stray) > 0 {
		b.Fatalf("the lab's reaper is not in effect: %d postmasters, %d under pglab reap; not: %s", postmasters, reaped, strings.Join(stray, ", "))
	}
	b.Logf("reaper in effect: %d postmasters, all under pglab reap", postmasters)
}

// everyMemberStreams checks that each named cluster has at least that
// many replication connections streaming (its in-site replicas and the
// standby clusters that follow it).
func everyMemberStreams(b *testing.B, h *harness, want map[string]int) {
	for cluster, n := range want {
		site := strings.TrimPrefix(cluster[strings.LastIndex(cluster, "-"):], "-")
		var got int
		labtest.Eventually(b, time.Minute, fmt.Sprintf("%s with %d streaming replication connections", cluster, n), func() error {
			c, err := h.conn(site, cluster)
			if err != nil {
				return err
			}
			defer c.Close(context.Background())
			if err := c.QueryRow(context.Background(), "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").Scan(&got); err != nil {
				return err
			}
			if got < n {
				return fmt.Errorf("%d streaming", got)
			}
			return nil
		})
	}
	b.Logf("every member streams: %v", want)
}

func procCmdline(pid int) string {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.TrimSpace(strings.ReplaceAll(string(data), "\x00", " "))
}

func procPPid(pid int) int {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "PPid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}
