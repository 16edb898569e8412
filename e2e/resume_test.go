package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pgtopo/pgtopo/apply"
	"github.com/pgtopo/pgtopo/flavor/alauda"
	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/snapshot"
)

// journalPhase reads the switchover journal phase on a CR ("" when none).
func (h *harness) journalPhase(site, cluster string) string {
	u, err := h.lab.Dyn[site].Resource(postgresqlGVR).Namespace("db").Get(context.Background(), cluster, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	obj := alauda.Parse(u)
	if obj.Marks.Journal == nil {
		return ""
	}
	return obj.Marks.Journal.Phase
}

// TestKillAndResume kills apply with SIGKILL inside the switchover (after
// the demote patch, right after the gate is journaled, after the promote
// patch, after the fence), re-runs it, and checks that it converges with no acknowledged row
// lost and never two writable clusters.
//
// The kill follows apply's own progress events for the moment
// (--progress-format json, read from its stderr as they are written): a
// phase can last a few milliseconds (the gate is often already passed when
// it is journaled), far less than polling the CRs could catch, while the
// next journal write takes an API round trip.
func TestKillAndResume(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "east", "west")
	east, west := h.topology("orders-east"), h.topology("orders-west")
	h.expect(h.pgtopo("apply", "-f", east), 0, "Apply complete")
	h.createAcked("east", "orders-east")

	cases := []struct {
		after   apply.EventType
		phase   string
		file    string
		primary string
		site    string
		// rerun is the file of the re-run when it is not file: going back
		// to the old primary's file backs the switchover out.
		rerun string
	}{
		{apply.EventDemote, snapshot.PhaseDemoting, west, "orders-west", "west", ""},
		{apply.EventGateSet, snapshot.PhaseGated, east, "orders-east", "east", ""},
		{apply.EventPromote, snapshot.PhasePromoted, west, "orders-west", "west", ""},
		// Fenced (new writes refused) but not yet demoted.
		{apply.EventFence, snapshot.PhaseDemoting, east, "orders-east", "east", ""},
		// Killed after the demote patch, then the old file (a reverted PR):
		// backed out, the old primary primary again.
		{apply.EventDemote, snapshot.PhaseDemoting, west, "orders-east", "east", east},
	}
	for _, tc := range cases {
		w := h.startWriter()
		progress, killed := h.killApply(t, func(ev apply.Event) bool { return ev.Type == tc.after }, "apply", "-f", tc.file)
		if !killed {
			t.Fatalf("apply ended before a %q event:\n%s", tc.after, strings.Join(progress, "\n"))
		}
		a, b := h.journalPhase("east", "orders-east"), h.journalPhase("west", "orders-west")
		if a != tc.phase && b != tc.phase {
			t.Fatalf("killed after %q, but the journal says %q and %q, want %s", tc.after, a, b, tc.phase)
		}
		t.Logf("killed apply after %q, journal at phase %s", tc.after, tc.phase)
		rerun := tc.file
		if tc.rerun != "" {
			rerun = tc.rerun
		}
		r := h.pgtopo("apply", "-f", rerun, "--lock-timeout", "90s", "--progress-format", "json")
		time.Sleep(2 * time.Second)
		w.finish()
		h.expect(r, 0, "Apply complete")
		// A kill between the two journal writes of a phase leaves the ends
		// one phase apart; the re-run resumes at the further one.
		resumed := slices.ContainsFunc(strings.Split(r.stderr, "\n"), func(line string) bool {
			ev, ok := parseEvent(line)
			if tc.rerun != "" {
				return ok && ev.Type == apply.EventResume && ev.Journal == snapshot.PhaseAborting
			}
			return ok && ev.Type == apply.EventResume && (ev.Journal == a || ev.Journal == b)
		})
		if !resumed {
			t.Errorf("the re-run did not resume from the journal at phase %s:\n%s", tc.phase, r.stderr)
		}
		if w.bothSeen.Load() != 0 {
			t.Fatalf("two clusters writable at once in %d samples", w.bothSeen.Load())
		}
		if missing := h.missing(tc.site, tc.primary, w.acked); missing != 0 || len(w.acked) == 0 {
			t.Fatalf("phase %s: %d of %d acknowledged rows missing", tc.phase, missing, len(w.acked))
		}
		h.expect(h.pgtopo("diff", "-f", rerun), 0, "No changes.")
		t.Logf("phase %s: resumed and converged; %d rows acknowledged, none lost", tc.phase, len(w.acked))
	}
}

// killApply runs pgtopo (args, with JSON progress) and SIGKILLs it at the
// first progress event match accepts, reading its stderr as it is written:
// a phase can last milliseconds, far less than polling could catch. It
// returns the progress lines read and whether it killed.
func (h *harness) killApply(t testing.TB, match func(apply.Event) bool, args ...string) ([]string, bool) {
	t.Helper()
	cmd := exec.Command(h.bin, append(args, "--progress-format", "json")...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+lab.Paths{Dir: h.lab.Dir}.Kubeconfig())
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var seen []string
	killed := false
	for lines := bufio.NewScanner(stderr); lines.Scan(); {
		seen = append(seen, lines.Text())
		if ev, ok := parseEvent(lines.Text()); ok && match(ev) {
			_ = cmd.Process.Signal(syscall.SIGKILL)
			killed = true
			break
		}
	}
	err = cmd.Wait()
	if !killed { // say how it ended: its plan or refusal is on stdout
		seen = append(seen, fmt.Sprintf("(exit: %v) stdout:", err), stdout.String())
	}
	return seen, killed
}

// parseEvent reads one JSON progress event.
func parseEvent(line string) (apply.Event, bool) {
	var ev apply.Event
	err := json.Unmarshal([]byte(line), &ev)
	return ev, err == nil && ev.Type != ""
}

// TestConcurrentApplies starts two switchovers at once: one holds the Lease,
// the other waits, re-plans and finds nothing left to do.
func TestConcurrentApplies(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "east", "west")
	east, west := h.topology("orders-east"), h.topology("orders-west")
	h.expect(h.pgtopo("apply", "-f", east), 0, "Apply complete")
	var wg sync.WaitGroup
	runs := make([]run, 2)
	for i := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runs[i] = h.pgtopo("apply", "-f", west, "--lock-timeout", "2m")
		}()
	}
	wg.Wait()
	waited := 0
	for _, r := range runs {
		if r.code != 0 {
			t.Fatalf("exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		if strings.Contains(r.stderr, "is held by") {
			waited++
		}
	}
	if waited != 1 {
		t.Fatalf("%d runs waited for the lock, want exactly 1", waited)
	}
	h.expect(h.pgtopo("diff", "-f", west), 0, "No changes.")
	if ok, _ := h.writable("west", "orders-west"); !ok {
		t.Fatalf("orders-west not primary")
	}
	if ok, _ := h.writable("east", "orders-east"); ok {
		t.Fatalf("orders-east still writable")
	}
	// A holder that keeps the Lease: apply gives up naming it and changes
	// nothing. A run holds the Lease in every site, so a holder in west
	// blocks a run whose file names east as primary, too.
	leases := h.lab.Kube["west"].CoordinationV1().Leases("db")
	l, err := leases.Get(context.Background(), "pgtopo-orders", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	other, secs, now := "ci-runner-42", int32(300), metav1.NewMicroTime(time.Now())
	l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = &other, &secs, &now
	if _, err := leases.Update(context.Background(), l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	r := h.pgtopo("apply", "-f", east, "--lock-timeout", "2s")
	if r.code != 1 || !strings.Contains(r.stderr, "lock db/pgtopo-orders in site west is held by ci-runner-42") {
		t.Fatalf("exit %d, want 1 naming the holder:\n%s", r.code, r.stderr)
	}
	// The Lease it took in east on the way was given back.
	el, err := h.lab.Kube["east"].CoordinationV1().Leases("db").Get(context.Background(), "pgtopo-orders", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if holder := el.Spec.HolderIdentity; holder != nil && *holder != "" {
		t.Fatalf("east's Lease is still held by %s after a failed lock", *holder)
	}
	if ok, _ := h.writable("west", "orders-west"); !ok {
		t.Fatalf("a run without the lock changed the primary")
	}
}
