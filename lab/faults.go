package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pgtopo/pgtopo/lab/proc"
)

// Site faults, for disaster-recovery drills (docs/disaster-recovery.md).
//
// A failed site is lost: its kube-apiserver, gateway, operator and every
// Patroni and PostgreSQL process are killed, so its addresses refuse
// connections. A partitioned site keeps running (its Patroni keeps its
// leader lock in the site's own DCS and a client inside the site can still
// write to its primary's pod address), but nothing outside reaches its
// apiserver or database addresses: the lab's gateway and Service proxies,
// which are the only way in, hold new connections and freeze open ones, as
// dropped packets would. The lab stands in for the network here; see
// Cutoff for what it does not cut.
const (
	FaultNone        = ""
	FaultFailed      = "failed"
	FaultPartitioned = "partitioned"
)

// Fault is what a site suffers now.
type Fault struct {
	Kind  string    `json:"kind"`
	Since time.Time `json:"since"`
	// Link says a partition is the site's network link taken down (a lab
	// with namespaces), not the userland cut of its entry points.
	Link bool `json:"link,omitempty"`
}

// FaultFile is where a site's fault is recorded.
func (p Paths) FaultFile(site string) string { return filepath.Join(p.Site(site), "fault.json") }

// ReadFault returns a site's fault; the zero Fault when it has none.
func ReadFault(dir, site string) Fault {
	var f Fault
	b, err := os.ReadFile(Paths{dir}.FaultFile(site))
	if err == nil {
		_ = json.Unmarshal(b, &f)
	}
	return f
}

func writeFault(dir, site string, f Fault) error {
	path := Paths{dir}.FaultFile(site)
	if f.Kind == FaultNone {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	b, _ := json.Marshal(f)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func loadSite(dir, site string) (*State, SiteState, error) {
	st, err := Load(dir)
	if err != nil {
		return nil, SiteState{}, err
	}
	s, ok := st.Site(site)
	if !ok {
		var names []string
		for _, x := range st.Sites {
			names = append(names, x.Name)
		}
		return nil, SiteState{}, fmt.Errorf("lab %s has no site %q (sites: %s)", dir, site, strings.Join(names, ", "))
	}
	return st, s, nil
}

// Fail loses a site: every process of it is killed at once (SIGKILL, no
// shutdown), as a power loss would. Data directories stay for Heal.
func Fail(dir, site string) error {
	st, s, err := loadSite(dir, site)
	if err != nil {
		return err
	}
	if f := ReadFault(st.Dir, s.Name); f.Kind == FaultFailed {
		return fmt.Errorf("site %s failed already (since %s); pglab heal --dir %s %s brings it back", s.Name, f.Since.UTC().Format(time.RFC3339), dir, s.Name)
	}
	p := Paths{st.Dir}
	// The operator first, so that nothing restarts a member meanwhile.
	for _, name := range []string{"operator-" + s.Name, "vm-" + s.Name, "gateway-" + s.Name, "apiserver-" + s.Name} {
		kill(proc.ReadPid(p.Pid(name)))
	}
	siteDir := p.Site(s.Name) + "/"
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := processesUnder(siteDir)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("site %s: processes %v still run 10s after SIGKILL", s.Name, left)
		}
		for _, pid := range left {
			kill(pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return writeFault(st.Dir, s.Name, Fault{Kind: FaultFailed, Since: time.Now().UTC()})
}

func kill(pid int) {
	if proc.Alive(pid) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// processesUnder lists the processes whose command line names a path
// under dir (apiserver certificates, Patroni configurations) or whose
// working directory is under it (PostgreSQL, in its data directory).
func processesUnder(dir string) []int {
	var out []int
	for _, pid := range proc.Mentioning(strings.TrimSuffix(dir, "/")) {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		cwd, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
		if strings.Contains(string(cmdline), dir) || strings.HasPrefix(cwd+"/", dir) {
			out = append(out, pid)
		}
	}
	return out
}

// SiteProcesses lists the processes of one site of a lab (every site when
// site is empty) whose command line contains pattern: Patroni and
// PostgreSQL processes, told apart from another lab's by their command
// line or working directory.
func SiteProcesses(dir, site, pattern string) ([]int, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	under := filepath.Join(abs, "sites") + "/"
	if site != "" {
		under = Paths{abs}.Site(site) + "/"
	}
	var out []int
	for _, pid := range processesUnder(under) {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(strings.ReplaceAll(string(cmdline), "\x00", " "), pattern) {
			out = append(out, pid)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("lab %s: no process of %s matches %q", abs, orAll(site), pattern)
	}
	return out, nil
}

func orAll(site string) string {
	if site == "" {
		return "any site"
	}
	return "site " + site
}

// Partition cuts a site off from everything outside it.
func Partition(dir, site string) error {
	st, s, err := loadSite(dir, site)
	if err != nil {
		return err
	}
	switch f := ReadFault(st.Dir, s.Name); f.Kind {
	case FaultFailed:
		return fmt.Errorf("site %s is failed, not running: pglab heal --dir %s %s first", s.Name, dir, s.Name)
	case FaultPartitioned:
		return nil
	}
	if st.Netns && !s.Patroni {
		if err := writeFault(st.Dir, s.Name, Fault{Kind: FaultPartitioned, Since: time.Now().UTC(), Link: true}); err != nil {
			return err
		}
		return cutLink(st, s)
	}
	if err := writeFault(st.Dir, s.Name, Fault{Kind: FaultPartitioned, Since: time.Now().UTC()}); err != nil {
		return err
	}
	settle()
	return nil
}

// settle waits until the site's entry points have seen a changed fault
// (they look every CutoffPoll), so that a partition or its end is in
// effect when the command returns.
func settle() { time.Sleep(10 * CutoffPoll) }

// Heal ends a site's fault: a partition ends at once (the gateway and
// proxies pass traffic again within CutoffPoll); a failed site restarts its
// apiserver, gateway and operator, and the operator restarts the members on
// their existing data, as a site coming back from a power loss does. A
// failed Patroni site restarts its supervisor, which starts the members on
// their data, as its VMs booting would.
func Heal(ctx context.Context, dir, site string) error { return HealAfter(ctx, dir, site, 0) }

// HealAfter heals a site whose workloads (the operator and the members it
// starts) come back a while after its control plane answers, as in a real
// site where the kubelets restart pods after the API server is up: during
// that time the site's API answers and its databases do not.
func HealAfter(ctx context.Context, dir, site string, workloadsAfter time.Duration) error {
	st, s, err := loadSite(dir, site)
	if err != nil {
		return err
	}
	f := ReadFault(st.Dir, s.Name)
	if f.Kind != FaultFailed {
		if f.Link {
			if err := healLink(st, s); err != nil {
				return err
			}
		}
		if err := writeFault(st.Dir, s.Name, Fault{}); err != nil {
			return err
		}
		if f.Kind == FaultPartitioned {
			settle()
		}
		return nil
	}
	if s.Patroni {
		if err := writeFault(st.Dir, s.Name, Fault{}); err != nil {
			return err
		}
		return startSupervisor(st, s)
	}
	k := pki{dir: Paths{st.Dir}.PKI()}
	caPEM, err := os.ReadFile(k.caCert())
	if err != nil {
		return err
	}
	token, err := adminToken(Paths{st.Dir})
	if err != nil {
		return err
	}
	if err := startAPIServer(ctx, st, s, k, caPEM, token); err != nil {
		return err
	}
	if err := writeFault(st.Dir, s.Name, Fault{}); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(workloadsAfter):
	}
	return startOperator(st, s)
}

// CutoffPoll is how often gateways and proxies look at their site's fault.
const CutoffPoll = 100 * time.Millisecond

// Cutoff tells a site's entry points (its apiserver gateway, its Service
// proxies) whether the site is partitioned. What the lab does not cut: a
// partitioned site's own Patroni streaming out to another site's proxy (it
// cannot tell one caller from another on a shared loopback), so partition
// the site whose primary it is, as the drills do.
type Cutoff struct {
	cut atomic.Bool
}

// WatchCutoff follows a site's fault file until ctx ends.
func WatchCutoff(ctx context.Context, dir, site string) *Cutoff {
	c := &Cutoff{}
	cutNow := func() bool { f := ReadFault(dir, site); return f.Kind == FaultPartitioned && !f.Link }
	c.cut.Store(cutNow())
	go func() {
		t := time.NewTicker(CutoffPoll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				c.cut.Store(cutNow())
			}
		}
	}()
	return c
}

// Cut reports whether the site is cut off now.
func (c *Cutoff) Cut() bool { return c != nil && c.cut.Load() }

// hold waits while the site is cut off.
func (c *Cutoff) hold() {
	for c.Cut() {
		time.Sleep(CutoffPoll / 2)
	}
}

// Forward carries one accepted connection to backend, holding it while the
// site is cut off and freezing it whenever the site is cut off later.
func (c *Cutoff) Forward(client net.Conn, backend string) {
	defer client.Close()
	c.hold()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	b, err := (&net.Dialer{}).DialContext(ctx, "tcp", backend)
	cancel()
	if err != nil {
		return
	}
	defer b.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				c.hold()
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(b, client)
	go pipe(client, b)
	<-done
	<-done
}

// ServeGateway is a site's apiserver gateway: what every client outside the
// site (pgtopo, kubectl) reaches through the kubeconfig; the site's own
// operator uses the apiserver's internal port.
func ServeGateway(ctx context.Context, dir, site string) error {
	st, s, err := loadSite(dir, site)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", st.GatewayAddr(s))
	if err != nil {
		return fmt.Errorf("site %s gateway: %w", s.Name, err)
	}
	go func() { <-ctx.Done(); ln.Close() }()
	cut := WatchCutoff(ctx, st.Dir, s.Name)
	backend := fmt.Sprintf("127.0.0.1:%d", s.APIServerInternalPort)
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go cut.Forward(conn, backend)
	}
}
