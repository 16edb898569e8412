package live

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtopo/pgtopo/flavor/alauda"
	"github.com/pgtopo/pgtopo/lab/pgtest"
	"github.com/pgtopo/pgtopo/snapshot"
)

// probeSessions lists the backend pids of pgtopo's sessions.
func probeSessions(t *testing.T, s *pgtest.Server) []int {
	t.Helper()
	rows, _ := s.Admin.Query(context.Background(), "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgtopo' ORDER BY pid")
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	return pids
}

func terminate(t *testing.T, s *pgtest.Server, pid int) {
	t.Helper()
	if _, err := s.Admin.Exec(context.Background(), "SELECT pg_terminate_backend($1, 5000)", pid); err != nil {
		t.Fatal(err)
	}
}

// login signs in to a test server as its postgres user, verifying its
// certificate against the tests' CA.
func login(t testing.TB, password string) Login {
	return Login{User: "postgres", Password: password, TLS: TLS{CA: pgtest.CA(t).CertPEM, From: "the tests' CA"}}
}

func probePrimary(t *testing.T, s *pgtest.Server, p PgxProber) *snapshot.PGState {
	t.Helper()
	st, err := p.Probe(context.Background(), s.Endpoint, login(t, pgtest.Password))
	if err != nil {
		t.Fatal(err)
	}
	if st.InRecovery || st.SystemID == "" || st.CurrentLSN == 0 || st.ServerVersion < 150000 {
		t.Fatalf("probe of a primary read %+v", st)
	}
	return st
}

func TestProbeKeepsSessions(t *testing.T) {
	s := pgtest.Start(t)

	t.Run("without Keep each probe closes its session", func(t *testing.T) {
		probePrimary(t, s, PgxProber{})
		eventually(t, func() bool { return len(probeSessions(t, s)) == 0 }, "the probe's session ends")
	})

	t.Run("with Keep probes share one session", func(t *testing.T) {
		keep := &Conns{}
		defer keep.Close()
		p := PgxProber{Keep: keep}
		probePrimary(t, s, p)
		first := probeSessions(t, s)
		if len(first) != 1 {
			t.Fatalf("sessions after one probe: %v, want one", first)
		}
		for range 5 {
			probePrimary(t, s, p)
		}
		if got := probeSessions(t, s); len(got) != 1 || got[0] != first[0] {
			t.Fatalf("sessions after six probes: %v, want the first one %v", got, first)
		}
		keep.Close()
		eventually(t, func() bool { return len(probeSessions(t, s)) == 0 }, "Close ends the kept session")
	})

	t.Run("a session the server ended is replaced within the same probe", func(t *testing.T) {
		keep := &Conns{}
		defer keep.Close()
		p := PgxProber{Keep: keep}
		probePrimary(t, s, p)
		before := probeSessions(t, s)
		terminate(t, s, before[0])
		probePrimary(t, s, p)
		if after := probeSessions(t, s); len(after) != 1 || after[0] == before[0] {
			t.Fatalf("sessions after the kept one was terminated: %v (was %v), want one new", after, before)
		}
	})

	t.Run("a session older than MaxAge is not used again", func(t *testing.T) {
		keep := &Conns{MaxAge: time.Nanosecond}
		defer keep.Close()
		p := PgxProber{Keep: keep}
		probePrimary(t, s, p)
		before := probeSessions(t, s)
		probePrimary(t, s, p)
		eventually(t, func() bool {
			after := probeSessions(t, s)
			return len(after) == 1 && after[0] != before[0]
		}, "the old session is closed and a new one kept")
	})

	t.Run("an idle session is closed after MaxIdle", func(t *testing.T) {
		// The sessions of the subtests before end asynchronously.
		eventually(t, func() bool { return len(probeSessions(t, s)) == 0 }, "no session left from before")
		keep := &Conns{MaxIdle: 100 * time.Millisecond}
		defer keep.Close()
		probePrimary(t, s, PgxProber{Keep: keep})
		if n := len(probeSessions(t, s)); n != 1 {
			t.Fatalf("%d sessions right after the probe, want 1", n)
		}
		eventually(t, func() bool { return len(probeSessions(t, s)) == 0 }, "the idle session is closed")
	})

	t.Run("a wrong password is an error that does not show it", func(t *testing.T) {
		const wrong = "not-the-password-123"
		_, err := PgxProber{Keep: &Conns{}}.Probe(context.Background(), s.Endpoint, login(t, wrong))
		if err == nil {
			t.Fatal("probe with a wrong password succeeded")
		}
		for _, secret := range []string{wrong, pgtest.Password} {
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("error shows a password: %v", err)
			}
		}
		var auth *AuthError
		if !errors.As(err, &auth) {
			t.Fatalf("a refused password is not an AuthError: %v", err)
		}
		// A server that is not there is no authentication failure.
		_, err = PgxProber{}.Probe(context.Background(), snapshot.Endpoint{Host: "127.0.0.1", Port: 1}, login(t, wrong))
		if err == nil || errors.As(err, &auth) {
			t.Fatalf("connection refused: %v", err)
		}
	})
}

func eventually(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 5s: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A standby whose upstream is gone has no WAL receiver to name its
// timeline, and its last restartpoint may be on an older one (restartpoints
// come every checkpoint_timeout): the timeline of the WAL it holds is its
// own. A failover records it as the timeline the lost primary was lost on.
func TestProbeStandbyTimelineWithoutItsUpstream(t *testing.T) {
	primary := pgtest.Start(t)
	standby := pgtest.Standby(t, primary)
	probe := func() *snapshot.PGState {
		t.Helper()
		st, err := PgxProber{}.Probe(context.Background(), standby.Endpoint, login(t, pgtest.Password))
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	eventually(t, func() bool {
		st := probe()
		return st.InRecovery && st.WalReceiver != nil && st.WalReceiver.Status == "streaming"
	}, "the standby streams")

	// The primary moves to timeline 2 the way a promoted standby does.
	primary.Stop()
	primary.WriteFile(t, "standby.signal", nil)
	primary.Restart(t)
	if _, err := primary.Admin.Exec(context.Background(), "SELECT pg_promote()"); err != nil {
		t.Fatal(err)
	}
	if _, err := primary.Admin.Exec(context.Background(), "CREATE TABLE written_on_timeline_2 (id int)"); err != nil {
		t.Fatal(err)
	}
	// The standby's receiver retries every wal_retrieve_retry_interval (5 s).
	deadline := time.Now().Add(30 * time.Second)
	for st := probe(); st.WalReceiver == nil || st.WalReceiver.Timeline != 2; st = probe() {
		if time.Now().After(deadline) {
			t.Fatalf("the standby never streamed timeline 2: %+v", st.WalReceiver)
		}
		time.Sleep(100 * time.Millisecond)
	}

	primary.Stop()
	eventually(t, func() bool { return probe().WalReceiver == nil }, "the standby's receiver is gone with its upstream")
	var restartpoint int
	if err := standby.Admin.QueryRow(context.Background(), "SELECT timeline_id FROM pg_control_checkpoint()").Scan(&restartpoint); err != nil {
		t.Fatal(err)
	}
	if restartpoint != 1 {
		t.Fatalf("the standby's last restartpoint is on timeline %d: the test needs one still on timeline 1", restartpoint)
	}
	if st := probe(); st.Timeline != 2 {
		t.Fatalf("standby without its upstream: timeline %d, want 2 (the WAL it holds)", st.Timeline)
	}
}

// A setting changed in the configuration that takes effect only at a
// restart is read as pending, and no longer once the server restarted.
func TestProbePendingRestart(t *testing.T) {
	s := pgtest.Start(t)
	ctx := context.Background()
	// Patroni restarted beside a running primary writes recovery targets
	// into its configuration: a primary reads them only when it next
	// starts in recovery, so they are not pending on it (they would plan
	// a restart of the primary for nothing).
	for _, sql := range []string{"ALTER SYSTEM SET max_connections = 60", "ALTER SYSTEM SET recovery_target_lsn = '0/1000000'", "ALTER SYSTEM SET recovery_target_timeline = 'current'", "SELECT pg_reload_conf()"} {
		if _, err := s.Admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	eventually(t, func() bool {
		st := probePrimary(t, s, PgxProber{})
		return len(st.PendingRestart) == 1 && st.PendingRestart[0] == "max_connections"
	}, "max_connections pending a restart, and no recovery target")
	var raw int
	if err := s.Admin.QueryRow(ctx, "SELECT count(*) FROM pg_settings WHERE pending_restart AND name LIKE 'recovery_target%'").Scan(&raw); err != nil || raw != 2 {
		t.Fatalf("the server itself should flag the two recovery targets as pending (the case the probe leaves out): %d, %v", raw, err)
	}
	for _, sql := range []string{"ALTER SYSTEM RESET recovery_target_lsn", "ALTER SYSTEM RESET recovery_target_timeline"} {
		if _, err := s.Admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	s.Restart(t)
	if st := probePrimary(t, s, PgxProber{}); len(st.PendingRestart) != 0 {
		t.Fatalf("pending after the restart: %v", st.PendingRestart)
	}
}

// The operator's catalogue is read where the server holds it, through the
// flavor's SQL, and only when the prober is given one: rows pgtopo
// registers, forgets and completes read back as written.
func TestProbeReadsOperatorCatalogue(t *testing.T) {
	s := pgtest.Start(t)
	ctx := context.Background()
	cat := alauda.Catalogue{}
	exec := func(ctx context.Context, sql string, args ...any) error {
		_, err := s.Admin.Exec(ctx, sql, args...)
		return err
	}
	p := PgxProber{Catalogue: cat}

	if st := probePrimary(t, s, p); st.HasMultiClusterTable || st.MultiCluster != nil {
		t.Fatalf("a server without the table read as holding it: %+v", st.MultiCluster)
	}
	for _, c := range []string{"orders-west", "orders-dc1"} {
		if err := cat.Register(ctx, exec, c, "", 5432, alauda.SlotName(c)); err != nil {
			t.Fatal(err)
		}
	}
	if err := cat.FillExternalIP(ctx, exec, "orders-west", "10.0.0.7"); err != nil {
		t.Fatal(err)
	}
	// A row that has an address keeps it.
	if err := cat.FillExternalIP(ctx, exec, "orders-west", "10.0.0.8"); err != nil {
		t.Fatal(err)
	}
	if err := cat.Forget(ctx, exec, "orders-dc1"); err != nil {
		t.Fatal(err)
	}
	st := probePrimary(t, s, p)
	want := []snapshot.MultiClusterInfo{{Cluster: "orders-west", ExternalIP: "10.0.0.7", Slot: "xdc_orders_west"}}
	if !st.HasMultiClusterTable || !slices.Equal(st.MultiCluster, want) {
		t.Fatalf("catalogue read %v (present %v), want %v", st.MultiCluster, st.HasMultiClusterTable, want)
	}
	if st := probePrimary(t, s, PgxProber{}); st.HasMultiClusterTable || st.MultiCluster != nil {
		t.Fatalf("a prober without a catalogue read one: %+v", st.MultiCluster)
	}
}
