package proc

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The test binary is the reaper when asked to be, as pglab reap is.
func TestMain(m *testing.M) {
	if pidFile := os.Getenv("PROC_TEST_REAP_PIDFILE"); pidFile != "" {
		code, err := Reap(pidFile, "/bin/sh", []string{"-c", os.Getenv("PROC_TEST_REAP_SCRIPT")})
		if err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(99)
		}
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// The reaper adopts what its child leaves behind (as Patroni leaves the
// postmaster), reaps it, exits only once it is gone, with the child's exit
// code, and its pid file names the child, not itself.
func TestReapAdoptsAndReapsOrphans(t *testing.T) {
	dir := t.TempDir()
	pidFile, orphanFile := filepath.Join(dir, "child.pid"), filepath.Join(dir, "orphan.pid")
	// The child starts a sleeper in the background, records its pid and
	// exits at once, orphaning it.
	script := "sleep 0.5 & echo $! > " + orphanFile + "; exit 7"
	reaper := exec.Command(os.Args[0], "-test.run=^$")
	reaper.Env = append(os.Environ(), "PROC_TEST_REAP_PIDFILE="+pidFile, "PROC_TEST_REAP_SCRIPT="+script)
	if err := reaper.Start(); err != nil {
		t.Fatal(err)
	}
	orphan := 0
	for deadline := time.Now().Add(5 * time.Second); orphan == 0; time.Sleep(10 * time.Millisecond) {
		orphan = ReadPid(orphanFile)
		if time.Now().After(deadline) {
			t.Fatal("no orphan pid written within 5s")
		}
	}
	if child := ReadPid(pidFile); child == 0 || child == reaper.Process.Pid {
		t.Errorf("pid file names %d; want the child's pid, not the reaper's (%d)", child, reaper.Process.Pid)
	}
	// Once its parent has exited, the orphan's parent is the reaper.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		ppid, err := parentOf(orphan)
		if err != nil {
			t.Fatalf("orphan %d: %v (it should sleep 0.5 s)", orphan, err)
		}
		if ppid == reaper.Process.Pid {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("orphan %d has parent %d, not the reaper %d", orphan, ppid, reaper.Process.Pid)
		}
	}
	err := reaper.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 7 {
		t.Fatalf("reaper ended with %v; want the child's exit code 7", err)
	}
	// The reaper ends only when it has no children left: the orphan was
	// reaped by it, so it is gone, not a zombie waiting for init.
	if _, err := os.Stat("/proc/" + strconv.Itoa(orphan)); err == nil {
		t.Errorf("orphan %d still exists after the reaper ended", orphan)
	}
}

func parentOf(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return strconv.Atoi(fields[1])
}
