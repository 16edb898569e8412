// Package ports picks TCP ports for the lab's servers.
package ports

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// Ports are picked in [lowest, highest): above well-known services, below
// Kubernetes' NodePort range (30000-32767, which the lab's Services use).
const (
	lowest  = 20000
	highest = 30000
)

// Free returns n distinct ports on 127.0.0.1 that nothing listens on, from
// below the NodePort and the kernel's ephemeral range. A port from that range (what
// listening on port 0 hands out) can be taken by any outgoing connection
// between the pick and the server's own bind: that failed a lab's etcd
// once, with "bind: address already in use".
func Free(n int) ([]int, error) {
	top := min(highest, ephemeralStart())
	span := top - lowest
	if span < n {
		return nil, fmt.Errorf("ports: %d free ports wanted below the ephemeral range, which starts at %d", n, top)
	}
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	var out []int
	start := rand.IntN(span)
	for i := 0; i < span && len(out) < n; i++ {
		port := lowest + (start+i)%span
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // taken
		}
		held = append(held, l)
		out = append(out, port)
	}
	if len(out) < n {
		return nil, fmt.Errorf("ports: only %d of %d free ports between %d and %d", len(out), n, lowest, top)
	}
	return out, nil
}

// ephemeralStart is the first port of the kernel's ephemeral range
// (32768 when it cannot be read).
func ephemeralStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 32768
	}
	lo, err := strconv.Atoi(f[0])
	if err != nil || lo <= lowest {
		return 32768
	}
	return lo
}
