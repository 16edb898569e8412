package lab

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// A lab with network namespaces (Config.Netns) puts every Kubernetes
// site in a namespace of its own, joined to the host by a veth pair:
// the site's addresses (10.(100+slot).x, routed) are local inside it, and
// the host routes each site's blocks through its veth. Inside a site its
// processes reach each other whatever happens to the link; cutting the
// link (Partition) cuts the site off both ways, as a network partition
// does: its own PostgreSQL streaming out stops too, which the userland
// partition cannot do. Each site runs its own etcd inside, so a cut site's
// API server keeps serving the site. An unreachable route for the lab's whole
// block keeps traffic for a cut site on this host rather than following
// the default route out.

// IPBinary runs the network commands.
const IPBinary = "/usr/sbin/ip"

// siteEtcdPort is where each site's own etcd listens, inside its
// namespace (every namespace has its own loopback).
const siteEtcdPort = 2379

// NetnsName is the network namespace of a site of a lab.
func NetnsName(slot, index int) string { return fmt.Sprintf("pglab%d-%d", slot, index) }

// hostLink and siteLink name the two ends of a site's veth pair.
func hostLink(slot, index int) string { return fmt.Sprintf("plh%dx%d", slot, index) }
func siteLink(slot, index int) string { return fmt.Sprintf("pls%dx%d", slot, index) }

// linkAddrs are the /30 of a site's veth pair: the host's end, the site's.
func linkAddrs(slot, index int) (netip.Addr, netip.Addr) {
	b := [4]byte{10, byte(100 + slot), byte(200 + index), 1}
	host := netip.AddrFrom4(b)
	b[3] = 2
	return host, netip.AddrFrom4(b)
}

// RoutedBlock is the lab's routed block in a lab with namespaces (its
// members accept connections from it), "" otherwise.
func (s State) RoutedBlock() string {
	if !s.Netns {
		return ""
	}
	return labBlock(s.Slot)
}

// labBlock is the lab's whole routed block, unreachable from the host but through a site's link.
func labBlock(slot int) string { return fmt.Sprintf("10.%d.0.0/16", 100+slot) }

// siteBlocks are the /24s a site's addresses live in (node and load
// balancers, pods, services).
func siteBlocks(a SiteAddrs) []string {
	node := a.NodeIP().As4()
	var out []string
	for i := range 3 {
		out = append(out, fmt.Sprintf("10.%d.%d.0/24", node[1], int(node[2])+i))
	}
	return out
}

// ipCmd runs ip with args, in namespace ns when it is not empty.
func ipCmd(ns string, args ...string) error {
	if ns != "" {
		args = append([]string{"netns", "exec", ns, IPBinary}, args...)
	}
	out, err := exec.Command(IPBinary, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// netnsPreflight says what a namespaced lab lacks.
func netnsPreflight() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("a lab with network namespaces needs root (ip netns, veth pairs)")
	}
	if _, err := os.Stat(IPBinary); err != nil {
		return fmt.Errorf("%s: %w (install: apt-get install iproute2)", IPBinary, err)
	}
	return nil
}

// setUpNetwork makes the host side once per lab: forwarding between the
// sites' links, and the unreachable route for the lab's block.
func setUpNetwork(st *State) error {
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enable forwarding between the sites: %w", err)
	}
	_ = ipCmd("", "route", "del", "unreachable", labBlock(st.Slot)) // a crashed lab's
	return ipCmd("", "route", "add", "unreachable", labBlock(st.Slot), "metric", "4000")
}

// setUpSite makes a site's namespace, its veth pair and routes, removing
// what a crashed lab of the same slot left first.
func setUpSite(st *State, site SiteState) error {
	ns, host, peer := NetnsName(st.Slot, site.Index), hostLink(st.Slot, site.Index), siteLink(st.Slot, site.Index)
	tearDownSite(st.Slot, site.Index)
	hostIP, siteIP := linkAddrs(st.Slot, site.Index)
	steps := [][]string{
		{"", "netns", "add", ns},
		{"", "link", "add", host, "type", "veth", "peer", "name", peer},
		{"", "link", "set", peer, "netns", ns},
		{"", "addr", "add", hostIP.String() + "/30", "dev", host},
		{"", "link", "set", host, "up"},
		{ns, "link", "set", "lo", "up"},
		{ns, "addr", "add", siteIP.String() + "/30", "dev", peer},
		{ns, "link", "set", peer, "up"},
		{ns, "route", "add", "default", "via", hostIP.String()},
	}
	for _, b := range siteBlocks(st.Addrs(site)) {
		steps = append(steps, []string{ns, "route", "add", "local", b, "dev", "lo"})
	}
	for _, s := range steps {
		if err := ipCmd(s[0], s[1:]...); err != nil {
			return fmt.Errorf("site %s: %w", site.Name, err)
		}
	}
	return routeSite(st, site)
}

// routeSite routes the site's blocks through its link (again after a heal:
// taking a link down drops its routes).
func routeSite(st *State, site SiteState) error {
	_, siteIP := linkAddrs(st.Slot, site.Index)
	for _, b := range siteBlocks(st.Addrs(site)) {
		if err := ipCmd("", "route", "replace", b, "via", siteIP.String(), "dev", hostLink(st.Slot, site.Index)); err != nil {
			return fmt.Errorf("site %s: %w", site.Name, err)
		}
	}
	return nil
}

// cutLink takes the host's end of a site's link down: nothing passes
// either way. healLink brings it up and routes the site again.
func cutLink(st *State, site SiteState) error {
	return ipCmd("", "link", "set", hostLink(st.Slot, site.Index), "down")
}

func healLink(st *State, site SiteState) error {
	if err := ipCmd("", "link", "set", hostLink(st.Slot, site.Index), "up"); err != nil {
		return err
	}
	return routeSite(st, site)
}

// tearDownSite removes a site's namespace and link (the routes go with
// the link); what does not exist is no error.
func tearDownSite(slot, index int) {
	_ = ipCmd("", "link", "del", hostLink(slot, index))
	_ = ipCmd("", "netns", "del", NetnsName(slot, index))
}

// tearDownNetwork removes every site's namespace. The unreachable route
// for the lab's block stays: a client still holding the lab's kubeconfig
// or addresses then fails here rather than sending its traffic (a token,
// a password) out of the host by the default route. The next lab of the
// slot replaces it.
func tearDownNetwork(st *State) {
	for _, s := range st.KubeSites() {
		tearDownSite(st.Slot, s.Index)
	}
}

// InSite wraps a command so that it runs inside the site's namespace (a
// lab without namespaces runs it as it is): an agent placed in its site.
func (s State) InSite(site SiteState, path string, args ...string) (string, []string) {
	w := s.SiteWrapper(site)
	if w == nil {
		return path, args
	}
	return w[0], append(append(w[1:], path), args...)
}

// SiteWrapper is the command prefix that runs a command inside the site's
// namespace; nil in a lab without namespaces.
func (s State) SiteWrapper(site SiteState) []string {
	if !s.Netns || site.Patroni {
		return nil
	}
	return []string{IPBinary, "netns", "exec", NetnsName(s.Slot, site.Index)}
}

// startSiteEtcd starts a site's own etcd inside its namespace, its data
// beside the lab's (not under the site's directory, so a failed site
// keeps it, as a site keeps its disks).
func startSiteEtcd(st *State, site SiteState) error {
	p := Paths{st.Dir}
	data := filepath.Join(st.Dir, "etcd-"+site.Name)
	node := st.Addrs(site).NodeIP().String()
	client := fmt.Sprintf("http://127.0.0.1:%d,http://%s:%d", siteEtcdPort, node, siteEtcdPort)
	peer := fmt.Sprintf("http://127.0.0.1:%d", siteEtcdPort+1)
	name := "etcd-" + site.Name
	path, args := st.InSite(site, EtcdBinary, "--name=pglab", "--data-dir="+data,
		"--listen-client-urls="+client, "--advertise-client-urls="+fmt.Sprintf("http://127.0.0.1:%d", siteEtcdPort),
		"--listen-peer-urls="+peer, "--initial-advertise-peer-urls="+peer,
		"--initial-cluster=pglab="+peer,
		"--quota-backend-bytes=2147483648", "--snapshot-count=10000")
	_, err := startProc(name, path, args, p.Log(name), p.Pid(name), []string{"ETCD_LOG_LEVEL=warn"})
	return err
}

// CutBetween cuts the path between two sites of a lab with namespaces,
// both ways, leaving each reachable from every other site and from the
// host: inside each, the other's blocks are routed to nowhere. The
// partition a witness sees across, where only the link between the data
// sites fails. HealBetween ends it; both are idempotent.
func CutBetween(dir, a, b string) error {
	return routeBetween(dir, a, b, "replace")
}

// HealBetween ends a cut between two sites (CutBetween).
func HealBetween(dir, a, b string) error {
	return routeBetween(dir, a, b, "del")
}

func routeBetween(dir, a, b, verb string) error {
	st, err := Load(dir)
	if err != nil {
		return err
	}
	if !st.Netns {
		return fmt.Errorf("lab %s: a cut between two sites needs a lab with namespaces (pglab up --netns)", dir)
	}
	sa, okA := st.Site(a)
	sb, okB := st.Site(b)
	if !okA || !okB || a == b {
		return fmt.Errorf("lab %s: a cut between two sites needs two of its sites, not %q and %q", dir, a, b)
	}
	for _, pair := range [][2]SiteState{{sa, sb}, {sb, sa}} {
		from, to := pair[0], pair[1]
		for _, block := range siteBlocks(st.Addrs(to)) {
			err := ipCmd(NetnsName(st.Slot, from.Index), "route", verb, "unreachable", block)
			if err != nil && !(verb == "del" && strings.Contains(err.Error(), "No such process")) {
				return fmt.Errorf("site %s: the route to %s: %w", from.Name, to.Name, err)
			}
		}
	}
	return nil
}
