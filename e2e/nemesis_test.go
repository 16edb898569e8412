package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/labtest"
	"github.com/pgtopo/pgtopo/lab/proc"
	"github.com/pgtopo/pgtopo/quorum"
)

// nemesisFor is how long the nemesis runs: PGTOPO_NEMESIS (a duration;
// make soak sets 30m), 2 minutes by default; a run meets every kind of
// fault once whatever its length.
func nemesisFor(t *testing.T) time.Duration {
	v := os.Getenv("PGTOPO_NEMESIS")
	if v == "" {
		return 2 * time.Minute
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("PGTOPO_NEMESIS=%q: %v (a duration such as 30m)", v, err)
	}
	return d
}

// faultRecord is one fault the nemesis injected and what followed it.
type faultRecord struct {
	kind      string
	site      string
	at        time.Duration // since the nemesis began
	cutAt     time.Time     // when the primary's site was cut (isolate-primary)
	failovers int           // failover commits while it lasted and settled
	refused   string        // an agent's refusal to fail over, when the loss was above maxDataLoss
	rebuilt   string        // a returned primary rebuilt on consent: it wrote on a timeline of its own
	rto       time.Duration // a failover's: cut to the application's first write acknowledged by another server
	settled   time.Duration
}

// The nemesis, in the spirit of Jepsen: an automatic-failover topology on
// a lab whose sites live in network namespaces, an agent inside each site,
// an application writing from outside through whichever cluster takes
// writes, and a sampler inside each data site asking its cluster whether
// it takes writes. For PGTOPO_NEMESIS the nemesis picks faults at random,
// one at a time, each healed and the topology settled before the next:
// the primary's site isolated, the witness isolated, the standby's site
// isolated, the primary's site flapping, the path between the data sites
// cut (the witness reaching both), an agent killed -9 (and started
// again), the primary's PostgreSQL killed -9, its leader's Patroni killed
// -9, the standby's replay stalled. The checker then fails on: a failover for anything but the
// primary's site lost (at most one for a flap), the primary's site lost
// without a failover, rows acknowledged and lost with no loss stated, and
// any moment two clusters took writes; and it prints the report.
func TestNemesis(t *testing.T) {
	t.Parallel()
	run := nemesisFor(t)
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("PGTOPO_NEMESIS_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("PGTOPO_NEMESIS_SEED=%q: %v", v, err)
		}
	}
	t.Logf("nemesis: %s, seed %d (PGTOPO_NEMESIS_SEED=%d repeats the choices)", run, seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed>>1))

	a := startAutomatic(t)
	h := a.h
	h.createAcked("east", "orders-east")
	// How to reach each cluster from inside its site and from outside,
	// read again at each settle: a rebuilt cluster's Service has another
	// node port.
	reach := func(cluster string) (inside, outside *pgx.ConnConfig, err error) {
		site := strings.TrimPrefix(cluster, "orders-")
		host, port, err := h.lab.EndpointOf(site, "db", cluster)
		if err != nil {
			return nil, nil, err
		}
		pw, err := h.lab.PasswordOf(site, "db", cluster)
		if err != nil {
			return nil, nil, err
		}
		cfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://postgres:%s@%s:%d/postgres?sslmode=require&connect_timeout=2", pw, host, port))
		if err != nil {
			return nil, nil, err
		}
		outside = cfg.Copy()
		s, _ := a.st.Site(site)
		cfg.DialFunc = dialInside(lab.NetnsName(a.st.Slot, s.Index))
		return cfg, outside, nil
	}
	cfgs, fromOutside := map[string]*pgx.ConnConfig{}, map[string]*pgx.ConnConfig{}
	for _, cluster := range []string{"orders-east", "orders-west"} {
		var err error
		if cfgs[cluster], fromOutside[cluster], err = reach(cluster); err != nil {
			t.Fatal(err)
		}
	}
	inside, fromAfar := newAddressBook(cfgs), newAddressBook(fromOutside)
	readdress := func() error {
		for _, cluster := range inside.names {
			in, out, err := reach(cluster)
			if err != nil {
				return fmt.Errorf("reading how to reach %s: %w", cluster, err)
			}
			if inside.set(cluster, in) {
				t.Logf("nemesis: %s is now at %s:%d", cluster, in.Host, in.Port)
			}
			fromAfar.set(cluster, out)
		}
		return nil
	}
	a.votesReady()
	sampler := startSiteSampler(inside)
	w := startOutsideWriter(h, fromAfar)

	failovers := func() int {
		return strings.Count(a.repo.Git("--git-dir", a.bare, "log", "--format=%s", "main"), "automatic failover")
	}
	siteOf := func(cluster string) string { return strings.TrimPrefix(cluster, "orders-") }
	other := func(site string) string {
		if site == "east" {
			return "west"
		}
		return "east"
	}
	cut := func(site string) {
		if err := lab.Partition(h.lab.Dir, site); err != nil {
			t.Fatal(err)
		}
	}
	heal := func(site string) {
		if err := lab.Heal(t.Context(), h.lab.Dir, site); err != nil {
			t.Fatal(err)
		}
	}
	// settle waits until diff finds nothing to do and the standby streams
	// again: a fault is injected only on a settled topology, so that a
	// later fault never lands before the standby has caught up with the
	// last one (its receiver retries every 5 s). A returned primary that
	// needs a rebuild, which deletes writes of its own, waits for a
	// person's consent: the test gives it, as a DBA would, and says so.
	settle := func(rec *faultRecord) time.Duration {
		began := time.Now()
		labtest.Eventually(t, 4*time.Minute, "the topology settled after "+rec.kind+" of "+rec.site, func() error {
			r := h.pgtopo(append([]string{"diff"}, a.source...)...)
			if r.code != 0 {
				if m := needsRebuild.FindStringSubmatch(r.stdout); m != nil && rec.rebuilt == "" {
					if rec.kind != "isolate-primary" && rec.kind != "flap-primary" {
						t.Fatalf("%s of %s: a returned primary needs a rebuild after a fault that cannot fail over:\n%s", rec.kind, rec.site, r.stdout)
					}
					t.Logf("nemesis: %s needs a rebuild with a person's consent (%s); consenting: apply --allow-rebuild %s", m[1], m[2], m[1])
					ar := h.pgtopo(append([]string{"apply", "--allow-rebuild", m[1]}, a.source...)...)
					if ar.code != 0 {
						return fmt.Errorf("apply --allow-rebuild %s: exit %d: %s%s", m[1], ar.code, ar.stdout, ar.stderr)
					}
					rec.rebuilt = m[1]
				}
				return fmt.Errorf("diff exit %d: %s%s", r.code, r.stdout, r.stderr)
			}
			if err := readdress(); err != nil {
				return err
			}
			standby := "orders-" + other(siteOf(a.primary()))
			return streams(t.Context(), inside.get(standby))
		})
		a.votesReady()
		return time.Since(began)
	}

	kinds := []string{"isolate-primary", "isolate-witness", "isolate-standby", "flap-primary", "cut-data-link", "kill-agent", "kill-postgres", "stall-replay"}
	if os.Getenv("PGTOPO_NEMESIS_PATRONI") != "" {
		// Soak only: Patroni's own in-site failover after it is killed
		// loses rows its async replica had not received, which a short
		// run's checker cannot tell from a loss no failover stated.
		kinds = append(kinds, "kill-patroni")
	}
	var records []faultRecord
	began := time.Now()
	// Every kind once, in a random order, then random picks for as long
	// as the run lasts: a short run still meets each fault.
	tour := slices.Clone(kinds)
	rng.Shuffle(len(tour), func(i, j int) { tour[i], tour[j] = tour[j], tour[i] })
	for len(tour) > 0 || time.Since(began) < run {
		kind := kinds[rng.IntN(len(kinds))]
		if len(tour) > 0 {
			kind, tour = tour[0], tour[1:]
		}
		primary := a.primary()
		rec := faultRecord{kind: kind, at: time.Since(began)}
		before := failovers()
		var cutAt time.Time
		switch kind {
		case "isolate-primary":
			// A failover, or, when the standby was further behind than
			// maxDataLoss at the cut (just back from a fault of its own,
			// the application writing fast), the agents' refusal: both are
			// right, nothing else is.
			rec.site = siteOf(primary)
			cutAt = time.Now()
			cut(rec.site)
			labtest.Eventually(t, 60*time.Second, "a failover away from "+primary+", or its refusal for the loss", func() error {
				if failovers() != before {
					return nil
				}
				if rec.refused = a.refusedForLoss(cutAt); rec.refused != "" {
					return nil
				}
				return fmt.Errorf("no failover commit, and no agent refused for the loss")
			})
			time.Sleep(2 * time.Second)
			heal(rec.site)
		case "isolate-witness", "isolate-standby":
			rec.site = "north"
			if kind == "isolate-standby" {
				rec.site = other(siteOf(primary))
			}
			cut(rec.site)
			time.Sleep(15 * time.Second)
			heal(rec.site)
		case "flap-primary":
			rec.site = siteOf(primary)
			for range 4 {
				cut(rec.site)
				time.Sleep(3 * time.Second)
				heal(rec.site)
				time.Sleep(3 * time.Second)
			}
		case "cut-data-link":
			// Only the path between the data sites fails; the witness
			// reaches both, so the primary keeps its majority.
			rec.site = "east-west"
			if err := lab.CutBetween(h.lab.Dir, "east", "west"); err != nil {
				t.Fatal(err)
			}
			a.expectCutBetween("east", "west", "north")
			time.Sleep(15 * time.Second)
			if err := lab.HealBetween(h.lab.Dir, "east", "west"); err != nil {
				t.Fatal(err)
			}
		case "kill-agent":
			rec.site = []string{"east", "west", "north"}[rng.IntN(3)]
			old := a.agents[rec.site]
			_ = old.cmd.Process.Signal(syscall.SIGKILL)
			time.Sleep(2 * time.Second)
			a.startAgent(rec.site)
		case "kill-postgres":
			rec.site = siteOf(primary)
			files := []string{filepath.Join(a.leaderDir(rec.site, primary), "data", "postmaster.pid")}
			b, err := os.ReadFile(files[0])
			if err != nil {
				t.Fatal(err)
			}
			pid, _ := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
			if !proc.Alive(pid) {
				t.Fatalf("%s's postmaster %d does not run", primary, pid)
			}
			_ = syscall.Kill(pid, syscall.SIGKILL)
			// The fault lasts until its Patroni starts it again: a diff
			// before then may still find the dying server's sessions.
			labtest.Eventually(t, time.Minute, primary+"'s PostgreSQL started again by its Patroni", func() error {
				b, err := os.ReadFile(files[0])
				if err != nil {
					return err
				}
				again, _ := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
				if again == pid || !proc.Alive(again) {
					return fmt.Errorf("its postmaster.pid names %d, which does not run", again)
				}
				return nil
			})
		case "kill-patroni":
			// Its PostgreSQL runs on without it; the fault lasts until the
			// lab operator starts Patroni again, and past its leader key's
			// ttl, when the member in the site may have taken the lead.
			rec.site = siteOf(primary)
			pidFile := filepath.Join(a.leaderDir(rec.site, primary), "patroni.pid")
			killed := proc.ReadPid(pidFile)
			if !proc.Alive(killed) {
				t.Fatalf("%s's leader's Patroni (%s) does not run", primary, pidFile)
			}
			_ = syscall.Kill(killed, syscall.SIGKILL)
			labtest.Eventually(t, time.Minute, primary+"'s Patroni started again by its operator", func() error {
				if pid := proc.ReadPid(pidFile); pid == killed || !proc.Alive(pid) {
					return fmt.Errorf("its pid file names %d, which does not run", pid)
				}
				return nil
			})
			time.Sleep(patroniTTL)
		case "stall-replay":
			standby := "orders-" + other(siteOf(primary))
			rec.site = siteOf(standby)
			pid := h.signalStartup(standby, syscall.SIGSTOP)
			time.Sleep(15 * time.Second)
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
		rec.cutAt = cutAt
		rec.settled = settle(&rec)
		rec.failovers = failovers() - before
		if !cutAt.IsZero() && rec.failovers > 0 {
			if at := w.firstElsewhereAfter(cutAt); !at.IsZero() {
				rec.rto = at.Sub(cutAt)
			}
		}
		t.Logf("nemesis: %5.0fs %-16s %-5s failovers %d, rto %5.1fs, settled in %.0fs%s%s", rec.at.Seconds(), rec.kind, rec.site, rec.failovers, rec.rto.Seconds(), rec.settled.Seconds(), orEmpty(" (refused: ", rec.refused, ")"), orEmpty(" (rebuilt on consent: ", rec.rebuilt, ")"))
		records = append(records, rec)
	}
	w.finish()
	ticks, both, bothAt := sampler.finish()

	// The checker.
	final := a.primary()
	lostIDs := h.missingIDs(siteOf(final), final, w.acked)
	lost := len(lostIDs)
	// A row the primary acknowledged after the survivors last read its
	// WAL position (a renewal and a read before the cut, at most) is
	// beyond what a failover can state (docs/automatic-failover.md: only
	// synchronous replication closes that window); any other lost row
	// must be covered by a stated loss.
	ackedAt := map[int64]time.Time{}
	w.mu.Lock()
	for i, id := range w.acked {
		ackedAt[id] = w.at[i]
	}
	w.mu.Unlock()
	unseenWindow := quorum.DefaultRenew + quorum.ReadTimeout
	var inWindow, outside int
	for _, id := range lostIDs {
		at, within := ackedAt[id], false
		for _, r := range records {
			if r.failovers > 0 && !r.cutAt.IsZero() && at.After(r.cutAt.Add(-unseenWindow)) && at.Before(r.cutAt.Add(time.Second)) {
				within = true
			}
		}
		if within {
			inWindow++
		} else {
			outside++
		}
	}
	stated := int64(0)
	for _, m := range regexp.MustCompile(`Loss: (\d+) bytes`).FindAllStringSubmatch(a.repo.Git("--git-dir", a.bare, "log", "--format=%B", "main"), -1) {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		stated += n
	}
	var report strings.Builder
	counts := map[string]int{}
	var rtos []float64
	refusals, rebuilds := 0, 0
	for _, r := range records {
		counts[r.kind]++
		if r.refused != "" {
			refusals++
		}
		if r.rebuilt != "" {
			rebuilds++
		}
		if r.rto > 0 {
			rtos = append(rtos, r.rto.Seconds())
		}
	}
	fmt.Fprintf(&report, "nemesis report: %s, seed %d, %d faults:", time.Since(began).Round(time.Second), seed, len(records))
	for _, k := range kinds {
		fmt.Fprintf(&report, " %s %d;", k, counts[k])
	}
	slices.Sort(rtos)
	fmt.Fprintf(&report, "\n  failovers %d, refused for a loss above maxDataLoss %d; returned primaries rebuilt on consent %d; RTO (cut to the application's first write acknowledged by another server) %v s", failovers(), refusals, rebuilds, rtos)
	fmt.Fprintf(&report, "\n  rows acknowledged %d, lost %d (%d acknowledged in the %s before a cut that the survivors could not see, %d earlier); loss stated by the failovers' commits %d bytes (bound: maxDataLoss 1 MiB each)", len(w.acked), lost, inWindow, unseenWindow, outside, stated)
	fmt.Fprintf(&report, "\n  in-site samples %d, with two clusters taking writes %d (bound 0)", ticks, both)
	t.Log(report.String())

	for _, r := range records {
		switch {
		case r.kind == "isolate-primary" && r.failovers != 1 && r.refused == "":
			t.Errorf("the primary's site isolated at %.0fs: %d failovers, want 1 (or a refusal for the loss)", r.at.Seconds(), r.failovers)
		case r.kind == "isolate-primary" && r.failovers > 1:
			t.Errorf("the primary's site isolated at %.0fs: %d failovers", r.at.Seconds(), r.failovers)
		case r.kind == "flap-primary" && r.failovers > 1:
			t.Errorf("the primary's site flapping at %.0fs: %d failovers, at most 1", r.at.Seconds(), r.failovers)
		case r.kind != "isolate-primary" && r.kind != "flap-primary" && r.failovers != 0:
			t.Errorf("%s of %s at %.0fs: %d failovers, want none", r.kind, r.site, r.at.Seconds(), r.failovers)
		}
	}
	if outside > 0 && stated == 0 {
		t.Errorf("%d acknowledged rows lost that the survivors could have seen, and no failover stated a loss", outside)
	}
	if both > 0 {
		t.Errorf("two clusters took writes at once in %d samples, first at %s", both, bothAt[0].Format(time.StampMilli))
	}
	h.noSecretsInOutput()
}

// leaderDir is the directory of the member that leads cluster in site:
// the one whose server runs without standby.signal (after a fault of its
// own the lead may have moved from the first member).
func (a *automatic) leaderDir(site, cluster string) string {
	t := a.h.t
	pids, _ := filepath.Glob(filepath.Join(a.h.lab.Dir, "sites", site, "clusters", "db", cluster, "*", "data", "postmaster.pid"))
	var leaders []string
	for _, f := range pids {
		data := filepath.Dir(f)
		if _, err := os.Stat(filepath.Join(data, "standby.signal")); err != nil {
			leaders = append(leaders, filepath.Dir(data))
		}
	}
	if len(leaders) != 1 {
		t.Fatalf("%s: %d running members without standby.signal (%v), want its one leader", cluster, len(leaders), leaders)
	}
	return leaders[0]
}

// patroniTTL is the lab's Patroni leader key ttl (lab/operator: 10 s)
// and a loop (2 s) on top: the time a member takes the lead in its site
// when its leader's Patroni is gone.
const patroniTTL = 12 * time.Second

// expectCutBetween checks, from inside site a, that b's API does not
// answer and the third site's does: the cut is the one asked for.
func (a *automatic) expectCutBetween(site, cut, third string) {
	t := a.h.t
	s, _ := a.st.Site(site)
	dial := dialInside(lab.NetnsName(a.st.Slot, s.Index))
	try := func(to string) error {
		ts, _ := a.st.Site(to)
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		c, err := dial(ctx, "tcp", a.st.GatewayAddr(ts))
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := try(cut); err == nil {
		t.Fatalf("cut between %s and %s: %s still reaches %s's API", site, cut, site, cut)
	}
	if err := try(third); err != nil {
		t.Fatalf("cut between %s and %s: %s no longer reaches %s's API: %v", site, cut, site, third, err)
	}
}

// needsRebuild finds, in diff's output, a returned primary whose rebuild
// waits for consent, and why it needs one.
var needsRebuild = regexp.MustCompile(`! (\S+) needs a rebuild \((.*?)\); it stays fenced`)

// streams reports whether the standby behind cfg streams from its upstream
// now, asked from inside its site.
func streams(ctx context.Context, cfg *pgx.ConnConfig) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("%s: %w", cfg.Host, err)
	}
	defer c.Close(context.Background())
	var status string
	if err := c.QueryRow(ctx, "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'no WAL receiver')").Scan(&status); err != nil {
		return fmt.Errorf("%s: %w", cfg.Host, err)
	}
	if status != "streaming" {
		return fmt.Errorf("the standby at %s does not stream yet: %s", cfg.Host, status)
	}
	return nil
}

// refusedForLoss is an agent's refusal, since since, to fail over because
// the loss would exceed maxDataLoss ("" when none said so).
func (a *automatic) refusedForLoss(since time.Time) string {
	for _, l := range a.agents {
		l.mu.Lock()
		for _, r := range l.records {
			if r.Time.After(since) && strings.Contains(r.Msg, "more than maxDataLoss") {
				l.mu.Unlock()
				return r.Msg
			}
		}
		l.mu.Unlock()
	}
	return ""
}

func orEmpty(before, s, after string) string {
	if s == "" {
		return ""
	}
	return before + s + after
}

// startOutsideWriter is the application: outside every site, it commits a
// row every few milliseconds through whichever cluster takes writes,
// reached as the book says (no API read on the way: a cut site's API would
// hold it), recording each acknowledged id and when.
func startOutsideWriter(h *harness, book *addressBook) *writer {
	w := &writer{stop: make(chan struct{})}
	w.start(h, func() *pgx.Conn {
		for _, name := range book.names {
			cfg := book.get(name)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			c, err := pgx.ConnectConfig(ctx, cfg)
			var ok bool
			if err == nil {
				err = c.QueryRow(ctx, "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'").Scan(&ok)
			}
			cancel()
			if err == nil && ok {
				return c
			}
			if c != nil {
				ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
				c.Close(ctx)
				cancel()
			}
		}
		return nil
	})
	return w
}
