package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Reap runs path as its init would: a child subreaper that forwards
// termination signals to it and reaps every process orphaned under it, at
// once. For a pod, when path ends what it left running is killed, as a
// pod's processes end with its main one. It returns path's exit code once path
// and all its orphans are gone.
//
// Patroni starts PostgreSQL detached, so the postmaster is an orphan, and
// a demotion waits for it to be reaped. In a pod dumb-init or tini reaps
// it, on a VM systemd does, both at once; this machine's own init reaps
// orphans only every two seconds or so, which would add that much to
// every stop of PostgreSQL in the lab and to every switchover measured on it.
//
// pidFile receives path's pid (not this process's), so that killing the
// pid in it kills Patroni, as on a real node.
func Reap(pidFile, path string, args []string, pod bool) (int, error) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return 0, fmt.Errorf("reap: become a child subreaper: %w", err)
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT)
	cmd := exec.Command(path, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("reap: start %s: %w", path, err)
	}
	child := cmd.Process.Pid
	go func() {
		for s := range sigs {
			_ = cmd.Process.Signal(s)
		}
	}()
	if pidFile != "" {
		if err := writePidFile(pidFile, child); err != nil {
			_ = cmd.Process.Kill()
			return 0, err
		}
	}
	code := 0
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.ECHILD) {
			return code, nil
		}
		if err != nil {
			return code, fmt.Errorf("reap: wait: %w", err)
		}
		if pid == child {
			code = ws.ExitStatus()
			if ws.Signaled() {
				code = 128 + int(ws.Signal())
			}
			// A pod ends with its main process: what it left running (the
			// postmaster Patroni started) is killed with it, as the
			// container runtime does. Left running, a primary whose Patroni
			// died would take writes while its site's other member took
			// the lead (found by the soak's kill -9 of Patroni). On a VM,
			// Patroni's systemd unit (KillMode=process) leaves it running.
			if pod {
				killOrphans()
			}
		}
	}
}

// killOrphans sends SIGKILL to every process whose parent is this one.
func killOrphans() {
	me := os.Getpid()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, err := parentPid(pid); err == nil && ppid == me {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// parentPid reads a process's parent from /proc.
func parentPid(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, fmt.Errorf("/proc/%d/stat: too short", pid)
	}
	return strconv.Atoi(f[1])
}

// writePidFile replaces pidFile in one step, so no reader sees it empty.
func writePidFile(pidFile string, pid int) error {
	tmp := pidFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return fmt.Errorf("reap: pid file: %w", err)
	}
	if err := os.Rename(tmp, pidFile); err != nil {
		return fmt.Errorf("reap: pid file: %w", err)
	}
	return nil
}

// StartReaped starts s under `reaper reap` (see Reap) and waits until the
// pid file names s's own process. The pid file is the reaper's to write.
func StartReaped(s Spec, reaper string, pod bool) (int, error) {
	pidFile := s.PidFile
	if pidFile == "" {
		return 0, fmt.Errorf("%s: a reaped process needs a pid file", s.Name)
	}
	if err := os.Remove(pidFile); err != nil && !os.IsNotExist(err) {
		return 0, fmt.Errorf("%s: pid file: %w", s.Name, err)
	}
	wrapped := s
	wrapped.Path = reaper
	wrapped.Args = append([]string{"reap", "--pid-file", pidFile, "--pod=" + strconv.FormatBool(pod), "--", s.Path}, s.Args...)
	wrapped.PidFile = ""
	if _, err := Start(wrapped); err != nil {
		return 0, err
	}
	const bound = 5 * time.Second
	deadline := time.Now().Add(bound)
	for {
		if pid := ReadPid(pidFile); Alive(pid) {
			return pid, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%s: no live process in %s %s after starting it under %s", s.Name, filepath.Base(pidFile), bound, filepath.Base(reaper))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
