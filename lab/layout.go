// Package lab runs real multi-site Kubernetes + Patroni + PostgreSQL on one
// machine: one etcd, per site a kube-apiserver and a lab operator that makes
// postgresql CRs real. It is test and demo infrastructure; pgtopo itself
// never knows it runs against a lab.
package lab

import (
	"fmt"
	"net/netip"
	"path/filepath"
)

// Addresses: every lab takes a slot s, and inside it every site i a block of
// loopback addresses, so labs and sites never collide:
//
//	node IP          127.(100+s).(10i+10).1
//	LoadBalancer IPs 127.(100+s).(10i+10).100-199
//	pod IPs          127.(100+s).(10i+11).1-254
//	Service CIDR     127.(100+s).(10i+12).0/24
const (
	MaxSlots = 100
	MaxSites = 9
)

// Site addresses of one site of one lab. Routed addresses (a lab with
// network namespaces) take 10.(100+s) in place of 127.(100+s): loopback
// addresses never leave a namespace.
type SiteAddrs struct {
	Slot, Index int
	Routed      bool
}

func (a SiteAddrs) octet1() byte {
	if a.Routed {
		return 10
	}
	return 127
}

func (a SiteAddrs) octet2() byte { return byte(100 + a.Slot) }
func (a SiteAddrs) block() byte  { return byte(10*a.Index + 10) }

// NodeIP is the site's one Node's InternalIP.
func (a SiteAddrs) NodeIP() netip.Addr {
	return netip.AddrFrom4([4]byte{a.octet1(), a.octet2(), a.block(), 1})
}

// LoadBalancerIP is the n-th (0-based) address of the site's pool.
func (a SiteAddrs) LoadBalancerIP(n int) (netip.Addr, error) {
	if n < 0 || n >= 100 {
		return netip.Addr{}, fmt.Errorf("load balancer pool of site %d exhausted", a.Index)
	}
	return netip.AddrFrom4([4]byte{a.octet1(), a.octet2(), a.block(), byte(100 + n)}), nil
}

// PodIP is the n-th (0-based) pod address of the site.
func (a SiteAddrs) PodIP(n int) (netip.Addr, error) {
	if n < 0 || n >= 254 {
		return netip.Addr{}, fmt.Errorf("pod addresses of site %d exhausted", a.Index)
	}
	return netip.AddrFrom4([4]byte{a.octet1(), a.octet2(), a.block() + 1, byte(1 + n)}), nil
}

// ServiceCIDR is the site's --service-cluster-ip-range.
func (a SiteAddrs) ServiceCIDR() netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{a.octet1(), a.octet2(), a.block() + 2, 0}), 24)
}

// Paths inside a lab directory.
type Paths struct{ Dir string }

func (p Paths) State() string                { return filepath.Join(p.Dir, "state.json") }
func (p Paths) Kubeconfig() string           { return filepath.Join(p.Dir, "kubeconfig") }
func (p Paths) Logs() string                 { return filepath.Join(p.Dir, "logs") }
func (p Paths) Log(name string) string       { return filepath.Join(p.Dir, "logs", name+".log") }
func (p Paths) Pids() string                 { return filepath.Join(p.Dir, "pids") }
func (p Paths) Pid(name string) string       { return filepath.Join(p.Dir, "pids", name+".pid") }
func (p Paths) PKI() string                  { return filepath.Join(p.Dir, "pki") }
func (p Paths) Etcd() string                 { return filepath.Join(p.Dir, "etcd") }
func (p Paths) Site(site string) string      { return filepath.Join(p.Dir, "sites", site) }
func (p Paths) SiteCerts(site string) string { return filepath.Join(p.Dir, "sites", site, "certs") }

// AuditLog is where a site's kube-apiserver writes the audit events of
// service accounts: what a workload like pgtopo's Job actually called.
func (p Paths) AuditLog(site string) string { return filepath.Join(p.Dir, "sites", site, "audit.log") }

// AuditPolicy is the lab's audit policy file.
func (p Paths) AuditPolicy() string { return filepath.Join(p.Dir, "audit-policy.yaml") }
