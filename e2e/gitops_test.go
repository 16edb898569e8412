package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pgtopo/pgtopo/apply"
	"github.com/pgtopo/pgtopo/flavor/alauda"
	"github.com/pgtopo/pgtopo/gitsource/gittest"
	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/labtest"
	"github.com/pgtopo/pgtopo/snapshot"
)

// recorded reads the revision annotation pgtopo wrote on a CR.
func (h *harness) recorded(site, cluster string) string {
	h.t.Helper()
	u, err := h.lab.Dyn[site].Resource(postgresqlGVR).Namespace("db").Get(context.Background(), cluster, metav1.GetOptions{})
	if err != nil {
		h.t.Fatalf("%s/%s: %v", site, cluster, err)
	}
	return u.GetAnnotations()[alauda.AnnotationRevision]
}

func (h *harness) expectRecorded(rev string) {
	h.t.Helper()
	for site, cluster := range map[string]string{"east": "orders-east", "west": "orders-west"} {
		if got := h.recorded(site, cluster); got != rev {
			h.t.Fatalf("%s records revision %q, want %s", cluster, got, rev)
		}
	}
}

func (h *harness) expectPrimary(site, cluster string) {
	h.t.Helper()
	labtest.Eventually(h.t, 30*time.Second, cluster+" writable", func() error {
		ok, err := h.writable(site, cluster)
		if err != nil || !ok {
			return fmt.Errorf("not writable (%v)", err)
		}
		return nil
	})
}

// logRecord is one JSON log line of pgtopo reconcile.
type logRecord struct {
	Time     time.Time `json:"time"`
	Level    string    `json:"level"`
	Msg      string    `json:"msg"`
	Topology string    `json:"topology"`
	Result   string    `json:"result"`
	Revision string    `json:"revision"`
	Duration string    `json:"duration"`
	Address  string    `json:"address"`
	Step     string    `json:"step"`
	Event    string    `json:"event"`
	Action   string    `json:"action"`
	Refusal  string    `json:"refusal"`
	Error    string    `json:"error"`
}

// loop is a running pgtopo reconcile whose log lines are parsed as they
// come.
type loop struct {
	cmd     *exec.Cmd
	mu      sync.Mutex
	records []logRecord
	raw     []string
	done    chan error
}

func (h *harness) startLoop(args ...string) *loop {
	h.t.Helper()
	return h.startLoopEnv([]string{"KUBECONFIG=" + lab.Paths{Dir: h.lab.Dir}.Kubeconfig()}, args...)
}

// startLoopEnv starts the loop with env added to the process's.
func (h *harness) startLoopEnv(env []string, args ...string) *loop {
	h.t.Helper()
	return h.startLoopUnder(nil, env, args...)
}

// startLoopOnHost starts the loop in a UTS namespace of its own whose
// hostname is host, as a replica in another pod: its Leases are then
// another host's, which a peer waits out rather than judging it gone.
func (h *harness) startLoopOnHost(host string, args ...string) *loop {
	h.t.Helper()
	if _, err := exec.LookPath("unshare"); err != nil {
		h.t.Fatal("unshare is not installed: apt-get install util-linux")
	}
	env := []string{"KUBECONFIG=" + lab.Paths{Dir: h.lab.Dir}.Kubeconfig()}
	return h.startLoopUnder([]string{"unshare", "--uts", "--", "sh", "-c", `hostname "$0" && exec "$@"`, host}, env, args...)
}

// startLoopUnder starts pgtopo reconcile as the last arguments of wrapper
// (none: directly).
func (h *harness) startLoopUnder(wrapper, env []string, args ...string) *loop {
	h.t.Helper()
	argv := append(append(slices.Clone(wrapper), h.bin, "reconcile", "--log-format", "json", "--log-level", "debug", "--listen", "127.0.0.1:0"), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		h.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	l := &loop{cmd: cmd, done: make(chan error, 1)}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var r logRecord
			line := sc.Text()
			l.mu.Lock()
			l.raw = append(l.raw, line)
			if json.Unmarshal([]byte(line), &r) == nil {
				l.records = append(l.records, r)
			}
			l.mu.Unlock()
		}
	}()
	go func() {
		<-scanned
		l.done <- cmd.Wait()
	}()
	h.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		h.mu.Lock()
		h.output = append(h.output, strings.Join(l.raw, "\n"))
		h.mu.Unlock()
		h.keepLog(fmt.Sprintf("reconcile-%d.log", cmd.Process.Pid), l.raw)
	})
	return l
}

// keepLog writes a process's log lines into the lab's directory, which a
// failed test keeps, or into $PGTOPO_E2E_LOGS when set (to study a
// passing run).
func (h *harness) keepLog(name string, lines []string) {
	dir := os.Getenv("PGTOPO_E2E_LOGS")
	if dir == "" {
		if !h.t.Failed() {
			return
		}
		dir = h.lab.Dir
	}
	if err := os.WriteFile(filepath.Join(dir, name), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		h.t.Logf("keeping %s: %v", name, err)
	}
}

// story is what the loop said at info level and above since from, one
// line per record, the last max of them: enough to tell, from a failed
// test's message alone, what each replica was doing.
func (l *loop) story(from time.Time, max int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var lines []string
	for _, r := range l.records {
		if r.Time.Before(from) || r.Level == "DEBUG" {
			continue
		}
		line := r.Time.Format("15:04:05.000") + " " + r.Topology + " " + r.Msg
		for _, kv := range [][2]string{{"event", r.Event}, {"step", r.Step}, {"result", r.Result}, {"refusal", r.Refusal}, {"error", r.Error}, {"duration", r.Duration}} {
			if kv[1] != "" {
				line += " " + kv[0] + "=" + kv[1]
			}
		}
		lines = append(lines, line)
	}
	if len(lines) > max {
		lines = append([]string{fmt.Sprintf("(%d lines before)", len(lines)-max)}, lines[len(lines)-max:]...)
	}
	return strings.Join(lines, "\n")
}

// waitFor returns the first record after index from that matches.
func (l *loop) waitFor(t testing.TB, timeout time.Duration, what string, from int, match func(logRecord) bool) (logRecord, int) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		l.mu.Lock()
		for i := from; i < len(l.records); i++ {
			if match(l.records[i]) {
				r := l.records[i]
				l.mu.Unlock()
				return r, i + 1
			}
		}
		l.mu.Unlock()
		time.Sleep(50 * time.Millisecond)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	t.Fatalf("reconcile: no %s within %v; log:\n%s", what, timeout, strings.Join(l.raw, "\n"))
	return logRecord{}, 0
}

func (l *loop) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.records)
}

func httpGet(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestGitOpsEndToEnd: the topology lives in a git repository. A commit is
// applied from the repository and recorded; a pull request is described in
// words; the loop picks up a merged commit changing primary: within one
// interval and switches over; SIGTERM in the middle of a switchover lets
// it finish and exits 0; an older commit is refused as a rollback.
func TestGitOpsEndToEnd(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "east", "west")
	topoEast, err := os.ReadFile(h.topology("orders-east"))
	if err != nil {
		t.Fatal(err)
	}
	topoWest, err := os.ReadFile(h.topology("orders-west"))
	if err != nil {
		t.Fatal(err)
	}
	repo := gittest.New(t)
	c1 := repo.Commit("orders: east is primary", map[string]string{"deploy/topology.yaml": string(topoEast)})
	bare := repo.Bare()
	url := "file://" + bare

	// 1. A commit applied from the repository is recorded on every CR.
	h.expect(h.pgtopo("apply", "--repo", url, "--ref", "main", "--path", "deploy/topology.yaml"), 0,
		"revision "+c1, "Apply complete")
	h.expectRecorded(c1)
	st := h.pgtopo("status", "--repo", repo.Dir, "--path", "deploy/topology.yaml")
	h.expect(st, 0, c1[:12])

	// 2. Pull-request mode says in words what merging does, then the live plan.
	repo.Git("checkout", "-q", "-b", "switch-west")
	c2 := repo.Commit("orders: switch to west", map[string]string{"deploy/topology.yaml": string(topoWest)})
	pr := h.pgtopo("diff", "--repo", repo.Dir, "--path", "deploy/topology.yaml", "--base", "main", "--head", "switch-west")
	h.expect(pr, 4, "What merging does:", "switchover: primary orders-east → orders-west (site east → west)",
		"Live plan for "+c2[:12], "Plan: 1 switchover")
	md := h.pgtopo("diff", "--repo", repo.Dir, "--path", "deploy/topology.yaml", "--base", "main", "--head", "switch-west", "-o", "markdown")
	h.expect(md, 4, "## pgtopo: merging "+c2[:12]+": switchover", "| orders-west | west | db | standby | **primary** |")

	// 3. The loop, running on main, picks up the merge within one interval.
	const interval = 3 * time.Second
	l := h.startLoop("--repo", url, "--ref", "main", "--path", "deploy/topology.yaml", "--interval", interval.String())
	serving, next := l.waitFor(t, 20*time.Second, "serving line", 0, func(r logRecord) bool { return r.Msg == "serving" })
	_, next = l.waitFor(t, 20*time.Second, "first in-sync cycle", next, func(r logRecord) bool {
		return r.Msg == "cycle" && r.Result == "in-sync" && r.Revision == c1[:12]
	})
	repo.Git("checkout", "-q", "main")
	repo.Git("merge", "-q", "--ff-only", "switch-west")
	repo.Git("push", "-q", "origin", "main")
	pushed := time.Now()
	applied, next := l.waitFor(t, 90*time.Second, "applied cycle for the merge", next, func(r logRecord) bool {
		return r.Msg == "cycle" && r.Revision == c2[:12]
	})
	if applied.Result != "applied" {
		t.Fatalf("cycle for %s: result %s (%s%s)", c2[:12], applied.Result, applied.Refusal, applied.Error)
	}
	took, err := time.ParseDuration(applied.Duration)
	if err != nil {
		t.Fatal(err)
	}
	if started := applied.Time.Add(-took); started.Sub(pushed) > interval+time.Second {
		t.Fatalf("the cycle that applied %s started %v after the push; the interval is %v", c2[:12], started.Sub(pushed), interval)
	}
	h.expectPrimary("west", "orders-west")
	h.expectRecorded(c2)

	// /healthz and /metrics tell the same story.
	if code, body := httpGet(t, "http://"+serving.Address+"/healthz"); code != 200 || !strings.HasPrefix(body, "ok") {
		t.Fatalf("/healthz: %d %s", code, body)
	}
	_, metrics := httpGet(t, "http://"+serving.Address+"/metrics")
	for _, want := range []string{
		fmt.Sprintf("pgtopo_last_applied_revision_info{revision=%q,topology=\"orders\"} 1", c2),
		`pgtopo_steps_applied_total{action="switchover",topology="orders"} 1`,
		`pgtopo_cycles_total{result="applied",topology="orders"} 1`,
		`pgtopo_in_sync{topology="orders"} 1`,
		`pgtopo_last_success_timestamp_seconds{topology="orders"} 1.`,
		`pgtopo_refusals_total{topology="orders"} 0`,
	} {
		if !strings.Contains(metrics, want) {
			t.Fatalf("/metrics lacks %q:\n%s", want, metrics)
		}
	}

	// 4. SIGTERM while a switchover runs: the fenced stretch runs to the
	// promotion (writes come back), the loop stops waiting and exits 0, and
	// the journal, if any is left, is at a phase the next run resumes from.
	c3 := repo.Commit("orders: back to east", map[string]string{"deploy/topology.yaml": string(topoEast)})
	repo.Git("push", "-q", "origin", "main")
	// Signalled once the switchover is journaled: before that a drain
	// stops it unbegun (its wait for a ready target ends at once), which
	// leaves west primary, rightly, and is not what this part tests.
	_, _ = l.waitFor(t, 30*time.Second, "switchover journaled", next, func(r logRecord) bool {
		return r.Event == string(apply.EventJournal)
	})
	signalled := l.count()
	if err := l.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-l.done:
		if err != nil {
			t.Fatalf("reconcile after SIGTERM: %v\n%s", err, strings.Join(l.raw, "\n"))
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("reconcile did not exit within 90s of SIGTERM:\n%s", strings.Join(l.raw, "\n"))
	}
	stopped, _ := l.waitFor(t, time.Second, "stopped cycle", signalled, func(r logRecord) bool { return r.Msg == "cycle" })
	if stopped.Result != "stopped" {
		t.Fatalf("cycle after SIGTERM: %s, want stopped", stopped.Result)
	}
	h.expectPrimary("east", "orders-east")
	for site, cluster := range map[string]string{"east": "orders-east", "west": "orders-west"} {
		if p := h.journalPhase(site, cluster); p != "" && p != snapshot.PhasePromoted {
			t.Fatalf("%s has a switchover journal at phase %s after a graceful stop, want none or %s", cluster, p, snapshot.PhasePromoted)
		}
	}
	// What was left (the old primary following, record) the next run does.
	h.expect(h.pgtopo("apply", "--repo", url, "--path", "deploy/topology.yaml"), 0, "Apply complete")
	h.expectRecorded(c3)
	for site, cluster := range map[string]string{"east": "orders-east", "west": "orders-west"} {
		if p := h.journalPhase(site, cluster); p != "" {
			t.Fatalf("%s still has a switchover journal (phase %s) after the next run", cluster, p)
		}
	}

	// 5. An older commit is a rollback: refused, nothing changes, unless allowed.
	rb := h.pgtopo("apply", "--repo", url, "--ref", c1, "--path", "deploy/topology.yaml")
	h.expect(rb, 1, "applying it rolls back", "--allow-rollback")
	h.expectRecorded(c3)
	h.expect(h.pgtopo("apply", "--repo", url, "--ref", c1, "--path", "deploy/topology.yaml", "--allow-rollback"), 0,
		"(allowed by --allow-rollback)", "Apply complete")
	h.expectRecorded(c1)
	h.expectPrimary("east", "orders-east")

	h.noSecretsInOutput()
}
