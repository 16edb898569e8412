package operator

import (
	"log/slog"
	"net"
	"sync"

	"github.com/pgtopo/pgtopo/lab"
)

// proxies makes Service addresses reachable: one TCP listener per address
// (ClusterIP:5432, node IP:nodePort, LoadBalancer IP:5432), forwarding each
// new connection to whatever its target function names now, like kube-proxy
// or HAProxy in front of Patroni. Open connections keep their backend.
type proxies struct {
	log *slog.Logger
	// cut holds and freezes connections while the site is partitioned.
	cut *lab.Cutoff
	mu  sync.Mutex
	by  map[string]*proxy // listen address → proxy
}

type proxy struct {
	ln     net.Listener
	target func() string // "" refuses the connection
}

func newProxies(log *slog.Logger) *proxies {
	return &proxies{log: log, by: map[string]*proxy{}}
}

// ensure listens on addr (once) and routes new connections with target.
func (ps *proxies) ensure(addr string, target func() string) error {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if p, ok := ps.by[addr]; ok {
		p.target = target
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	p := &proxy{ln: ln, target: target}
	ps.by[addr] = p
	go ps.serve(p)
	ps.log.Info("proxy listening", "addr", addr)
	return nil
}

// keep closes every listener whose address is not in want.
func (ps *proxies) keep(want map[string]bool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for addr, p := range ps.by {
		if !want[addr] {
			p.ln.Close()
			delete(ps.by, addr)
			ps.log.Info("proxy closed", "addr", addr)
		}
	}
}

func (ps *proxies) closeAll() { ps.keep(nil) }

func (ps *proxies) serve(p *proxy) {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		ps.mu.Lock()
		to := p.target()
		ps.mu.Unlock()
		if to == "" {
			c.Close()
			continue
		}
		go ps.cut.Forward(c, to)
	}
}
