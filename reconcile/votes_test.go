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
		keepers[site].Update(&Input{Desired: d}, snap)
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
	k.Update(&Input{Desired: &manual}, nil)
	if _, ok := k.Round(context.Background()); ok {
		t.Fatal("a manual topology's keeper kept a vote")
	}
	k = &Keeper{Site: "elsewhere", Store: store, Now: now}
	k.Update(&Input{Desired: d}, nil)
	if _, ok := k.Round(context.Background()); ok {
		t.Fatal("a site that does not vote kept a vote")
	}
}

// memFencer records what a keeper asks of its Fencer, as a primary that
// is fenced or not; fail makes the next fence fail.
type memFencer struct {
	mu       sync.Mutex
	fences   []string // the reasons given, one per fence applied
	unfences int
	fail     bool
	isFenced bool
}

func (m *memFencer) FenceAlone(_ context.Context, _ *topology.Desired, cluster, why string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail {
		m.fail = false
		return false, errors.New("connect orders-east: timeout")
	}
	if m.isFenced {
		return false, nil
	}
	m.isFenced = true
	m.fences = append(m.fences, cluster+": "+why)
	return true, nil
}

func (m *memFencer) Unfence(context.Context, *topology.Desired, string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.unfences++
	m.isFenced = false
	return nil
}

// liftedElsewhere is the primary's fence lifted by another run (a rejoin
// that unfenced it, a person).
func (m *memFencer) liftedElsewhere() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.isFenced = false
}

func (m *memFencer) counts() (int, int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.fences), m.unfences
}

// The primary's keeper fences when the majority is lost (again after a
// failed attempt, or after another run lifted it; never twice), lifts its fence once the majority sees
// its site again, and never lifts a fence someone else set; the other
// sites' keepers never fence.
func TestKeeperFencesAndLifts(t *testing.T) {
	d := automatic(t)
	store := &memVotes{votes: map[string]quorum.Vote{}, cut: map[string]bool{}}
	clock := time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)
	now := func() time.Time { return clock }
	fencers := map[string]*memFencer{}
	keepers := map[string]*Keeper{}
	for _, site := range d.Voters() {
		fencers[site] = &memFencer{}
		keepers[site] = &Keeper{Site: site, Agent: site + "-agent", Store: store, Fencer: fencers[site], Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: now}
		keepers[site].Update(&Input{Desired: d}, nil)
	}
	rounds := func(n int) (last Round) {
		for range n {
			for _, site := range d.Voters() {
				r, _ := keepers[site].Round(context.Background())
				if site == "east" {
					last = r
				}
			}
			clock = clock.Add(quorum.DefaultRenew)
		}
		return last
	}
	unfencesSettle := func(want int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for _, u := fencers["east"].counts(); u != want; _, u = fencers["east"].counts() {
			if time.Now().After(deadline) {
				t.Fatalf("unfences %d, want %d", u, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	rounds(3)
	if f, u := fencers["east"].counts(); f != 0 || u != 0 {
		t.Fatalf("with a majority: %d fences, %d unfences", f, u)
	}

	// West and north cut off: east's keeper alone, it fences after
	// FenceAfter; a failed attempt is tried again the next round.
	store.cut["west"], store.cut["north"] = true, true
	fencers["east"].fail = true
	var failed, fenced bool
	for range 10 {
		r := rounds(1)
		failed = failed || r.FenceError != nil
		fenced = fenced || r.Fenced
	}
	f, _ := fencers["east"].counts()
	if !failed || !fenced || f != 1 {
		t.Fatalf("east alone: failed %v, fenced %v, %d fences", failed, fenced, f)
	}
	if why := fencers["east"].fences[0]; !strings.HasPrefix(why, "orders-east: "+QuorumFence+" only 1 of 3 sites saw east") {
		t.Fatalf("fence reason %q", why)
	}
	for _, site := range []string{"west", "north"} {
		if f, _ := fencers[site].counts(); f != 0 {
			t.Fatalf("%s's keeper fenced", site)
		}
	}

	// Fenced already, it is not fenced twice; lifted by another run while
	// the majority is still lost (the soak: a primary the keeper fenced
	// in an earlier life, since rejoined, unfenced and promoted again), it
	// is fenced again at the next round, not remembered as fenced.
	rounds(2)
	if f, _ := fencers["east"].counts(); f != 1 {
		t.Fatalf("fenced already: %d fences, want 1", f)
	}
	fencers["east"].liftedElsewhere()
	if r := rounds(1); !r.Fenced {
		t.Fatalf("the fence lifted elsewhere, still cut off: round %+v, want it fenced again", r)
	}

	// Healed: the majority sees east again, its keeper lifts its fence.
	store.cut["west"], store.cut["north"] = false, false
	rounds(3)
	unfencesSettle(1)
	rounds(3)
	if f, u := fencers["east"].counts(); f != 2 || u != 1 {
		t.Fatalf("healed: %d fences, %d unfences", f, u)
	}

	// A fence set by hand (no quorum mark): the keeper leaves it.
	snap := &snapshot.Snapshot{Clusters: []snapshot.ClusterState{{Name: "orders-east", Exists: true,
		Object: &snapshot.Object{Marks: snapshot.Marks{Fence: &snapshot.Fence{By: "dba", Reason: "split brain"}}}}}}
	keepers["east"].Update(&Input{Desired: d}, snap)
	rounds(3)
	time.Sleep(50 * time.Millisecond)
	if _, u := fencers["east"].counts(); u != 1 {
		t.Fatalf("a fence set by hand lifted: %d unfences", u)
	}
	// One the quorum set, seen by a restarted keeper's loop: lifted.
	snap.Clusters[0].Object.Marks.Fence.Reason = QuorumFence + " only 1 of 3"
	keepers["east"].Update(&Input{Desired: d}, snap)
	rounds(1)
	unfencesSettle(2)

	// A keeper starting cut off: no fence while the others could not have
	// copied its stamps yet (FenceAfter), then the fence.
	alone := &memFencer{}
	k := &Keeper{Site: "east", Agent: "east-agent-2", Store: store, Fencer: alone, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: now}
	k.Update(&Input{Desired: d}, nil)
	store.cut["west"], store.cut["north"] = true, true
	start := clock
	var fencedAt time.Duration
	for range 10 {
		r, _ := k.Round(context.Background())
		if f, _ := alone.counts(); f > 0 && fencedAt == 0 {
			fencedAt = clock.Sub(start)
		} else if f == 0 && !r.Starting && r.Fence.Act {
			t.Fatalf("a starting keeper would fence and does not say it is starting: %+v", r)
		}
		clock = clock.Add(quorum.DefaultRenew)
	}
	if after := quorum.TimingFor(d.Failover.After).FenceAfter; fencedAt < after || fencedAt > after+quorum.DefaultRenew {
		t.Fatalf("a keeper starting cut off fenced %s after its start, want %s", fencedAt, after)
	}
}

// memFailOver records the failovers a keeper starts.
type memFailOver struct {
	mu     sync.Mutex
	chosen []quorum.Choice
}

func (m *memFailOver) FailOver(_ context.Context, _ *Input, c quorum.Choice, _ string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.chosen = append(m.chosen, c)
	return "recorded", nil
}

func (m *memFailOver) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.chosen)
}

// East cut off: the agent of the standby's site (west) starts the failover
// once, to its standby, with the loss bounded by the LSN the votes carry
// (gated again, fresh, by FailOver: see quorum.Within); the witness's agent
// never does; with no LSN in any vote the loss cannot be bounded and
// nothing starts.
func TestKeeperFailsOver(t *testing.T) {
	for _, tc := range []struct {
		name    string
		lsn     snapshot.LSN
		want    int
		refusal string
	}{
		{"the primary's LSN in the votes", 0x3000100, 1, ""},
		{"no LSN in any vote", 0, 0, "cannot be bounded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := automatic(t)
			d.Failover.MaxDataLossLSN = 0x100
			store := &memVotes{votes: map[string]quorum.Vote{}, cut: map[string]bool{}}
			clock := time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)
			now := func() time.Time { return clock }
			snap := &snapshot.Snapshot{Clusters: []snapshot.ClusterState{
				{Name: "orders-east", Site: "east", PG: &snapshot.PGState{CurrentLSN: tc.lsn}},
				{Name: "orders-west", Site: "west", PG: &snapshot.PGState{InRecovery: true, ReceiveLSN: 0x3000000, ReplayLSN: 0x3000000}},
			}}
			keepers, failovers := map[string]*Keeper{}, map[string]*memFailOver{}
			for _, site := range d.Voters() {
				failovers[site] = &memFailOver{}
				keepers[site] = &Keeper{Site: site, Agent: site + "-agent", Store: store, FailOver: failovers[site], Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: now}
				keepers[site].Update(&Input{Desired: d}, snap)
			}
			var refused error
			for i := range 25 {
				if i == 3 {
					store.cut["east"] = true
				}
				for _, site := range d.Voters() {
					r, _ := keepers[site].Round(context.Background())
					if r.Refused != nil {
						refused = r.Refused
					}
				}
				clock = clock.Add(quorum.DefaultRenew)
			}
			time.Sleep(50 * time.Millisecond)
			if got := failovers["west"].count(); got != tc.want {
				t.Fatalf("west's agent started %d failovers, want %d (refused: %v)", got, tc.want, refused)
			}
			if failovers["north"].count() != 0 || failovers["east"].count() != 0 {
				t.Fatal("the witness's or the primary's agent started a failover")
			}
			if tc.want == 1 {
				if c := failovers["west"].chosen[0]; c.Target.Cluster != "orders-west" || c.Loss != 0x100 || c.LastSeen != 0x3000100 {
					t.Fatalf("choice %+v", c)
				}
			} else if refused == nil || !strings.Contains(refused.Error(), tc.refusal) {
				t.Fatalf("refusal %v", refused)
			}
		})
	}
}

// probeAt is a PrimaryProbe that reads lsn, or fails when it is zero.
type probeAt struct{ lsn snapshot.LSN }

func (p probeAt) PrimaryLSN(context.Context, *topology.Desired) (snapshot.LSN, error) {
	if p.lsn == 0 {
		return 0, errors.New("connect: timeout")
	}
	return p.lsn, nil
}

// probeZero answers without an error but with no position (a server that
// is not a primary any more reports none).
type probeZero struct{}

func (probeZero) PrimaryLSN(context.Context, *topology.Desired) (snapshot.LSN, error) { return 0, nil }

// The primary's LSN the keeper remembers, which bounds a failover's loss,
// never goes back for the same primary: a look or a probe that reads less
// (an older look, a probe that read nothing) keeps the furthest; a new
// primary starts its own.
func TestKeeperNeverLowersThePrimaryLSN(t *testing.T) {
	d := automatic(t)
	look := func(name string, lsn snapshot.LSN) *snapshot.Snapshot {
		return &snapshot.Snapshot{Clusters: []snapshot.ClusterState{{Name: name, PG: &snapshot.PGState{CurrentLSN: lsn}}}}
	}
	k := &Keeper{Site: "west"}
	for _, step := range []struct {
		look    *snapshot.Snapshot
		primary string
		lsn     snapshot.LSN
	}{
		{look("orders-east", 0x3000900), "orders-east", 0x3000900},
		{look("orders-east", 0x3000100), "orders-east", 0x3000900},
		{look("orders-east", 0x3000a00), "orders-east", 0x3000a00},
		{look("orders-west", 0x100), "orders-west", 0x100},
	} {
		k.Update(&Input{Desired: d}, step.look)
		if k.primary != step.primary || k.lsn != step.lsn {
			t.Fatalf("after a look at %s: remembers %s at %s, want %s at %s", step.look.Clusters[0].Name, k.primary, k.lsn, step.primary, step.lsn)
		}
	}
	store := &memVotes{votes: map[string]quorum.Vote{}, cut: map[string]bool{}}
	k2 := &Keeper{Site: "west", Agent: "west-agent", Store: store, Probe: probeZero{}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	k2.Update(&Input{Desired: d}, look("orders-east", 0x3000900))
	k2.Round(context.Background())
	if v := store.votes["west"]; v.PrimaryLSN != 0x3000900 {
		t.Fatalf("after a probe that read no position, vote %+v, want 0/3000900 kept", v)
	}
}

// With a probe, a vote carries the primary's LSN read in the renewal, not
// the loop's last look; a failed probe keeps the last LSN it had.
func TestKeeperProbesThePrimary(t *testing.T) {
	d := automatic(t)
	store := &memVotes{votes: map[string]quorum.Vote{}, cut: map[string]bool{}}
	snap := &snapshot.Snapshot{Clusters: []snapshot.ClusterState{{Name: "orders-east", PG: &snapshot.PGState{CurrentLSN: 0x3000100}}}}
	k := &Keeper{Site: "west", Agent: "west-agent", Store: store, Probe: probeAt{0x3000900}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	k.Update(&Input{Desired: d}, snap)
	k.Round(context.Background())
	if v := store.votes["west"]; v.Primary != "orders-east" || v.PrimaryLSN != 0x3000900 {
		t.Fatalf("vote %+v, want the probe's LSN", v)
	}
	k.Probe = probeAt{}
	k.Round(context.Background())
	if v := store.votes["west"]; v.PrimaryLSN != 0x3000900 {
		t.Fatalf("after a failed probe, vote %+v", v)
	}
}

// A look that cannot read a standby (a partition's) keeps it a candidate
// as last read; one that finds it writable drops it.
func TestKeeperKeepsCandidates(t *testing.T) {
	d := automatic(t)
	k := &Keeper{Site: "west"}
	read := &snapshot.Snapshot{Clusters: []snapshot.ClusterState{
		{Name: "orders-east", Site: "east", PG: &snapshot.PGState{CurrentLSN: 0x3000100}},
		{Name: "orders-west", Site: "west", PG: &snapshot.PGState{InRecovery: true, ReceiveLSN: 0x3000000}},
	}}
	k.Update(&Input{Desired: d}, read)
	k.Update(&Input{Desired: d}, &snapshot.Snapshot{Clusters: []snapshot.ClusterState{{Name: "orders-east"}, {Name: "orders-west", PGError: "timeout"}}})
	if len(k.candidates) != 1 || k.candidates[0].Cluster != "orders-west" || k.candidates[0].Received != 0x3000000 {
		t.Fatalf("candidates after a look that read nothing: %+v", k.candidates)
	}
	k.Update(&Input{Desired: d}, &snapshot.Snapshot{Clusters: []snapshot.ClusterState{{Name: "orders-west", Site: "west", PG: &snapshot.PGState{CurrentLSN: 0x4000000}}}})
	if len(k.candidates) != 0 || k.primary != "orders-west" {
		t.Fatalf("a standby found writable stays a candidate: %+v (primary %s)", k.candidates, k.primary)
	}
}
