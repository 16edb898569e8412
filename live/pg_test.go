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
}

func startPostgres(t *testing.T) server {
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
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("user postgres: %v (apt-get install postgresql-15 creates it)", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	asPostgres := func(cmd *exec.Cmd) *exec.Cmd {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		return cmd
	}
	const password = "probe-test-secret"
	pwfile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwfile, []byte(password), 0o644); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	if out, err := asPostgres(exec.Command(filepath.Join(pgBin, "initdb"), "-D", data, "-U", "postgres", "--auth=scram-sha-256", "--pwfile", pwfile)).CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := asPostgres(exec.Command(filepath.Join(pgBin, "postgres"), "-D", data, "-p", fmt.Sprint(port), "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="+dir))
	logf, _ := os.Create(filepath.Join(dir, "postgres.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	})
	s := server{ep: snapshot.Endpoint{Host: "127.0.0.1", Port: port}, password: password}
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := pgx.Connect(context.Background(), fmt.Sprintf("postgres://postgres:%s@%s/postgres?application_name=admin", password, s.ep))
		if err == nil {
			t.Cleanup(func() { c.Close(context.Background()) })
			s.admin = c
			return s
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "postgres.log"))
			t.Fatalf("postgres did not start: %v\n%s", err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// probeSessions lists the backend pids of pgtopo's sessions.
func (s server) probeSessions(t *testing.T) []int {
	t.Helper()
	rows, _ := s.admin.Query(context.Background(), "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgtopo' ORDER BY pid")
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	return pids
}

func (s server) terminate(t *testing.T, pid int) {
	t.Helper()
	if _, err := s.admin.Exec(context.Background(), "SELECT pg_terminate_backend($1, 5000)", pid); err != nil {
		t.Fatal(err)
	}
}

func (s server) probe(t *testing.T, p PgxProber) *snapshot.PGState {
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
