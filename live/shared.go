package live

import (
	"context"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/pgtopo/pgtopo/topology"
)

// Shared holds the reads that every topology in a Kubernetes site has in
// common, for all the observers of one process: a fleet's, and a reconcile
// loop's from cycle to cycle. The operator check and the CA bundles hold
// for flavorCheckEvery, the node list for nodesEvery; only successful
// reads are kept, and concurrent observers wait for one read rather than
// each making their own. Patroni sites share nothing: their reads are
// their own clusters'.
type Shared struct {
	mu      sync.Mutex
	entries map[string]*sharedRead
}

// sharedRead is one read, done or under way.
type sharedRead struct {
	done chan struct{}
	at   time.Time
	val  any
	err  error
}

// nodesEvery is how long a site's node list holds for every observer
// sharing it: about one look of a fleet, far shorter than nodes come and go.
const nodesEvery = 2 * time.Second

// read returns key's value read within ttl, or reads it once for every
// caller waiting on it. A failed read is returned to the callers that
// waited on it and not kept.
func (s *Shared) read(ctx context.Context, key string, ttl time.Duration, read func() (any, error)) (any, error) {
	s.mu.Lock()
	if s.entries == nil {
		s.entries = map[string]*sharedRead{}
	}
	e, ok := s.entries[key]
	if ok {
		select {
		case <-e.done:
			if e.err == nil && time.Since(e.at) < ttl {
				s.mu.Unlock()
				return e.val, nil
			}
			ok = false
		default:
		}
	}
	if !ok {
		e = &sharedRead{done: make(chan struct{})}
		s.entries[key] = e
		s.mu.Unlock()
		e.val, e.err = read()
		e.at = time.Now()
		close(e.done)
		if e.err != nil {
			s.mu.Lock()
			if s.entries[key] == e {
				delete(s.entries, key)
			}
			s.mu.Unlock()
		}
		return e.val, e.err
	}
	s.mu.Unlock()
	select {
	case <-e.done:
		return e.val, e.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Forget drops every list of the site at kubeContext kept for sharing: this
// process wrote to it, and no look after that may be served a list from
// before its write.
func (s *Shared) Forget(kubeContext string) {
	if s == nil {
		return
	}
	prefix := sharedKey(topology.Site{Context: kubeContext}, listKeyPrefix)
	s.mu.Lock()
	defer s.mu.Unlock()
	for key := range s.entries {
		if strings.HasPrefix(key, prefix) {
			delete(s.entries, key)
		}
	}
}

// sharedKey names a read of a Kubernetes site by its context, which two
// files may name differently; "" for a site whose reads are not shared.
func sharedKey(site topology.Site, what string) string {
	if site.Patroni() || site.Context == "" {
		return ""
	}
	return "context " + site.Context + ": " + what
}

// listNodes lists a site's nodes, through the shared reads when there are.
func (o *Observer) listNodes(ctx context.Context, api SiteAPI, site topology.Site) ([]corev1.Node, error) {
	key := sharedKey(site, "nodes")
	if o.Shared == nil || key == "" {
		return api.ListNodes(ctx)
	}
	v, err := o.Shared.read(ctx, key, nodesEvery, func() (any, error) { return api.ListNodes(ctx) })
	nodes, _ := v.([]corev1.Node)
	return nodes, err
}

// caSourceKey says which bundle a policy reads, and how it is used.
func caSourceKey(p topology.PostgresTLS) string {
	key := "mode " + p.Mode
	if p.CA == nil {
		return key + ", system roots"
	}
	if r := p.CA.ConfigMap; r != nil {
		key += ", ConfigMap " + r.Name + " key " + r.Key
	}
	if r := p.CA.Secret; r != nil {
		key += ", Secret " + r.Name + " key " + r.Key
	}
	return key
}
