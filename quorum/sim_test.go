package quorum

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// The simulation runs the agents of three sites over a schedule of
// partitions, each agent on its own clock (an offset of hours and a rate
// off by up to MaxDrift), renewing its vote every Renew by that clock at a
// phase of its own, reading the votes of the sites it reaches. It checks
// the promise docs/automatic-failover.md makes: no agent decides to fail
// over before the primary's agent has fenced its primary (decided, plus
// FenceTime), under every schedule; and it fails over when the primary's
// site is cut off for good, and never when only a witness or the
// standby's site is.

type simAgent struct {
	site   string
	offset time.Duration // clock reading at real time 0
	rate   float64       // clock seconds per real second
	phase  time.Duration // real time of the first renewal
	// Last seen stamps, and the agent-clock time each last changed.
	seen    map[string]time.Time
	changed map[string]time.Time
	renewed time.Time // its own vote's last stamp in its store
}

func (a *simAgent) clock(real time.Duration) time.Time {
	return time.Unix(0, 0).Add(a.offset + time.Duration(float64(real)*a.rate))
}

// schedule says, at a real time, whether agent a reaches site b's API (a
// reaches its own site's API to write its vote).
type schedule func(real time.Duration, a, b string) bool

type simResult struct {
	// fencedAt is when the primary's fence took effect, as it stood when
	// the failover was decided (or at the end): -1 when unfenced then.
	fencedAt, failoverAt time.Duration // -1: never
	why                  string
	fences               int // how many times the primary was fenced
}

// warmUp is when the agents have all been running long enough to have
// seen each other: the primary's agent fences at its start (no majority
// has seen its vote yet) and lifts the fence after it.
const warmUp = 5 * time.Second

func simulate(t Timing, sched schedule, rng *rand.Rand, horizon time.Duration) simResult {
	sites := []string{"east", "west", "witness"} // the primary is in east
	store := map[string]Vote{}
	var agents []*simAgent
	for _, s := range sites {
		agents = append(agents, &simAgent{
			site:   s,
			offset: time.Duration(rng.Int64N(int64(48 * time.Hour))),
			rate:   1 + (rng.Float64()*2-1)*MaxDrift,
			phase:  time.Duration(rng.Int64N(int64(t.Renew))),
			seen:   map[string]time.Time{}, changed: map[string]time.Time{},
		})
	}
	res := simResult{fencedAt: -1, failoverAt: -1}
	// Each agent renews every Renew of its own clock: in real time,
	// Renew / rate.
	next := map[*simAgent]time.Duration{}
	for _, a := range agents {
		next[a] = a.phase
	}
	for real := time.Duration(0); real < horizon; real += 10 * time.Millisecond {
		for _, a := range agents {
			if real < next[a] {
				continue
			}
			next[a] += time.Duration(float64(t.Renew) / a.rate)
			now := a.clock(real)
			read := map[string]Vote{}
			for _, b := range sites {
				if b == a.site || !sched(real, a.site, b) {
					continue
				}
				v, ok := store[b]
				if !ok {
					continue
				}
				read[b] = v
				if !v.Renewed.Equal(a.seen[b]) {
					a.seen[b], a.changed[b] = v.Renewed, now
				}
			}
			unseen := map[string]time.Duration{}
			vote := Vote{Site: a.site, Renewed: now, Seen: map[string]time.Time{}, Unseen: map[string]Duration{}}
			for _, b := range sites {
				if b == a.site {
					continue
				}
				changed, ok := a.changed[b]
				if !ok {
					changed = a.clock(0) // never seen: unseen since the agent started
				}
				unseen[b] = now.Sub(changed)
				vote.Seen[b], vote.Unseen[b] = a.seen[b], Duration(unseen[b])
			}
			if sched(real, a.site, a.site) {
				store[a.site] = vote
				a.renewed = now
			}
			switch {
			// The primary's agent fences when it must and lifts its own
			// fence once a majority sees it again (while no failover was
			// decided: after one, the primary stays fenced).
			case a.site == "east" && res.failoverAt < 0:
				switch d := MustFence(t, sites, "east", a.renewed, read, now); {
				case d.Act && res.fencedAt < 0:
					res.fencedAt = real + FenceTime
					res.fences++
				case !d.Act && real >= warmUp:
					res.fencedAt = -1
				}
			case a.site != "east" && res.failoverAt < 0:
				if d := MayFailOver(t, sites, a.site, "east", unseen, read); d.Act {
					res.failoverAt, res.why = real, a.site+": "+d.Why
				}
			}
		}
	}
	return res
}

// cut is a schedule where the sites in isolated reach no other site, and
// no other site reaches them, from from until until.
func cut(from, until time.Duration, isolated ...string) schedule {
	return func(real time.Duration, a, b string) bool {
		if a == b || real < from || real >= until {
			return true
		}
		return !slices.Contains(isolated, a) && !slices.Contains(isolated, b)
	}
}

func TestSimulatedPartitions(t *testing.T) {
	tm := TimingFor(10 * time.Second)
	if err := tm.Check(); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(7, 30))
	const horizon = 60 * time.Second
	for _, tc := range []struct {
		name     string
		sched    schedule
		failover bool
	}{
		{name: "the primary's site cut off for good", sched: cut(5*time.Second, horizon, "east"), failover: true},
		{name: "the witness cut off", sched: cut(5*time.Second, horizon, "witness")},
		{name: "the standby's site cut off", sched: cut(5*time.Second, horizon, "west")},
		{name: "the primary's site cut off for less than after", sched: cut(5*time.Second, 5*time.Second+tm.After-3*time.Second, "east")},
		{name: "east and west cannot reach each other, the witness reaches both", sched: func(real time.Duration, a, b string) bool {
			return real < 5*time.Second || !(a == "east" && b == "west" || a == "west" && b == "east")
		}},
		// One way only: east's agent reaches everyone, nobody reaches
		// east's API. The others fail over; east must fence first, as
		// the others' copies of its stamps age.
		{name: "nobody reaches east's API, east reaches theirs", sched: func(real time.Duration, a, b string) bool {
			return real < 5*time.Second || a == b || b != "east"
		}, failover: true},
		// East's API itself gone: its agent cannot renew its own vote.
		{name: "east's API down for its own agent too", sched: func(real time.Duration, a, b string) bool {
			return real < 5*time.Second || b != "east"
		}, failover: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for round := range 50 {
				res := simulate(tm, tc.sched, rng, horizon)
				if res.failoverAt >= 0 && (res.fencedAt < 0 || res.fencedAt > res.failoverAt) {
					t.Fatalf("round %d: failover at %s (%s) with the primary fenced at %s", round, res.failoverAt, res.why, res.fencedAt)
				}
				if (res.failoverAt >= 0) != tc.failover {
					t.Fatalf("round %d: failover at %s (%s), want a failover: %v", round, res.failoverAt, res.why, tc.failover)
				}
				// Cut at 5 s: a failover within after and a few renewals.
				if tc.failover && res.failoverAt > 5*time.Second+tm.After+3*tm.Renew {
					t.Fatalf("round %d: failover only at %s", round, res.failoverAt)
				}
			}
		})
	}
}

// Random flapping partitions, any site isolated for random stretches:
// whatever happens, no failover comes before the primary is fenced.
func TestSimulatedFlapping(t *testing.T) {
	tm := TimingFor(10 * time.Second)
	rng := rand.New(rand.NewPCG(30, 7))
	failovers, fences := 0, 0
	for round := range 200 {
		type stretch struct {
			from, until time.Duration
			site        string
		}
		var cuts []stretch
		for at := time.Duration(0); at < 90*time.Second; {
			at += time.Duration(rng.Int64N(int64(8 * time.Second)))
			long := time.Duration(rng.Int64N(int64(25 * time.Second)))
			cuts = append(cuts, stretch{at, at + long, []string{"east", "west", "witness"}[rng.IntN(3)]})
			at += long
		}
		sched := func(real time.Duration, a, b string) bool {
			if a == b {
				return true
			}
			for _, c := range cuts {
				if real >= c.from && real < c.until && (a == c.site || b == c.site) {
					return false
				}
			}
			return true
		}
		res := simulate(tm, sched, rng, 90*time.Second)
		fences += res.fences
		if res.failoverAt >= 0 {
			failovers++
			if res.fencedAt < 0 || res.fencedAt > res.failoverAt {
				t.Fatalf("round %d: failover at %s (%s), the primary fenced at %s; cuts %s", round, res.failoverAt, res.why, res.fencedAt, fmt.Sprint(cuts))
			}
		}
	}
	if failovers == 0 {
		t.Fatal("200 rounds of flapping partitions and no failover: the simulation does not reach the case it checks")
	}
	t.Logf("%d of 200 rounds failed over, each after the primary was fenced; %d self-fences in all (the flaps the others did not fail over for lifted)", failovers, fences)
}
