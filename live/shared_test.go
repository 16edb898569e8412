package live

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgtopo/pgtopo/topology"
)

// Observers sharing reads, as a fleet's do, list each site's nodes and
// check its operator once for all their topologies in one look; each
// topology's own reads (its object, Lease, Secrets, Service) stay its own.
func TestObserversShareWhatSitesHaveInCommon(t *testing.T) {
	shared := &Shared{}
	sites := map[string]*countingSite{}
	var mu sync.Mutex
	var checks atomic.Int32
	connect := func(s topology.Site) (SiteAPI, error) {
		mu.Lock()
		defer mu.Unlock()
		if sites[s.Context] == nil {
			sites[s.Context] = &countingSite{fakeSite: &fakeSite{checks: &checks}, calls: map[string]int{}}
		}
		return sites[s.Context], nil
	}
	const topologies = 5
	var wg sync.WaitGroup
	for i := range topologies {
		d := desired(t)
		d.Name = fmt.Sprintf("t%d", i)
		o := &Observer{Prober: &fakeProber{}, Names: alaudaNames(t), Connect: connect, Shared: shared, Flavor: "alauda"}
		wg.Go(func() {
			if snap := o.Observe(context.Background(), d); !snap.Sites[0].Reachable || len(snap.Sites[0].NodeIPs) != 1 {
				t.Errorf("%s: %+v", d.Name, snap.Sites[0])
			}
		})
	}
	wg.Wait()
	for ctx, s := range sites {
		got := s.take()
		if got["nodes"] != 1 || got["lease"] != topologies || got["cr"] != topologies {
			t.Errorf("context %s: %d looks read %v; want the nodes once, each topology's Lease and object", ctx, topologies, got)
		}
	}
	if n := checks.Load(); n != int32(len(sites)) {
		t.Errorf("%d operator checks for %d sites", n, len(sites))
	}
}

// A shared read: one for all who wait on it, kept for its time, a failure
// never kept.
func TestSharedRead(t *testing.T) {
	s := &Shared{}
	var reads atomic.Int32
	release := make(chan struct{})
	slow := func() (any, error) { reads.Add(1); <-release; return "nodes", nil }
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			if v, err := s.read(context.Background(), "k", time.Minute, slow); v != "nodes" || err != nil {
				t.Errorf("read %v, %v", v, err)
			}
		})
	}
	time.Sleep(20 * time.Millisecond)
	close(release)
	wg.Wait()
	if n := reads.Load(); n != 1 {
		t.Fatalf("%d reads for 10 callers at once, want 1", n)
	}
	if v, _ := s.read(context.Background(), "k", time.Minute, func() (any, error) { reads.Add(1); return "again", nil }); v != "nodes" || reads.Load() != 1 {
		t.Fatalf("within its time: %v after %d reads", v, reads.Load())
	}
	if v, _ := s.read(context.Background(), "k", time.Nanosecond, func() (any, error) { reads.Add(1); return "again", nil }); v != "again" {
		t.Fatalf("past its time: %v", v)
	}
	fail := errors.New("connection refused")
	if _, err := s.read(context.Background(), "f", time.Minute, func() (any, error) { return nil, fail }); !errors.Is(err, fail) {
		t.Fatalf("a failed read: %v", err)
	}
	if v, err := s.read(context.Background(), "f", time.Minute, func() (any, error) { return "up", nil }); v != "up" || err != nil {
		t.Fatalf("after a failure, read again: %v, %v", v, err)
	}
}
