package reconcile

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgtopo/pgtopo/quorum"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// memVotes is a vote store in memory whose sites can be cut off: a read
// of a cut site fails, and a cut site's own agent cannot write.
type memVotes struct {
	mu    sync.Mutex
	votes map[string]quorum.Vote
	cut   map[string]bool
}

func (m *memVotes) ReadVote(_ context.Context, _ *topology.Desired, site string) (*quorum.Vote, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cut[site] {
		return nil, errors.New("dial tcp: i/o timeout")
	}
	v, ok := m.votes[site]
	if !ok {
		return nil, nil
	}
	return &v, nil
}

func (m *memVotes) WriteVote(_ context.Context, _ *topology.Desired, v quorum.Vote) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cut[v.Site] {
		return errors.New("dial tcp: i/o timeout")
	}
	m.votes[v.Site] = v
	return nil
}

// automatic is a topology of east (primary) and west, with witness north.
func automatic(t *testing.T) *topology.Desired {
	t.Helper()
	east := topology.Site{Name: "east", Context: "prod-east"}
	west := topology.Site{Name: "west", Context: "prod-west"}
	d := &topology.Desired{Name: "orders", Clusters: []topology.DesiredCluster{
		{Name: "orders-east", Site: east, Namespace: "db", Role: topology.RolePrimary},
		{Name: "orders-west", Site: west, Namespace: "db", Role: topology.RoleStandby},
	}, EmptySites: []topology.Site{{Name: "north", Context: "prod-north"}},
		Failover: topology.Failover{Mode: topology.FailoverAutomatic, After: 10 * time.Second}}
	if got := strings.Join(d.Voters(), ","); got != "east,north,west" {
		t.Fatalf("voters %s", got)
	}
	return d
}

// Keepers of three sites on one store: their votes copy each other's
// stamps, carry the primary's LSN from the loop's look, and decide as
// package quorum does; a manual topology, or a site that does not vote,
// keeps no vote.
func TestKeepers(t *testing.T) {
	d := automatic(t)
	store := &memVotes{votes: map[string]quorum.Vote{}, cut: map[string]bool{}}
	clock := time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)
	now := func() time.Time { return clock }
	keepers := map[string]*Keeper{}
	snap := &snapshot.Snapshot{Clusters: []snapshot.ClusterState{
		{Name: "orders-east", PG: &snapshot.PGState{CurrentLSN: 0x3000100}},
		{Name: "orders-west", PG: &snapshot.PGState{InRecovery: true, ReplayLSN: 0x3000000}},
	}}
	for _, site := range d.Voters() {
		keepers[site] = &Keeper{Site: site, Agent: site + "-agent", Store: store, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: now}
		keepers[site].Update(d, snap)
	}
	round := func() map[string]Round {
		out := map[string]Round{}
		for _, site := range d.Voters() {
			r, ok := keepers[site].Round(context.Background())
			if !ok {
				t.Fatalf("%s kept no vote", site)
			}
			out[site] = r
		}
		clock = clock.Add(quorum.DefaultRenew)
		return out
	}
	round()
	rs := round()
	if v := store.votes["west"]; v.Primary != "orders-east" || v.PrimaryLSN != 0x3000100 || len(v.Seen) != 2 || !v.Seen["east"].Equal(store.votes["east"].Renewed) {
		t.Fatalf("west's vote %+v", v)
	}
	if f := rs["east"].Fence; f == nil || f.Act || rs["east"].Failover != nil {
		t.Fatalf("east's decision %+v", rs["east"])
	}
	if f := rs["west"].Failover; f == nil || f.Act {
		t.Fatalf("west's decision %+v", rs["west"])
	}

	// East cut off: its agent writes no vote and reads none; within
	// FenceAfter it would fence, and after After the others may fail over.
	store.cut["east"] = true
	var fenceAt, failoverAt time.Duration
	for at := time.Duration(0); at < 20*time.Second; at += quorum.DefaultRenew {
		rs = round()
		if rs["east"].Fence.Act && fenceAt == 0 {
			fenceAt = at
		}
		if rs["west"].Failover.Act && failoverAt == 0 {
			failoverAt = at
		}
	}
	if fenceAt == 0 || failoverAt == 0 || fenceAt+quorum.FenceTime > failoverAt || !strings.Contains(rs["east"].Unread["east"], "its own vote not written") {
		t.Fatalf("east cut off: would fence at %s, a failover may start at %s; east's round %+v", fenceAt, failoverAt, rs["east"])
	}

	manual := *d
	manual.Failover.Mode = topology.FailoverManual
	k := &Keeper{Site: "east", Store: store, Now: now}
	k.Update(&manual, nil)
	if _, ok := k.Round(context.Background()); ok {
		t.Fatal("a manual topology's keeper kept a vote")
	}
	k = &Keeper{Site: "elsewhere", Store: store, Now: now}
	k.Update(d, nil)
	if _, ok := k.Round(context.Background()); ok {
		t.Fatal("a site that does not vote kept a vote")
	}
}
