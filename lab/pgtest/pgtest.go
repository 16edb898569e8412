// Package pgtest runs throwaway PostgreSQL 15 servers for tests that need
// a real one: initdb, start and stop on a port, base backups, promotion.
package pgtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtopo/pgtopo/lab/ports"
	"github.com/pgtopo/pgtopo/snapshot"
)

// Bin is where Debian's postgresql-15 package puts the server programs.
const Bin = "/usr/lib/postgresql/15/bin"

// Password is every test server's postgres password.
const Password = "probe-test-secret"

// Server is one PostgreSQL data directory and, when started, its server,
// with SCRAM authentication on 127.0.0.1, serving TLS with a certificate
// for 127.0.0.1 and localhost from the tests' CA (see CA).
type Server struct {
	Endpoint snapshot.Endpoint
	// Admin is the test's own session while the server runs.
	Admin *pgx.Conn
	// Plaintext, set before it starts, runs the server with ssl=off.
	Plaintext bool
	dir       string // owned by the server's user; the data is dir/data
	cred      *syscall.Credential
	cmd       *exec.Cmd
}

// Start makes a new primary and starts it on a free port.
func Start(t testing.TB) *Server {
	t.Helper()
	return start(t, New(t))
}

// StartPlaintext makes a new primary that serves no TLS.
func StartPlaintext(t testing.TB) *Server {
	t.Helper()
	s := New(t)
	s.Plaintext = true
	return start(t, s)
}

func start(t testing.TB, s *Server) *Server {
	t.Helper()
	pwfile := filepath.Join(s.dir, "pw")
	if err := os.WriteFile(pwfile, []byte(Password), 0o644); err != nil {
		t.Fatal(err)
	}
	s.Run(t, "initdb", "-D", s.Data(), "-U", "postgres", "--auth=scram-sha-256", "--pwfile", pwfile)
	s.StartOn(t, FreePort(t))
	return s
}

// Standby makes a base backup of primary that streams from it, and starts
// it on a free port.
func Standby(t testing.TB, primary *Server) *Server {
	t.Helper()
	s := New(t)
	s.Run(t, "pg_basebackup", "-D", s.Data(), "-h", primary.Endpoint.Host, "-p", fmt.Sprint(primary.Endpoint.Port), "-U", "postgres", "-R", "-X", "stream")
	s.StartOn(t, FreePort(t))
	return s
}

// New makes the directory of a server not created yet.
func New(t testing.TB) *Server {
	t.Helper()
	if _, err := os.Stat(filepath.Join(Bin, "postgres")); err != nil {
		t.Fatalf("PostgreSQL 15 is missing (%v): run make deps (apt-get install postgresql-15)", err)
	}
	dir, err := os.MkdirTemp("", "pgtopo-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &Server{dir: dir}
	// PostgreSQL refuses to run as root; the postgres user that the
	// package creates runs it then, in a directory it owns.
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

// Data is the data directory.
func (s *Server) Data() string { return filepath.Join(s.dir, "data") }

// Run runs one of PostgreSQL's programs as the server's user.
func (s *Server) Run(t testing.TB, program string, args ...string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(Bin, program), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	cmd.Env = append(os.Environ(), "PGPASSWORD="+Password)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", program, err, out)
	}
}

// WriteFile writes a file into the data directory, owned by the server's
// user.
func (s *Server) WriteFile(t testing.TB, name string, data []byte) {
	t.Helper()
	s.writeOwned(t, filepath.Join(s.Data(), name), data)
}

func (s *Server) writeOwned(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if s.cred != nil {
		if err := os.Chown(path, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
}

// FreePort is a TCP port nothing listens on right now, outside the range
// outgoing connections take theirs from.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := ports.Free(1)
	if err != nil {
		t.Fatal(err)
	}
	return p[0]
}

// StartOn runs the server on port and waits (30 s at most) until it takes
// sessions.
func (s *Server) StartOn(t testing.TB, port int) {
	t.Helper()
	args := []string{"-D", s.Data(), "-p", fmt.Sprint(port), "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=" + s.dir}
	if !s.Plaintext {
		crt, key := s.serving(t)
		args = append(args, "-c", "ssl=on", "-c", "ssl_cert_file="+crt, "-c", "ssl_key_file="+key)
	}
	cmd := exec.Command(filepath.Join(Bin, "postgres"), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	logf, err := os.OpenFile(filepath.Join(s.dir, "postgres.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.cmd = cmd
	t.Cleanup(s.Stop)
	s.Endpoint = snapshot.Endpoint{Host: "127.0.0.1", Port: port}
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := pgx.Connect(context.Background(), s.URL("admin"))
		if err == nil {
			s.Admin = c
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "postgres.log"))
			t.Fatalf("postgres did not start within 30s: %v\n%s", err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// URL is a connection URL as postgres, with an application name.
func (s *Server) URL(application string) string {
	return fmt.Sprintf("postgres://postgres:%s@%s/postgres?application_name=%s", Password, s.Endpoint, application)
}

// Stop shuts the server down (fast) and waits for it.
func (s *Server) Stop() { s.stop(os.Interrupt) }

// StopImmediate shuts the server down with an immediate shutdown (no
// shutdown checkpoint, crash recovery at the next start), as Patroni
// demotes a leader to a standby cluster's leader, and waits for it.
func (s *Server) StopImmediate() { s.stop(syscall.SIGQUIT) }

// stop sends the postmaster sig (SIGINT: fast shutdown, SIGQUIT:
// immediate) and waits for it to exit.
func (s *Server) stop(sig os.Signal) {
	if s.cmd == nil {
		return
	}
	if s.Admin != nil {
		s.Admin.Close(context.Background())
		s.Admin = nil
	}
	_ = s.cmd.Process.Signal(sig)
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Restart stops the server and starts it again on the same port.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	port := s.Endpoint.Port
	s.Stop()
	s.StartOn(t, port)
}
