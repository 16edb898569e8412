package proc

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// The test binary is the reaper when asked to be, as pglab reap is.
func TestMain(m *testing.M) {
	if pidFile := os.Getenv("PROC_TEST_REAP_PIDFILE"); pidFile != "" {
		code, err := Reap(pidFile, "/bin/sh", []string{"-c", os.Getenv("PROC_TEST_REAP_SCRIPT")}, os.Getenv("PROC_TEST_REAP_POD") != "")
		if err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(99)
		}
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// The reaper's pid file names its child, not itself; for a pod, when the
// child ends, what it left running (as Patroni leaves the postmaster) is killed
// and reaped, as a pod's processes end with its main one, and the reaper
// exits with the child's exit code once they are gone.
func TestReapEndsWhatTheChildLeft(t *testing.T) {
	dir := t.TempDir()
	pidFile, orphanFile := filepath.Join(dir, "child.pid"), filepath.Join(dir, "orphan.pid")
	// The child starts a long sleeper in the background, records its pid
	// and exits, orphaning it.
	script := "sleep 30 & echo $! > " + orphanFile + "; sleep 0.2; exit 7"
	reaper := exec.Command(os.Args[0], "-test.run=^$")
	reaper.Env = append(os.Environ(), "PROC_TEST_REAP_PIDFILE="+pidFile, "PROC_TEST_REAP_SCRIPT="+script, "PROC_TEST_REAP_POD=1")
	began := time.Now()
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
	err := reaper.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 7 {
		t.Fatalf("reaper ended with %v; want the child's exit code 7", err)
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Fatalf("the reaper ended %s after its start: it waited for the orphan's 30 s sleep instead of ending it", took)
	}
	// Killed and reaped by the reaper: gone, not a zombie waiting for init.
	if _, err := os.Stat("/proc/" + strconv.Itoa(orphan)); err == nil {
		t.Errorf("orphan %d still exists after the reaper ended", orphan)
	}
}
