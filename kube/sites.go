package kube

import (
	"sync"
	"time"
)

// Sites hands out one Site per context and reuses it for a while, so the
// many snapshots of a run (a switchover polls several times a second) share
// clients and their connections instead of re-reading the kubeconfig and
// opening new TLS sessions each time. Entries expire after TTL so a
// kubeconfig whose tokens rotate (a mounted Secret) is read again.
type Sites struct {
	Loader Loader
	// TTL is how long a Site is reused (default 5 minutes).
	TTL time.Duration

	mu    sync.Mutex
	sites map[string]cachedSite
}

type cachedSite struct {
	site    *Site
	created time.Time
}

// Connect returns the Site of a context, building it when missing or old.
// Failures are not remembered: the next call tries again.
func (s *Sites) Connect(contextName string) (*Site, error) {
	ttl := s.TTL
	if ttl == 0 {
		ttl = 5 * time.Minute
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.sites[contextName]; ok && time.Since(c.created) < ttl {
		return c.site, nil
	}
	site, err := s.Loader.Connect(contextName)
	if err != nil {
		return nil, err
	}
	if s.sites == nil {
		s.sites = map[string]cachedSite{}
	}
	s.sites[contextName] = cachedSite{site: site, created: time.Now()}
	return site, nil
}
