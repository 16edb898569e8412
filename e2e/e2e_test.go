// Package e2e drives bin/pgtopo as a user would against the lab: real
// kube-apiservers, Patroni and PostgreSQL.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/labtest"
	"github.com/pgtopo/pgtopo/lab/proc"
)

type run struct {
	code           int
	stdout, stderr string
}

type harness struct {
	t      testing.TB
	lab    *labtest.Lab
	bin    string
	dir    string
	mu     sync.Mutex
	output []string // everything pgtopo printed, for the secrets check
	nextID atomic.Int64
}

func newHarness(t testing.TB, sites ...string) *harness {
	return newHarnessConfig(t, lab.Config{Sites: sites})
}

// newHarnessConfig is newHarness on a lab as cfg says (network
// namespaces, Patroni sites).
func newHarnessConfig(t testing.TB, cfg lab.Config) *harness {
	root, err := labtest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(root, "bin", "pgtopo")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s missing: run make build", bin)
	}
	h := &harness{t: t, lab: labtest.StartConfig(t, cfg), bin: bin, dir: t.TempDir()}
	return h
}

// topology writes the lab topology with the given primary and returns its path.
func (h *harness) topology(primary string) string {
	src, err := os.ReadFile("../examples/topologies/lab-two-sites.yaml")
	if err != nil {
		h.t.Fatal(err)
	}
	path := filepath.Join(h.dir, primary+".yaml")
	data := strings.Replace(string(src), "primary: orders-east", "primary: "+primary, 1)
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		h.t.Fatal(err)
	}
	return path
}

// topologyWith is topology(primary) with the lab file's maxLagBytes line
// replaced by lines (a setting added beside it), written as
// <primary>-<variant>.yaml.
func (h *harness) topologyWith(primary, variant, lines string) string {
	data, err := os.ReadFile(h.topology(primary))
	if err != nil {
		h.t.Fatal(err)
	}
	if !strings.Contains(string(data), "    maxLagBytes: 16Mi\n") {
		h.t.Fatal("the lab's topology file has no maxLagBytes: 16Mi line to put settings beside")
	}
	path := filepath.Join(h.dir, primary+"-"+variant+".yaml")
	if err := os.WriteFile(path, []byte(strings.Replace(string(data), "    maxLagBytes: 16Mi\n", lines+"\n", 1)), 0o644); err != nil {
		h.t.Fatal(err)
	}
	return path
}

func (h *harness) pgtopo(args ...string) run {
	h.t.Helper()
	return h.pgtopoEnv([]string{"KUBECONFIG=" + lab.Paths{Dir: h.lab.Dir}.Kubeconfig()}, args...)
}

// pgtopoEnv runs pgtopo with extra environment variables.
func (h *harness) pgtopoEnv(env []string, args ...string) run {
	h.t.Helper()
	cmd := exec.Command(h.bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := run{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		h.t.Fatal(err)
	}
	h.mu.Lock()
	h.output = append(h.output, r.stdout, r.stderr)
	h.mu.Unlock()
	return r
}

func (h *harness) expect(r run, code int, want ...string) {
	h.t.Helper()
	if r.code != code {
		h.t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
	for _, w := range want {
		if !strings.Contains(r.stdout, w) {
			h.t.Fatalf("stdout lacks %q:\n%s\nstderr:\n%s", w, r.stdout, r.stderr)
		}
	}
}

func (h *harness) conn(site, cluster string) (*pgx.Conn, error) {
	// Errors, not the test's end: callers poll clusters that may be away
	// (a rebuild deletes the object, its Service and Secret with it).
	host, port, err := h.lab.EndpointOf(site, "db", cluster)
	if err != nil {
		return nil, err
	}
	pw, err := h.lab.PasswordOf(site, "db", cluster)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return pgx.Connect(ctx, fmt.Sprintf("postgres://postgres:%s@%s:%d/postgres?sslmode=require&connect_timeout=3", pw, host, port))
}

func (h *harness) writable(site, cluster string) (bool, error) {
	c, err := h.conn(site, cluster)
	if err != nil {
		return false, err
	}
	defer c.Close(context.Background())
	var rec bool
	err = c.QueryRow(context.Background(), "SELECT pg_is_in_recovery()").Scan(&rec)
	return err == nil && !rec, err
}

// writer commits a row every few milliseconds through whichever cluster is
// writable, recording each acknowledged id, and samples both clusters for
// being writable at once.
type writer struct {
	acked     []int64
	mu        sync.Mutex  // guards at, read while the writer runs
	at        []time.Time // when each of acked was acknowledged
	by        []string    // which server (host:port) acknowledged each of acked
	bothSeen  atomic.Int64
	samples   atomic.Int64
	stop      chan struct{}
	done      sync.WaitGroup
	longestMs atomic.Int64
	gapFrom   atomic.Int64 // unix nanoseconds of the last commit before the longest gap
	closers   []func()     // run by finish, once the writer stopped
}

func (h *harness) startWriter() *writer {
	return h.startWriterOn("orders")
}

// startWriterOn writes through topology's pair: NAME-east in site east and
// NAME-west in site west, and samples both for being writable at once.
func (h *harness) startWriterOn(name string) *writer { return h.startWriterWith(name, true) }

// startWriterWith is startWriterOn, without the sampler when sample is
// false (a benchmark of many topologies, where twenty samplers' sessions
// would load the machine it measures).
func (h *harness) startWriterWith(name string, sample bool) *writer {
	w := &writer{stop: make(chan struct{})}
	dsns := &clientDSNs{h: h}
	east, west := dsns.probe("east", name+"-east"), dsns.probe("west", name+"-west")
	candidates := []*probe{east, west}
	w.start(h, func() *pgx.Conn {
		for _, p := range candidates {
			if ok, _ := p.ask(takesWritesSQL); ok {
				return p.take()
			}
		}
		return nil
	})
	w.closers = append(w.closers, east.close, west.close)
	if !sample {
		return w
	}
	sampleEast, sampleWest := dsns.probe("east", name+"-east"), dsns.probe("west", name+"-west")
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		defer sampleEast.close()
		defer sampleWest.close()
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			e, _ := sampleEast.ask(outOfRecoverySQL)
			ww, _ := sampleWest.ask(outOfRecoverySQL)
			w.samples.Add(1)
			if e && ww {
				w.bothSeen.Add(1)
			}
		}
	}()
	return w
}

const outOfRecoverySQL = "SELECT NOT pg_is_in_recovery()"

// clientDSNs are the connection strings of a writer and its sampler, kept
// as an application keeps its own: looked up in the lab once, and again
// (at most once a second) after a connect with one fails, for a rotated
// password or a Service made anew. Looked up on every retry, they put
// API reads and TLS handshakes inside the very window a benchmark
// measures, most of all under a switchover's fence.
type clientDSNs struct {
	h  *harness
	mu sync.Mutex
	m  map[string]clientDSN
}

type clientDSN struct {
	dsn    string
	looked time.Time
}

func (d *clientDSNs) connect(site, cluster string) (*pgx.Conn, error) {
	key := site + "/" + cluster
	d.mu.Lock()
	e, ok := d.m[key]
	d.mu.Unlock()
	if !ok {
		host, port, err := d.h.lab.EndpointOf(site, "db", cluster)
		if err != nil {
			return nil, err
		}
		pw, err := d.h.lab.PasswordOf(site, "db", cluster)
		if err != nil {
			return nil, err
		}
		e = clientDSN{dsn: fmt.Sprintf("postgres://postgres:%s@%s:%d/postgres?sslmode=require&connect_timeout=3", pw, host, port), looked: time.Now()}
		d.mu.Lock()
		if d.m == nil {
			d.m = map[string]clientDSN{}
		}
		d.m[key] = e
		d.mu.Unlock()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, e.dsn)
	if err != nil && time.Since(e.looked) > time.Second {
		d.mu.Lock()
		delete(d.m, key)
		d.mu.Unlock()
	}
	return c, err
}

// probe holds one session to a cluster, as a client's pool would, and asks
// it yes-or-no questions: a poll costs a query, not a handshake. A session
// that fails is dropped; one that says no is kept at most a second, so a
// Service that moved to another server is followed.
type probe struct {
	dsns          *clientDSNs
	site, cluster string
	c             *pgx.Conn
	opened        time.Time
}

func (d *clientDSNs) probe(site, cluster string) *probe {
	return &probe{dsns: d, site: site, cluster: cluster}
}

func (p *probe) ask(query string) (bool, error) {
	if p.c == nil {
		c, err := p.dsns.connect(p.site, p.cluster)
		if err != nil {
			return false, err
		}
		p.c, p.opened = c, time.Now()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var yes bool
	if err := p.c.QueryRow(ctx, query).Scan(&yes); err != nil {
		p.close()
		return false, err
	}
	if !yes && time.Since(p.opened) > time.Second {
		p.close()
	}
	return yes, nil
}

// take hands the session over; the next ask opens another.
func (p *probe) take() *pgx.Conn {
	c := p.c
	p.c = nil
	return c
}

func (p *probe) close() {
	if p.c == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	p.c.Close(ctx)
	cancel()
	p.c = nil
}

// start writes ids, one at a time, through the session connect returns
// (nil when no cluster takes writes now), and records each acknowledged
// one with its time and the longest gap between two.
func (w *writer) start(h *harness, connect func() *pgx.Conn) {
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		var c *pgx.Conn
		drop := func() {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			c.Close(ctx)
			cancel()
			c = nil
		}
		last := time.Now()
		for {
			select {
			case <-w.stop:
				if c != nil {
					drop()
				}
				return
			default:
			}
			if c == nil {
				if c = connect(); c == nil {
					time.Sleep(10 * time.Millisecond)
					continue
				}
			}
			id := h.nextID.Add(1)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := c.Exec(ctx, "INSERT INTO acked (id) VALUES ($1)", id)
			cancel()
			if err != nil {
				drop()
				continue
			}
			w.mu.Lock()
			w.acked = append(w.acked, id)
			w.at = append(w.at, time.Now())
			w.by = append(w.by, fmt.Sprintf("%s:%d", c.Config().Host, c.Config().Port))
			w.mu.Unlock()
			if gap := time.Since(last).Milliseconds(); gap > w.longestMs.Load() {
				w.longestMs.Store(gap)
				w.gapFrom.Store(last.UnixNano())
			}
			last = time.Now()
			time.Sleep(5 * time.Millisecond)
		}
	}()
}

func (w *writer) finish() {
	close(w.stop)
	w.done.Wait()
	for _, c := range w.closers {
		c()
	}
}

// ackedCount is how many writes were acknowledged so far.
func (w *writer) ackedCount() int { return len(w.ackedSoFar()) }

// ackedSoFar are the ids acknowledged so far, while the writer runs.
func (w *writer) ackedSoFar() []int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.acked)
}

// firstElsewhereAfter is when the first write after from was acknowledged
// by another server than the last one to acknowledge a write before from
// (zero if none yet): a failover's recovery, not the old primary finishing
// a write it had in flight at from.
func (w *writer) firstElsewhereAfter(from time.Time) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	i, _ := slices.BinarySearchFunc(w.at, from, func(at, from time.Time) int { return at.Compare(from) })
	for i < len(w.at) && !w.at[i].After(from) {
		i++
	}
	var before string
	if i > 0 {
		before = w.by[i-1]
	}
	for ; i < len(w.at); i++ {
		if w.by[i] != before {
			return w.at[i]
		}
	}
	return time.Time{}
}

// createAcked makes the writer's table on the current primary.
func (h *harness) createAcked(site, cluster string) {
	h.t.Helper()
	c, err := h.conn(site, cluster)
	if err != nil {
		h.t.Fatal(err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(context.Background(), "CREATE TABLE acked (id bigint PRIMARY KEY)"); err != nil {
		h.t.Fatal(err)
	}
}

// missing counts acknowledged ids absent on a cluster.
func (h *harness) missing(site, cluster string, acked []int64) int64 {
	h.t.Helper()
	c, err := h.conn(site, cluster)
	if err != nil {
		h.t.Fatal(err)
	}
	defer c.Close(context.Background())
	var n int64
	err = c.QueryRow(context.Background(), "SELECT count(*) FROM unnest($1::bigint[]) AS a(id) WHERE NOT EXISTS (SELECT 1 FROM acked WHERE acked.id = a.id)", acked).Scan(&n)
	if err != nil {
		h.t.Fatal(err)
	}
	return n
}

// missingIDs lists the acknowledged ids absent on a cluster.
func (h *harness) missingIDs(site, cluster string, acked []int64) []int64 {
	h.t.Helper()
	c, err := h.conn(site, cluster)
	if err != nil {
		h.t.Fatal(err)
	}
	defer c.Close(context.Background())
	rows, err := c.Query(context.Background(), "SELECT a.id FROM unnest($1::bigint[]) AS a(id) WHERE NOT EXISTS (SELECT 1 FROM acked WHERE acked.id = a.id)", acked)
	if err != nil {
		h.t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		h.t.Fatal(err)
	}
	return ids
}

func TestApplyEndToEnd(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "east", "west")
	east, west := h.topology("orders-east"), h.topology("orders-west")

	r := h.pgtopo("diff", "-f", east)
	h.expect(r, 4, "topology orders: bring up with primary orders-east", "Plan: 0 switchover, 3 to create, 2 to update, 0 refused.")

	start := time.Now()
	h.expect(h.pgtopo("apply", "-f", east), 0, "Apply complete")
	t.Logf("bring-up took %s", time.Since(start).Round(100*time.Millisecond))
	h.expect(h.pgtopo("diff", "-f", east), 0, "No changes.")
	h.expect(h.pgtopo("apply", "-f", east), 0, "No changes.")
	st := h.pgtopo("status", "-f", east)
	h.expect(st, 0)
	for _, line := range []string{"orders-east  east  db         primary", "orders-west  west  db         standby  streaming"} {
		if !strings.Contains(st.stdout, line) {
			t.Fatalf("status lacks %q:\n%s", line, st.stdout)
		}
	}

	h.createAcked("east", "orders-east")

	// The old primary's end of WAL read once it restarts in recovery (the
	// default); then, back, also looked for at the target, from its
	// shutdown checkpoint (finalLSN: shutdownCheckpoint). Patroni demotes
	// a leader to a standby leader with an immediate shutdown, which
	// writes none: the lab's switchover reads it in recovery all the same,
	// having made pg_walinspect ready without a word.
	eastAtCheckpoint := h.topologyWith("orders-east", "checkpoint", "    maxLagBytes: 16Mi\n    finalLSN: shutdownCheckpoint")
	for i, target := range []struct{ file, primary, site, old, oldSite, gate string }{
		{west, "orders-west", "west", "orders-east", "east", "(its end of WAL, read in recovery)"},
		{eastAtCheckpoint, "orders-east", "east", "orders-west", "west", "its shutdown checkpoint replayed by orders-east, or orders-west in recovery"},
	} {
		w := h.startWriter()
		time.Sleep(time.Second)
		start := time.Now()
		r := h.pgtopo("apply", "-f", target.file)
		took := time.Since(start)
		time.Sleep(2 * time.Second)
		w.finish()
		if took > time.Minute {
			t.Logf("slow switchover; its progress:\n%s", r.stderr)
		}
		h.expect(r, 0, "Apply complete", "switchover")
		if !strings.Contains(r.stderr, target.gate) || !strings.Contains(r.stderr, "(its end of WAL, read in recovery)") || strings.Contains(r.stderr, "final LSN:") {
			t.Fatalf("switchover %d: its progress lacks %q or a gate read in recovery, or has a note on the final LSN:\n%s", i+1, target.gate, r.stderr)
		}
		t.Logf("switchover %d to %s took %s; %d rows acknowledged; longest gap between commits %d ms; %d samples, both writable in %d",
			i+1, target.primary, took.Round(100*time.Millisecond), w.ackedCount(), w.longestMs.Load(), w.samples.Load(), w.bothSeen.Load())
		if w.bothSeen.Load() != 0 {
			t.Fatalf("two clusters were writable at once in %d samples", w.bothSeen.Load())
		}
		if ok, err := h.writable(target.site, target.primary); !ok {
			t.Fatalf("%s not writable after the switchover: %v", target.primary, err)
		}
		acked := w.ackedSoFar()
		if missing := h.missing(target.site, target.primary, acked); missing != 0 {
			t.Fatalf("%d acknowledged rows missing on %s", missing, target.primary)
		}
		if len(acked) == 0 {
			t.Fatalf("the writer committed nothing")
		}
		h.expect(h.pgtopo("diff", "-f", target.file), 0, "No changes.")
		st := h.pgtopo("status", "-f", target.file)
		if !strings.Contains(st.stdout, target.old) || !strings.Contains(st.stdout, "standby  streaming") {
			t.Fatalf("old primary not streaming:\n%s", st.stdout)
		}
	}

	// Back to the lab's own file: only pgtopo's marks change.
	h.expect(h.pgtopo("apply", "-f", east), 0, "0 switchover, 0 to create, 2 to update")

	// Every output format, including while changes are pending.
	h.expect(h.pgtopo("diff", "-f", west, "-o", "json"), 4, `"kind": "Plan"`)
	h.expect(h.pgtopo("diff", "-f", west, "-o", "markdown"), 4, "| cluster | site |")
	h.expect(h.pgtopo("apply", "-f", east, "--dry-run"), 0, "No changes.")

	t.Run("TLS to every server, verified; a wrong or missing CA is a refusal", func(t *testing.T) {
		h.checkTLS(t, east)
	})

	t.Run("a rotated primary password: the standby's Secret follows, then a switchover", func(t *testing.T) {
		h.rotatePrimaryPassword(t, east, west)
	})

	t.Run("a refused plan changes nothing: unreachable site", func(t *testing.T) {
		pid := proc.ReadPid(lab.Paths{Dir: h.lab.Dir}.Pid("apiserver-west"))
		proc.Stop(pid, 10*time.Second)
		before, _ := h.lab.Dyn["east"].Resource(postgresqlGVR).Namespace("db").Get(context.Background(), "orders-east", metav1.GetOptions{})
		r := h.pgtopo("diff", "-f", west)
		h.expect(r, 1, "site west unreachable", "1 refused.")
		r = h.pgtopo("apply", "-f", west)
		h.expect(r, 1, "site west unreachable")
		after, _ := h.lab.Dyn["east"].Resource(postgresqlGVR).Namespace("db").Get(context.Background(), "orders-east", metav1.GetOptions{})
		if before.GetResourceVersion() != after.GetResourceVersion() {
			t.Fatalf("a refused apply changed orders-east")
		}
	})

	h.noSecretsInOutput()
}

// noSecretsInOutput fails when anything pgtopo printed contains the admin
// password of the lab's clusters, or an unkeyed digest of it (a
// fingerprint anyone could test guesses against).
func (h *harness) noSecretsInOutput() {
	h.t.Helper()
	// Every cluster's admin password that can still be read (a test may
	// have deleted a cluster, or stopped a site's API server, by now).
	var passwords []string
	for _, kube := range h.lab.Kube {
		list, err := kube.CoreV1().Secrets("db").List(context.Background(), metav1.ListOptions{})
		if err != nil {
			continue
		}
		for _, s := range list.Items {
			if strings.HasSuffix(s.Name, ".credentials.postgresql.acid.zalan.do") {
				passwords = append(passwords, string(s.Data["password"]))
			}
		}
	}
	if len(passwords) == 0 {
		h.t.Fatal("no credentials Secret left to check the outputs against")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, pw := range passwords {
		if len(pw) < 8 {
			h.t.Fatalf("implausible password length %d", len(pw))
		}
		var digests []string
		for _, data := range []string{pw, "password\x00" + pw + "\x00username\x00postgres\x00"} {
			sum := sha256.Sum256([]byte(data))
			digests = append(digests, hex.EncodeToString(sum[:])[:16])
		}
		for _, out := range h.output {
			if strings.Contains(out, pw) {
				h.t.Fatalf("a pgtopo output contains an admin password")
			}
			for _, d := range digests {
				if strings.Contains(out, d) {
					h.t.Fatalf("a pgtopo output contains an unkeyed digest of an admin password")
				}
			}
		}
	}
	h.t.Logf("checked %d outputs for %d passwords", len(h.output), len(passwords))
}
