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
	site    string
	offset  time.Duration // clock reading at real time 0
	rate    float64       // clock seconds per real second
	phase   time.Duration // real time of the first renewal
	tracker *Tracker
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
	// fencedAfterWarmUp counts the rounds after warmUp that would fence.
	fencedAfterWarmUp int
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
		a := &simAgent{
			site:   s,
			offset: time.Duration(rng.Int64N(int64(48 * time.Hour))),
			rate:   1 + (rng.Float64()*2-1)*MaxDrift,
			phase:  time.Duration(rng.Int64N(int64(t.Renew))),
		}
		a.tracker = NewTracker(a.clock(0))
		agents = append(agents, a)
	}
	res := simResult{fencedAt: -1, failoverAt: -1}
	// Each agent renews every Renew of its own clock: in real time,
	// Renew / rate.
	// A round reads the votes at its start; a read of a site cut off
	// takes the whole read timeout, others readLatency; the round then
	// decides and writes its vote once its reads are done.
	const readLatency = 20 * time.Millisecond
	type round struct {
		at     time.Duration // when the reads are done
		read   map[string]Vote
		others []string
	}
	next := map[*simAgent]time.Duration{}
	pending := map[*simAgent]*round{}
	for _, a := range agents {
		next[a] = a.phase
	}
	for real := time.Duration(0); real < horizon; real += 10 * time.Millisecond {
		for _, a := range agents {
			if pending[a] == nil && real >= next[a] {
				next[a] += time.Duration(float64(t.Renew) / a.rate)
				r := &round{at: real + readLatency, read: map[string]Vote{}}
				for _, b := range sites {
					if b == a.site {
						continue
					}
					r.others = append(r.others, b)
					if !sched(real, a.site, b) {
						r.at = real + t.Read
						continue
					}
					if v, ok := store[b]; ok {
						r.read[b] = v
					}
				}
				pending[a] = r
			}
			r := pending[a]
			if r == nil || real < r.at {
				continue
			}
			pending[a] = nil
			now := a.clock(real)
			read, others := r.read, r.others
			unseen := a.tracker.Observe(now, others, read)
			vote := a.tracker.Vote(a.site, a.site+"-agent", now, unseen)
			if sched(real, a.site, a.site) {
				store[a.site] = vote
				a.renewed = now
			}
			switch {
			// The primary's agent fences when it must and lifts its own
			// fence once a majority sees it again (while no failover was
			// decided: after one, the primary stays fenced).
			case a.site == "east" && res.failoverAt < 0:
				d := MustFence(t, sites, "east", a.renewed, a.tracker.Latest(), now)
				switch {
				case d.Act && res.fencedAt < 0:
					res.fencedAt = real + FenceTime
					res.fences++
				case !d.Act && real >= warmUp:
					res.fencedAt = -1
				}
				if d.Act && real >= warmUp {
					res.fencedAfterWarmUp++
				}
			case a.site != "east" && res.failoverAt < 0:
				if d := MayFailOver(t, sites, a.site, "east", unseen, a.tracker.Latest()); d.Act {
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
		// fence: the primary's agent fences (after the warm-up); a
		// partition that leaves it a majority must not.
		fence bool
	}{
		{name: "nothing cut", sched: cut(0, 0)},
		{name: "the primary's site cut off for good", sched: cut(5*time.Second, horizon, "east"), failover: true, fence: true},
		{name: "the witness cut off", sched: cut(5*time.Second, horizon, "witness")},
		// A blip: the primary's reads of the others fail for a second.
		{name: "the primary's site cut off for a second", sched: cut(5*time.Second, 6*time.Second, "east")},
		{name: "the standby's site cut off", sched: cut(5*time.Second, horizon, "west")},
		{name: "the primary's site cut off for less than after", sched: cut(5*time.Second, 5*time.Second+tm.After-3*time.Second, "east"), fence: true},
		{name: "east and west cannot reach each other, the witness reaches both", sched: func(real time.Duration, a, b string) bool {
			return real < 5*time.Second || !(a == "east" && b == "west" || a == "west" && b == "east")
		}},
		// One way only: east's agent reaches everyone, nobody reaches
		// east's API. The others fail over; east must fence first, as
		// the others' copies of its stamps age.
		{name: "nobody reaches east's API, east reaches theirs", sched: func(real time.Duration, a, b string) bool {
			return real < 5*time.Second || a == b || b != "east"
		}, failover: true, fence: true},
		// East's API itself gone: its agent cannot renew its own vote.
		{name: "east's API down for its own agent too", sched: func(real time.Duration, a, b string) bool {
			return real < 5*time.Second || b != "east"
		}, failover: true, fence: true},
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
				if (res.fencedAfterWarmUp > 0) != tc.fence {
					t.Fatalf("round %d: %d rounds after the warm-up would fence the primary, want a fence: %v", round, res.fencedAfterWarmUp, tc.fence)
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
