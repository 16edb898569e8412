// Package proc starts and stops the lab's long-lived processes: detached
// from the starter (their own session, so `pglab up` can exit), logging to a
// file, remembered by a pid file.
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Spec describes a process to start.
type Spec struct {
	Name    string // for messages
	Path    string
	Args    []string
	Env     []string // added to a minimal environment
	Dir     string
	LogFile string
	PidFile string
	// User to run as when the starter is root ("" = the starter's user).
	User string
}

// Start launches the process detached and writes its pid file.
func Start(s Spec) (int, error) {
	logf, err := os.OpenFile(s.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, fmt.Errorf("%s: log: %w", s.Name, err)
	}
	defer logf.Close()
	cmd := exec.Command(s.Path, s.Args...)
	cmd.Dir = s.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "LC_ALL=C.UTF-8"}, s.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if s.User != "" && os.Geteuid() == 0 {
		cred, home, err := credential(s.User)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", s.Name, err)
		}
		cmd.SysProcAttr.Credential = cred
		cmd.Env = append(cmd.Env, "HOME="+home, "USER="+s.User)
	} else {
		cmd.Env = append(cmd.Env, "HOME="+os.Getenv("HOME"))
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("%s: start %s: %w", s.Name, s.Path, err)
	}
	pid := cmd.Process.Pid
	// Reap it if it dies while we live; otherwise init adopts it.
	go func() { _ = cmd.Wait() }()
	if s.PidFile != "" {
		if err := os.WriteFile(s.PidFile, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			return 0, fmt.Errorf("%s: pid file: %w", s.Name, err)
		}
	}
	return pid, nil
}

func credential(name string) (*syscall.Credential, string, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, "", fmt.Errorf("user %s: %w (install postgresql-15, which creates it)", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, u.HomeDir, nil
}

// ReadPid reads a pid file; 0 when there is none.
func ReadPid(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// Alive reports whether pid runs (a zombie does not count).
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] != 'Z' && b[i+2] != 'X'
}

// Stop sends SIGTERM to the process (and its session's group), waits up to
// grace, then SIGKILLs what is left.
func Stop(pid int, grace time.Duration) {
	if !Alive(pid) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !Alive(pid) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 100 && Alive(pid); i++ {
		time.Sleep(20 * time.Millisecond)
	}
}

// Mentioning lists the live processes whose command line or working
// directory mentions dir: what a lab left running, whoever started it.
func Mentioning(dir string) []int {
	dir = filepath.Clean(dir)
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	spare := ancestors()
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || spare[pid] || !Alive(pid) {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		cwd, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
		if bytes.Contains(cmdline, []byte(dir)) || cwd == dir || strings.HasPrefix(cwd, dir+"/") {
			out = append(out, pid)
		}
	}
	return out
}

// ancestors returns this process and its parents: `sh -c "pglab down --dir
// DIR"` mentions DIR too, and must survive.
func ancestors() map[int]bool {
	out := map[int]bool{}
	for pid := os.Getpid(); pid > 1 && !out[pid]; {
		out[pid] = true
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			break
		}
		i := bytes.LastIndexByte(b, ')')
		fields := strings.Fields(string(b[i+1:]))
		if len(fields) < 2 {
			break
		}
		pid, _ = strconv.Atoi(fields[1])
	}
	return out
}

// ErrNotRunning is returned for a process that should run but does not.
var ErrNotRunning = errors.New("not running")
