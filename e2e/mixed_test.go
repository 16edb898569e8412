package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pgtopo/pgtopo/apply"
	"github.com/pgtopo/pgtopo/flavor/patroni"
	"github.com/pgtopo/pgtopo/gitsource/gittest"
	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/labtest"
	"github.com/pgtopo/pgtopo/snapshot"
)

// mixed is a lab with a Kubernetes site (east) and a Patroni site on
// "VMs" (dc1), and pgtopo run against it with the Patroni credentials in a
// file, as a user would.
type mixed struct {
	*harness
	creds  map[string]string
	credsF string
	dc1    lab.PatroniCluster
}

func newMixed(t *testing.T) *mixed {
	root, err := labtest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(root, "bin", "pgtopo")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s missing: run make build", bin)
	}
	l := labtest.StartConfig(t, lab.Config{Sites: []string{"east"}, PatroniSites: []string{"dc1"}})
	m := &mixed{harness: &harness{t: t, lab: l, bin: bin, dir: t.TempDir()}}
	if m.creds, err = lab.PatroniCredentials(l.Dir); err != nil {
		t.Fatal(err)
	}
	m.credsF = lab.Paths{Dir: l.Dir}.PatroniEnvFile()
	site, _ := l.Site("dc1")
	if m.dc1, err = l.PatroniCluster(site); err != nil {
		t.Fatal(err)
	}
	return m
}

// topology writes examples/topologies/lab-mixed.yaml for this lab (whose
// addresses follow its slot) with the given primary.
func (m *mixed) topology(primary string) string {
	src, err := os.ReadFile("../examples/topologies/lab-mixed.yaml")
	if err != nil {
		m.t.Fatal(err)
	}
	data := strings.ReplaceAll(string(src), "127.100.", fmt.Sprintf("127.%d.", 100+m.lab.Slot))
	data = strings.Replace(data, "primary: orders-dc1", "primary: "+primary, 1)
	path := filepath.Join(m.dir, primary+".yaml")
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		m.t.Fatal(err)
	}
	return path
}

func (m *mixed) run(args ...string) run {
	m.t.Helper()
	return m.pgtopo(append(args, "--patroni-credentials", m.credsF)...)
}

// connect opens a session to dc1's endpoint or east's Service.
func (m *mixed) connect(cluster string) (*pgx.Conn, error) {
	host, port := "", 0
	if cluster == "orders-dc1" {
		h, p, _ := strings.Cut(m.dc1.Endpoint, ":")
		host = h
		if _, err := fmt.Sscan(p, &port); err != nil {
			return nil, err
		}
	} else {
		// Not labtest's Endpoint: the writer asks before east exists, and
		// that is no failure.
		svc, err := m.lab.Kube["east"].CoreV1().Services("db").Get(context.Background(), cluster, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		if len(svc.Spec.Ports) == 0 || svc.Spec.Ports[0].NodePort == 0 {
			return nil, fmt.Errorf("%s: no node port yet", cluster)
		}
		site, _ := m.lab.Site("east")
		host, port = m.lab.Addrs(site).NodeIP().String(), int(svc.Spec.Ports[0].NodePort)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return pgx.Connect(ctx, fmt.Sprintf("postgres://%s:%s@%s:%d/postgres?sslmode=require&connect_timeout=3",
		m.creds[lab.EnvPGUser], m.creds[lab.EnvPGPassword], host, port))
}

func (m *mixed) writable(cluster string) bool {
	c, err := m.connect(cluster)
	if err != nil {
		return false
	}
	defer c.Close(context.Background())
	var rec bool
	return c.QueryRow(context.Background(), "SELECT pg_is_in_recovery()").Scan(&rec) == nil && !rec
}

func (m *mixed) query(cluster, sql string, dest ...any) {
	m.t.Helper()
	c, err := m.connect(cluster)
	if err != nil {
		m.t.Fatal(err)
	}
	defer c.Close(context.Background())
	if err := c.QueryRow(context.Background(), sql).Scan(dest...); err != nil {
		m.t.Fatalf("%s: %s: %v", cluster, sql, err)
	}
}

// mixedWriter commits rows through whichever cluster is writable and
// samples both for being writable at once.
type mixedWriter struct {
	mu       sync.Mutex
	acked    []int64
	both     atomic.Int64
	samples  atomic.Int64
	stop     chan struct{}
	done     sync.WaitGroup
	clusters []string
}

func (m *mixed) startWriter() *mixedWriter {
	w := &mixedWriter{stop: make(chan struct{}), clusters: []string{"orders-dc1", "orders-east"}}
	w.done.Add(2)
	go func() {
		defer w.done.Done()
		var c *pgx.Conn
		for {
			select {
			case <-w.stop:
				if c != nil {
					c.Close(context.Background())
				}
				return
			default:
			}
			if c == nil {
				for _, name := range w.clusters {
					if m.writable(name) {
						c, _ = m.connect(name)
						break
					}
				}
				if c == nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
			}
			id := m.nextID.Add(1)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := c.Exec(ctx, "INSERT INTO acked (id) VALUES ($1)", id)
			cancel()
			if err != nil {
				c.Close(context.Background())
				c = nil
				continue
			}
			w.mu.Lock()
			w.acked = append(w.acked, id)
			w.mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	go func() {
		defer w.done.Done()
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			w.samples.Add(1)
			if m.writable("orders-dc1") && m.writable("orders-east") {
				w.both.Add(1)
			}
		}
	}()
	return w
}

func (w *mixedWriter) finish() []int64 {
	close(w.stop)
	w.done.Wait()
	return w.acked
}

// missing counts acknowledged ids absent on a cluster.
func (m *mixed) missing(cluster string, acked []int64) int64 {
	m.t.Helper()
	c, err := m.connect(cluster)
	if err != nil {
		m.t.Fatal(err)
	}
	defer c.Close(context.Background())
	var n int64
	if err := c.QueryRow(context.Background(), "SELECT count(*) FROM unnest($1::bigint[]) AS a(id) WHERE NOT EXISTS (SELECT 1 FROM acked WHERE acked.id = a.id)", acked).Scan(&n); err != nil {
		m.t.Fatal(err)
	}
	return n
}

// progress reads apply's JSON-lines progress from stderr.
func progress(t *testing.T, stderr string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(stderr))
	for sc.Scan() {
		var e map[string]any
		if json.Unmarshal(sc.Bytes(), &e) == nil && e["action"] != nil {
			out = append(out, e)
		}
	}
	if len(out) == 0 {
		t.Fatalf("no progress events in:\n%s", stderr)
	}
	return out
}

// TestMixedPatroniAndKubernetes is the move of a database from Patroni on
// VMs into Kubernetes and back, with a writer running: an operator standby
// of the Patroni primary brought up through a slot made before its base
// backup, a switchover into Kubernetes that loses no acknowledged row and
// never has two writable clusters, the Patroni cluster streaming from
// Kubernetes, and the way back.
func TestMixedPatroniAndKubernetes(t *testing.T) {
	t.Parallel()
	m := newMixed(t)
	onDC1, onEast := m.topology("orders-dc1"), m.topology("orders-east")

	c, err := m.connect("orders-dc1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(context.Background(), "CREATE TABLE acked (id bigint PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	c.Close(context.Background())
	w := m.startWriter()

	// Bring-up: the slot exists on dc1 before east's base backup starts.
	r := m.run("apply", "-f", onDC1, "--progress-format", "json")
	m.expect(r, 0, "Apply complete")
	slotDone, standbyWrite := -1, -1
	for i, e := range progress(t, r.stderr) {
		switch {
		case e["action"] == "ensure-slot" && strings.Contains(fmt.Sprint(e["message"]), "xdc_orders_east") && e["event"] == "reached":
			slotDone = i
		case e["action"] == "create-standby" && e["event"] == "write" && standbyWrite < 0:
			standbyWrite = i
		}
	}
	if slotDone < 0 || standbyWrite < 0 || slotDone > standbyWrite {
		t.Fatalf("slot xdc_orders_east done at event %d, east's CR written at event %d: the slot must come first\n%s", slotDone, standbyWrite, r.stderr)
	}
	var active bool
	m.query("orders-dc1", "SELECT active FROM pg_replication_slots WHERE slot_name = 'xdc_orders_east'", &active)
	if !active {
		t.Fatal("east does not stream through slot xdc_orders_east on dc1")
	}
	var dcSys, eastSys string
	m.query("orders-dc1", "SELECT system_identifier::text FROM pg_control_system()", &dcSys)
	m.query("orders-east", "SELECT system_identifier::text FROM pg_control_system()", &eastSys)
	if dcSys != eastSys {
		t.Fatalf("system identifiers differ: dc1 %s, east %s", dcSys, eastSys)
	}
	m.expect(m.run("diff", "-f", onDC1), 0)

	// The PR: out of Patroni into Kubernetes, in words, then merged and
	// applied by the reconcile loop on main.
	repo := gittest.New(t)
	read := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	repo.Commit("orders on VMs", map[string]string{"topology.yaml": read(onDC1)})
	repo.Git("checkout", "-q", "-b", "into-kubernetes")
	head := repo.Commit("orders: move the primary into Kubernetes", map[string]string{"topology.yaml": read(onEast)})
	r = m.run("diff", "--repo", repo.Dir, "--base", "main")
	m.expect(r, 4, "switchover: primary orders-dc1 → orders-east: moves primary from dc1 (Patroni) to east (Kubernetes)",
		"Live plan for "+head[:12], "orders-dc1: standby_cluster.host:port")
	m.expect(m.run("diff", "--repo", repo.Dir, "--base", "main", "-o", "markdown"), 4, "moves primary from dc1 (Patroni) to east (Kubernetes)")
	m.expect(m.run("diff", "-f", onEast, "-o", "json"), 4, "switchover")
	l := m.startLoop("--repo", repo.Dir, "--ref", "main", "--interval", "1s", "--patroni-credentials", m.credsF)
	_, next := l.waitFor(t, 30*time.Second, "in-sync cycle on main", 0, func(r logRecord) bool { return r.Msg == "cycle" && r.Result == "in-sync" })
	repo.Git("checkout", "-q", "main")
	repo.Git("merge", "-q", "--ff-only", "into-kubernetes")
	applied, _ := l.waitFor(t, 90*time.Second, "the merge applied", next, func(r logRecord) bool { return r.Msg == "cycle" && r.Revision == head[:12] })
	if applied.Result != "applied" {
		t.Fatalf("cycle for %s: %s (%s%s)", head[:12], applied.Result, applied.Refusal, applied.Error)
	}
	_ = l.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-l.done:
	case <-time.After(60 * time.Second):
		t.Fatal("reconcile did not stop within 60s of SIGTERM")
	}
	m.mu.Lock()
	m.output = append(m.output, strings.Join(l.raw, "\n"))
	m.mu.Unlock()
	labtest.Eventually(t, 60*time.Second, "dc1 streaming from east", func() error {
		var status string
		c, err := m.connect("orders-dc1")
		if err != nil {
			return err
		}
		defer c.Close(context.Background())
		if err := c.QueryRow(context.Background(), "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'none')").Scan(&status); err != nil {
			return err
		}
		if status != "streaming" {
			return fmt.Errorf("dc1's wal receiver: %s", status)
		}
		return nil
	})
	m.expect(m.run("status", "-f", onEast), 0, "orders-dc1", "standby", "orders-east", "primary")
	m.renderMatchesLiveStandby(onEast, onDC1)
	// No clone of a standby in a Patroni site: said plainly, with what to
	// do instead, before anything is touched.
	r = m.run("drill", "failover", "--isolated", "-f", onEast, "--from", "orders-dc1")
	if r.code != 1 || !strings.Contains(r.stderr, "orders-dc1 is in Patroni site dc1, where pgtopo cannot create a clone") ||
		!strings.Contains(r.stderr, "pgtopo drill switchover --to orders-dc1") {
		t.Fatalf("an isolated drill of a Patroni standby: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}

	// And back.
	m.expect(m.run("apply", "-f", onDC1), 0, "Apply complete", "switchover orders-east → orders-dc1")
	time.Sleep(time.Second) // a few more rows on dc1
	acked := w.finish()
	if len(acked) < 100 {
		t.Fatalf("writer acknowledged only %d rows", len(acked))
	}
	if n := m.missing("orders-dc1", acked); n != 0 {
		t.Fatalf("%d of %d acknowledged rows missing on orders-dc1", n, len(acked))
	}
	if b := w.both.Load(); b != 0 {
		t.Fatalf("both clusters writable in %d of %d samples", b, w.samples.Load())
	}
	t.Logf("%d rows acknowledged across two switchovers, none lost; never two writable in %d samples", len(acked), w.samples.Load())

	// A drill on the mixed topology: into Kubernetes and back to the VMs,
	// its heartbeat through whichever takes writes; kept in east's site.
	r = m.run("drill", "switchover", "-f", onDC1, "--hold", "0s", "-o", "json")
	if r.code != 0 {
		t.Fatalf("drill on a mixed topology: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	var rep struct {
		Result  string
		Missing int
		Moves   []struct{ From, To string }
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Result != "passed" || rep.Missing != 0 || len(rep.Moves) != 2 || rep.Moves[0].To != "orders-east" || rep.Moves[1].To != "orders-dc1" {
		t.Fatalf("drill report: %s", r.stdout)
	}
	m.expect(m.run("status", "-f", onDC1), 0, "last drill: switchover passed: orders-dc1 → orders-east gap")

	m.killAndResume(onDC1, onEast)
	m.patroniSiteReturns(onEast)
	m.noPatroniSecrets()
}

// patroniSiteReturns loses dc1 (Patroni, the primary), fails over into
// Kubernetes on the flag's consent and brings dc1's site back, where its
// Patroni promotes it on a timeline of its own. pgtopo fences it, reports
// what it wrote after the fork and holds it fenced with the way back, since
// it does not rebuild data on machines it does not manage; rebuilt by hand
// that way, dc1 streams from east and status exits 0.
func (m *mixed) patroniSiteReturns(onEast string) {
	t := m.t
	ctx := context.Background()
	w := m.startWriter()
	time.Sleep(time.Second)
	if err := lab.Fail(m.lab.Dir, "dc1"); err != nil {
		t.Fatal(err)
	}
	acked := w.finish()
	m.expect(m.run("apply", "-f", onEast, "--accept-data-loss", "orders-dc1"), 0, "Apply complete", "failover")
	if n := m.missing("orders-east", acked); n > 0 {
		t.Logf("%d of %d rows acknowledged on dc1 before its loss are missing on east (the loss consented to)", n, len(acked))
	}
	if err := lab.Heal(ctx, m.lab.Dir, "dc1"); err != nil {
		t.Fatal(err)
	}
	answering := func() {
		labtest.Eventually(t, 2*time.Minute, "dc1's site answering (its Patroni REST API)", func() error {
			if r := m.run("diff", "-f", onEast); strings.Contains(r.stdout, "orders-dc1 (site dc1) is still unreachable") {
				return errors.New(lastNonEmpty(r.stdout))
			}
			return nil
		})
	}
	answering()
	r := m.run("apply", "-f", onEast)
	if r.code == 0 {
		t.Logf("dc1 came back on the timeline it was lost on and rejoined by rewind:\n%s", r.stderr)
	} else {
		for _, want := range []string{"fence on return: orders-dc1", "divergence: orders-dc1", "orders-dc1 needs a rebuild and is held fenced, not demoted", "pgtopo render patroni-bootstrap orders-dc1"} {
			if !strings.Contains(r.stdout+r.stderr, want) {
				t.Fatalf("exit %d; the rejoin of dc1 does not say %q:\n%s\n%s", r.code, want, r.stdout, r.stderr)
			}
		}
		for _, line := range strings.Split(r.stdout+r.stderr, "\n") {
			if strings.Contains(line, "divergence: orders-dc1") || strings.Contains(line, "held fenced") {
				t.Logf("dc1's return: %s", line)
			}
		}
		var takes bool
		m.query("orders-dc1", "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'", &takes)
		if takes {
			t.Fatal("dc1 takes writes after its fence on return")
		}
		// The way back the error states, by hand.
		rr := m.run("render", "patroni-bootstrap", "orders-dc1", "-f", onEast, "-o", "json")
		m.expect(rr, 0)
		var doc struct {
			PatroniConfig struct {
				Bootstrap struct {
					DCS struct {
						StandbyCluster map[string]any `json:"standby_cluster"`
					} `json:"dcs"`
				} `json:"bootstrap"`
			} `json:"patroniConfig"`
		}
		if err := json.Unmarshal([]byte(rr.stdout), &doc); err != nil {
			t.Fatal(err)
		}
		if err := lab.RebuildPatroniSite(ctx, m.lab.Dir, "dc1", doc.PatroniConfig.Bootstrap.DCS.StandbyCluster); err != nil {
			t.Fatal(err)
		}
	}
	labtest.Eventually(t, 2*time.Minute, "dc1 streaming from east", func() error {
		var status string
		c, err := m.connect("orders-dc1")
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		if err := c.QueryRow(ctx, "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'none')").Scan(&status); err != nil {
			return err
		}
		if status != "streaming" {
			return fmt.Errorf("dc1's wal receiver: %s", status)
		}
		return nil
	})
	if r := m.run("apply", "-f", onEast); r.code != 0 {
		t.Fatalf("apply with dc1 a standby again: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	labtest.Eventually(t, time.Minute, "status healthy", func() error {
		if r := m.run("status", "-f", onEast); r.code != 0 {
			return fmt.Errorf("status exit %d: %s", r.code, lastNonEmpty(r.stdout))
		}
		return nil
	})
}

func lastNonEmpty(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// renderMatchesLiveStandby checks what render patroni-bootstrap gives a DBA
// rebuilding dc1 by hand while east is primary: the standby_cluster dc1 now
// runs with (pgtopo set it when it demoted dc1), in YAML and in JSON. For
// the primary itself it refuses.
func (m *mixed) renderMatchesLiveStandby(onEast, onDC1 string) {
	t := m.t
	t.Helper()
	resp, err := http.Get("http://" + m.dc1.Members[0] + ":8008/config")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		StandbyCluster struct {
			Host            string `json:"host"`
			Port            int    `json:"port"`
			PrimarySlotName string `json:"primary_slot_name"`
		} `json:"standby_cluster"`
	}
	err = json.NewDecoder(resp.Body).Decode(&cfg)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	live := cfg.StandbyCluster
	if live.Host == "" || live.PrimarySlotName != "xdc_orders_dc1" {
		t.Fatalf("dc1's live standby_cluster is %+v; want east's endpoint and slot xdc_orders_dc1", live)
	}
	m.expect(m.run("render", "patroni-bootstrap", "orders-dc1", "-f", onEast), 0, "standby_cluster:",
		"host: "+live.Host, fmt.Sprintf("port: %d", live.Port), "primary_slot_name: xdc_orders_dc1", "- basebackup")
	r := m.run("render", "patroni-bootstrap", "orders-dc1", "-f", onEast, "-o", "json")
	m.expect(r, 0)
	var doc struct {
		APIVersion, Kind, Cluster, Primary, Slot string
		PatroniConfig                            struct {
			Bootstrap struct {
				DCS struct {
					StandbyCluster struct {
						Host            string `json:"host"`
						Port            int    `json:"port"`
						PrimarySlotName string `json:"primary_slot_name"`
					} `json:"standby_cluster"`
				} `json:"dcs"`
			} `json:"bootstrap"`
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
		t.Fatalf("render -o json: %v\n%s", err, r.stdout)
	}
	if got := doc.PatroniConfig.Bootstrap.DCS.StandbyCluster; doc.Kind != "PatroniBootstrap" || doc.APIVersion == "" ||
		doc.Cluster != "orders-dc1" || doc.Primary != "orders-east" || doc.Slot != "xdc_orders_dc1" ||
		got.Host != live.Host || got.Port != live.Port || got.PrimarySlotName != live.PrimarySlotName {
		t.Fatalf("render -o json gives %+v; want dc1's live standby_cluster %+v\n%s", doc, live, r.stdout)
	}
	r = m.run("render", "patroni-bootstrap", "orders-dc1", "-f", onDC1)
	if r.code != 1 || !strings.Contains(r.stderr, "is the topology's primary") {
		t.Fatalf("render for the primary: exit %d, want 1 saying it is the primary\n%s\n%s", r.code, r.stdout, r.stderr)
	}
}

// journalPhases reads the switchover journal's phase on both ends: east's
// CR annotation, and dc1's dynamic config key.
func (m *mixed) journalPhases() (dc1, east string) {
	if p := (&harness{lab: m.lab}).journalPhase("east", "orders-east"); p != "" {
		east = p
	}
	resp, err := http.Get("http://" + m.dc1.Members[0] + ":8008/config")
	if err != nil {
		return "", east
	}
	defer resp.Body.Close()
	var cfg map[string]any
	if json.NewDecoder(resp.Body).Decode(&cfg) != nil {
		return "", east
	}
	raw, _ := cfg[patroni.MarksKey].(string)
	var marks snapshot.Marks
	if json.Unmarshal([]byte(raw), &marks) == nil && marks.Journal != nil {
		dc1 = marks.Journal.Phase
	}
	return dc1, east
}

// killAndResume kills apply with SIGKILL in each phase of a mixed
// switchover, in both directions, and re-runs it: it converges with no
// acknowledged row lost and never two writable clusters. The last case
// re-runs the old primary's file, which backs the switchover out.
func (m *mixed) killAndResume(onDC1, onEast string) {
	t := m.t.(*testing.T)
	cases := []struct {
		after       apply.EventType
		phase       string
		file, rerun string
		primary     string
	}{
		{apply.EventDemote, snapshot.PhaseDemoting, onEast, onEast, "orders-east"},
		{apply.EventGateSet, snapshot.PhaseGated, onDC1, onDC1, "orders-dc1"},
		{apply.EventPromote, snapshot.PhasePromoted, onEast, onEast, "orders-east"},
		{apply.EventFence, snapshot.PhaseDemoting, onDC1, onDC1, "orders-dc1"},
		{apply.EventDemote, snapshot.PhaseDemoting, onEast, onDC1, "orders-dc1"},
	}
	for _, tc := range cases {
		w := m.startWriter()
		seen, killed := m.killApply(t, func(ev apply.Event) bool { return ev.Type == tc.after }, "apply", "-f", tc.file, "--patroni-credentials", m.credsF)
		if !killed {
			t.Fatalf("apply ended before a %q event:\n%s", tc.after, strings.Join(seen, "\n"))
		}
		a, b := m.journalPhases()
		if a != tc.phase && b != tc.phase {
			t.Fatalf("killed after %q, but the journal says %q (dc1) and %q (east), want %s", tc.after, a, b, tc.phase)
		}
		r := m.run("apply", "-f", tc.rerun, "--lock-timeout", "90s", "--progress-format", "json")
		time.Sleep(time.Second)
		acked := w.finish()
		m.expect(r, 0, "Apply complete")
		if w.both.Load() != 0 {
			t.Fatalf("killed after %s: two clusters writable at once in %d samples", tc.after, w.both.Load())
		}
		if n := m.missing(tc.primary, acked); n != 0 || len(acked) == 0 {
			t.Fatalf("killed after %s: %d of %d acknowledged rows missing on %s", tc.after, n, len(acked), tc.primary)
		}
		m.expect(m.run("diff", "-f", tc.rerun), 0, "No changes.")
		if a, b := m.journalPhases(); a != "" || b != "" {
			t.Fatalf("journal left behind: %q (dc1), %q (east)", a, b)
		}
		t.Logf("killed after %s (journal %s), re-ran %s: converged, %d rows acknowledged, none lost", tc.after, tc.phase, filepath.Base(tc.rerun), len(acked))
	}
}

// noPatroniSecrets fails when anything pgtopo printed holds a Patroni
// site's PostgreSQL or REST password.
func (m *mixed) noPatroniSecrets() {
	m.t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, k := range []string{lab.EnvPGPassword, lab.EnvRESTPassword} {
		pw := m.creds[k]
		if len(pw) < 8 {
			m.t.Fatalf("%s: implausible length %d", k, len(pw))
		}
		for _, out := range m.output {
			if strings.Contains(out, pw) {
				m.t.Fatalf("a pgtopo output contains %s's value", k)
			}
		}
	}
}
