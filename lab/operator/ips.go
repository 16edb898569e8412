package operator

import (
	"encoding/json"
	"os"
	"sync"

	"github.com/pgtopo/pgtopo/lab"
)

// ipAllocator hands out the site's pod and load balancer addresses and
// remembers them on disk, so an operator restart keeps every address.
type ipAllocator struct {
	mu    sync.Mutex // a pass's workers allocate side by side
	path  string
	addrs lab.SiteAddrs
	m     map[string]string // owner → address
}

func (a *ipAllocator) load() {
	if a.m != nil {
		return
	}
	a.m = map[string]string{}
	if b, err := os.ReadFile(a.path); err == nil {
		_ = json.Unmarshal(b, &a.m)
	}
}

func (a *ipAllocator) save() error {
	b, _ := json.MarshalIndent(a.m, "", "  ")
	return os.WriteFile(a.path, b, 0o644)
}

func (a *ipAllocator) pod(owner string) (string, error) {
	return a.allocate("pod:"+owner, func(n int) (string, error) {
		ip, err := a.addrs.PodIP(n)
		return ip.String(), err
	})
}

func (a *ipAllocator) loadBalancer(owner string) (string, error) {
	return a.allocate("lb:"+owner, func(n int) (string, error) {
		ip, err := a.addrs.LoadBalancerIP(n)
		return ip.String(), err
	})
}

func (a *ipAllocator) release(owner string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.load()
	delete(a.m, "pod:"+owner)
	delete(a.m, "lb:"+owner)
	_ = a.save()
}

func (a *ipAllocator) allocate(owner string, nth func(int) (string, error)) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.load()
	if ip, ok := a.m[owner]; ok {
		return ip, nil
	}
	used := map[string]bool{}
	for _, ip := range a.m {
		used[ip] = true
	}
	for n := 0; ; n++ {
		ip, err := nth(n)
		if err != nil {
			return "", err
		}
		if !used[ip] {
			a.m[owner] = ip
			return ip, a.save()
		}
	}
}
