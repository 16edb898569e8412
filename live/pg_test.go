package live

import (
	"context"
	"errors"
	"fmt"
	"github.com/pgtopo/pgtopo/snapshot"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

const pgBin = "/usr/lib/postgresql/15/bin"

// server is a throwaway PostgreSQL 15 with SCRAM authentication on a free
// local port.
type server struct {
	ep       snapshot.Endpoint
	password string
	admin    *pgx.Conn // the test's own session, to look at pgtopo's
	dir      string    // owned by the server's user; data is dir/data
	cred     *syscall.Credential
	cmd      *exec.Cmd
}

const testPassword = "probe-test-secret"

func startPostgres(t *testing.T) *server {
	t.Helper()
	s := newServerDir(t)
	pwfile := filepath.Join(s.dir, "pw")
	if err := os.WriteFile(pwfile, []byte(testPassword), 0o644); err != nil {
		t.Fatal(err)
	}
	s.run(t, "initdb", "-D", s.data(), "-U", "postgres", "--auth=scram-sha-256", "--pwfile", pwfile)
	s.start(t, freePort(t))
	return s
}

// newServerDir makes the directory of a server not started yet.
func newServerDir(t *testing.T) *server {
	t.Helper()
	if _, err := os.Stat(filepath.Join(pgBin, "postgres")); err != nil {
		t.Fatalf("PostgreSQL 15 is missing (%v): run make deps (apt-get install postgresql-15)", err)
	}
	// PostgreSQL refuses to run as root; the postgres user that the
	// package creates runs it then, in a directory it owns.
	dir, err := os.MkdirTemp("", "pgtopo-live-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &server{dir: dir, password: testPassword}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("user postgres: %v (apt-get install postgresql-15 creates it)", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func (s *server) data() string { return filepath.Join(s.dir, "data") }

// run runs one of PostgreSQL's programs as the server's user.
func (s *server) run(t *testing.T, program string, args ...string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(pgBin, program), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	cmd.Env = append(os.Environ(), "PGPASSWORD="+s.password)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", program, err, out)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// start runs the server on port and waits until it takes sessions.
func (s *server) start(t *testing.T, port int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(pgBin, "postgres"), "-D", s.data(), "-p", fmt.Sprint(port), "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="+s.dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	logf, _ := os.OpenFile(filepath.Join(s.dir, "postgres.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.cmd = cmd
	t.Cleanup(func() { s.stop() })
	s.ep = snapshot.Endpoint{Host: "127.0.0.1", Port: port}
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := pgx.Connect(context.Background(), fmt.Sprintf("postgres://postgres:%s@%s/postgres?application_name=admin", s.password, s.ep))
		if err == nil {
			s.admin = c
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "postgres.log"))
			t.Fatalf("postgres did not start: %v\n%s", err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop shuts the server down (fast) and waits for it.
func (s *server) stop() {
	if s.cmd == nil {
		return
	}
	if s.admin != nil {
		s.admin.Close(context.Background())
		s.admin = nil
	}
	_ = s.cmd.Process.Signal(os.Interrupt)
	_ = s.cmd.Wait()
	s.cmd = nil
}

// probeSessions lists the backend pids of pgtopo's sessions.
func (s *server) probeSessions(t *testing.T) []int {
	t.Helper()
	rows, _ := s.admin.Query(context.Background(), "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgtopo' ORDER BY pid")
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	return pids
}

func (s *server) terminate(t *testing.T, pid int) {
	t.Helper()
	if _, err := s.admin.Exec(context.Background(), "SELECT pg_terminate_backend($1, 5000)", pid); err != nil {
		t.Fatal(err)
	}
}

func (s *server) probe(t *testing.T, p PgxProber) *snapshot.PGState {
	t.Helper()
	st, err := p.Probe(context.Background(), s.ep, "postgres", s.password)
	if err != nil {
		t.Fatal(err)
	}
	if st.InRecovery || st.SystemID == "" || st.CurrentLSN == 0 || st.ServerVersion < 150000 {
		t.Fatalf("probe of a primary read %+v", st)
	}
	return st
}

func TestProbeKeepsSessions(t *testing.T) {
	s := startPostgres(t)

	t.Run("without Keep each probe closes its session", func(t *testing.T) {
		s.probe(t, PgxProber{})
		eventually(t, func() bool { return len(s.probeSessions(t)) == 0 }, "the probe's session ends")
	})

	t.Run("with Keep probes share one session", func(t *testing.T) {
		keep := &Conns{}
		defer keep.Close()
		p := PgxProber{Keep: keep}
		s.probe(t, p)
		first := s.probeSessions(t)
		if len(first) != 1 {
			t.Fatalf("sessions after one probe: %v, want one", first)
		}
		for range 5 {
			s.probe(t, p)
		}
		if got := s.probeSessions(t); len(got) != 1 || got[0] != first[0] {
			t.Fatalf("sessions after six probes: %v, want the first one %v", got, first)
		}
		keep.Close()
		eventually(t, func() bool { return len(s.probeSessions(t)) == 0 }, "Close ends the kept session")
	})

	t.Run("a session the server ended is replaced within the same probe", func(t *testing.T) {
		keep := &Conns{}
		defer keep.Close()
		p := PgxProber{Keep: keep}
		s.probe(t, p)
		before := s.probeSessions(t)
		s.terminate(t, before[0])
		s.probe(t, p)
		if after := s.probeSessions(t); len(after) != 1 || after[0] == before[0] {
			t.Fatalf("sessions after the kept one was terminated: %v (was %v), want one new", after, before)
		}
	})

	t.Run("a session older than MaxAge is not used again", func(t *testing.T) {
		keep := &Conns{MaxAge: time.Nanosecond}
		defer keep.Close()
		p := PgxProber{Keep: keep}
		s.probe(t, p)
		before := s.probeSessions(t)
		s.probe(t, p)
		eventually(t, func() bool {
			after := s.probeSessions(t)
			return len(after) == 1 && after[0] != before[0]
		}, "the old session is closed and a new one kept")
	})

	t.Run("an idle session is closed after MaxIdle", func(t *testing.T) {
		// The sessions of the subtests before end asynchronously.
		eventually(t, func() bool { return len(s.probeSessions(t)) == 0 }, "no session left from before")
		keep := &Conns{MaxIdle: 100 * time.Millisecond}
		defer keep.Close()
		s.probe(t, PgxProber{Keep: keep})
		if n := len(s.probeSessions(t)); n != 1 {
			t.Fatalf("%d sessions right after the probe, want 1", n)
		}
		eventually(t, func() bool { return len(s.probeSessions(t)) == 0 }, "the idle session is closed")
	})

	t.Run("a wrong password is an error that does not show it", func(t *testing.T) {
		const wrong = "not-the-password-123"
		_, err := PgxProber{Keep: &Conns{}}.Probe(context.Background(), s.ep, "postgres", wrong)
		if err == nil {
			t.Fatal("probe with a wrong password succeeded")
		}
		for _, secret := range []string{wrong, s.password} {
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("error shows a password: %v", err)
			}
		}
		var auth *AuthError
		if !errors.As(err, &auth) {
			t.Fatalf("a refused password is not an AuthError: %v", err)
		}
		// A server that is not there is no authentication failure.
		_, err = PgxProber{}.Probe(context.Background(), snapshot.Endpoint{Host: "127.0.0.1", Port: 1}, "postgres", wrong)
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
	primary := startPostgres(t)
	standby := newServerDir(t)
	standby.run(t, "pg_basebackup", "-D", standby.data(), "-h", primary.ep.Host, "-p", fmt.Sprint(primary.ep.Port), "-U", "postgres", "-R", "-X", "stream")
	standby.start(t, freePort(t))
	probe := func() *snapshot.PGState {
		t.Helper()
		st, err := PgxProber{}.Probe(context.Background(), standby.ep, "postgres", standby.password)
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
	port := primary.ep.Port
	primary.stop()
	if err := os.WriteFile(filepath.Join(primary.data(), "standby.signal"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if primary.cred != nil {
		_ = os.Chown(filepath.Join(primary.data(), "standby.signal"), int(primary.cred.Uid), int(primary.cred.Gid))
	}
	primary.start(t, port)
	if _, err := primary.admin.Exec(context.Background(), "SELECT pg_promote()"); err != nil {
		t.Fatal(err)
	}
	if _, err := primary.admin.Exec(context.Background(), "CREATE TABLE written_on_timeline_2 (id int)"); err != nil {
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

	primary.stop()
	eventually(t, func() bool { return probe().WalReceiver == nil }, "the standby's receiver is gone with its upstream")
	var restartpoint int
	if err := standby.admin.QueryRow(context.Background(), "SELECT timeline_id FROM pg_control_checkpoint()").Scan(&restartpoint); err != nil {
		t.Fatal(err)
	}
	if restartpoint != 1 {
		t.Fatalf("the standby's last restartpoint is on timeline %d: the test needs one still on timeline 1", restartpoint)
	}
	if st := probe(); st.Timeline != 2 {
		t.Fatalf("standby without its upstream: timeline %d, want 2 (the WAL it holds)", st.Timeline)
	}
}
