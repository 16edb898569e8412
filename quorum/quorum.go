// Package quorum decides, from the votes the sites' agents keep, when the
// agent in the primary's site must fence its primary and when the other
// agents may fail over (spec.failover.mode automatic). It does no I/O:
// each vote is a Lease in its own site, written by the agent running
// there, and read by every agent that can reach that site.
//
// No decision compares two clocks. An agent stamps its vote with its own
// clock (Renewed); the others copy that stamp into their votes (Seen) and
// measure, each with its own clock, how long it has not changed (Unseen).
// The primary's agent compares the stamps the others copied with its own
// clock, and the others compare durations each measured itself, so only
// the rate at which clocks drift matters, never their offset.
// docs/automatic-failover.md states the assumptions and the argument.
package quorum

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/pgtopo/pgtopo/snapshot"
)

// Timing is when agents act, derived from spec.failover.after.
type Timing struct {
	// Renew is how often an agent renews its vote and reads the others'.
	Renew time.Duration
	// Read bounds each read or write of a vote.
	Read time.Duration
	// FenceAfter: the primary's agent fences its primary once fewer than
	// a majority of the voters have seen its vote within FenceAfter.
	FenceAfter time.Duration
	// After: the others may fail over once a majority of the voters have
	// not seen the primary's site's vote for After.
	After time.Duration
	// Live: a vote that has not changed for this long, by the reader's
	// clock, is not counted (its agent is gone or cut off).
	Live time.Duration
}

// DefaultRenew is how often agents renew their votes. A copy of the
// primary's stamp reaches its agent again within two renewals and two
// reads (the other agent reads it, writes its vote, the primary's agent
// reads that), each read bounded by ReadTimeout: about 3 s, well inside
// the 5 s of the shortest FenceAfter.
const DefaultRenew = time.Second

// ReadTimeout bounds each read and write of a vote: a site that does not
// answer within it counts as not read this renewal (an API server a WAN
// away answers in tens of milliseconds).
const ReadTimeout = DefaultRenew / 2

// MaxDrift bounds how far apart two clocks' rates may be (a fraction):
// ordinary NTP-disciplined clocks drift by parts per million; this allows
// a thousand times that.
const MaxDrift = 0.001

// FenceTime is how long the primary's agent may take to fence once it
// decided to: a session to the primary, ALTER SYSTEM, reload and ending
// the sessions, with the slack of a loaded host.
const FenceTime = 2 * time.Second

// TimingFor derives the agents' timing from after: the primary's agent
// fences after half of it.
func TimingFor(after time.Duration) Timing {
	return Timing{Renew: DefaultRenew, Read: ReadTimeout, FenceAfter: after / 2, After: after, Live: after / 2}
}

// Check says why a timing cannot keep the promise that the primary's agent
// fences it before another site may promote: the other sites measure
// After with clocks that may run slower, and the primary's agent notices
// at its next renewal and then takes FenceTime.
func (t Timing) Check() error {
	needed := time.Duration(float64(t.FenceAfter+t.Renew+t.Read+FenceTime) / (1 - 2*MaxDrift))
	if t.After < needed {
		return fmt.Errorf("after %s: the primary's agent fences after %s without a majority, notices within a renewal and its reads (%s) and takes up to %s; allowing clocks' rates to differ by %.1f%%, another site may not promote before %s",
			t.After, t.FenceAfter, t.Renew+t.Read, FenceTime, 2*MaxDrift*100, needed.Round(time.Millisecond))
	}
	return nil
}

// Vote is one site's vote, as its agent last wrote it.
type Vote struct {
	Site  string `json:"site"`
	Agent string `json:"agent"`
	// Renewed is when the agent wrote the vote, by its own clock.
	Renewed time.Time `json:"renewed"`
	// Seen is, for each other site, the Renewed of that site's vote as this
	// agent last read it: the other agent's clock, copied, never compared
	// with this agent's.
	Seen map[string]time.Time `json:"seen,omitempty"`
	// Unseen is, for each other site, how long by this agent's clock Seen
	// had not changed when this vote was written.
	Unseen map[string]Duration `json:"unseen,omitempty"`
	// Primary is the primary this agent last saw writable, and PrimaryLSN
	// its WAL position then (pg_current_wal_lsn): what the survivors know of its WAL.
	Primary    string       `json:"primary,omitempty"`
	PrimaryLSN snapshot.LSN `json:"primaryLSN,omitempty"`
}

// Duration marshals as seconds.
type Duration time.Duration

// MarshalJSON writes seconds with millisecond precision.
func (d Duration) MarshalJSON() ([]byte, error) {
	return fmt.Appendf(nil, "%.3f", time.Duration(d).Seconds()), nil
}

// UnmarshalJSON reads seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s float64
	if _, err := fmt.Sscan(string(b), &s); err != nil {
		return fmt.Errorf("a duration in seconds: %w", err)
	}
	*d = Duration(s * float64(time.Second))
	return nil
}

// Majority is how many of n voters make a majority.
func Majority(n int) int { return n/2 + 1 }

// Decision is a decision and the votes it rests on, in words.
type Decision struct {
	Act bool
	Why string
}

// MustFence decides for the agent of the primary's site (self): it fences
// its primary unless a majority of the voters, itself included, have seen
// its vote within FenceAfter by its own clock now. renewed is when its
// own vote was last written to its site (zero if never); votes are those
// of the other sites it could read just now (a site it could not read has
// not seen it, as far as it can tell).
func MustFence(t Timing, voters []string, self string, renewed time.Time, votes map[string]Vote, now time.Time) Decision {
	var saw, not []string
	if !renewed.IsZero() && now.Sub(renewed) < t.FenceAfter {
		saw = append(saw, self)
	} else {
		not = append(not, self+" (its own vote not renewed within "+t.FenceAfter.String()+")")
	}
	for _, site := range voters {
		if site == self {
			continue
		}
		v, ok := votes[site]
		switch seen := v.Seen[self]; {
		case !ok:
			not = append(not, site+" (its vote not read)")
		case seen.IsZero():
			not = append(not, site+" (has not seen "+self+")")
		case now.Sub(seen) >= t.FenceAfter:
			not = append(not, fmt.Sprintf("%s (last saw %s's vote of %s ago)", site, self, now.Sub(seen).Round(time.Millisecond)))
		default:
			saw = append(saw, site)
		}
	}
	need := Majority(len(voters))
	if len(saw) >= need {
		return Decision{Why: fmt.Sprintf("%d of %d sites saw %s within %s (%s)", len(saw), len(voters), self, t.FenceAfter, strings.Join(saw, ", "))}
	}
	return Decision{Act: true, Why: fmt.Sprintf("only %d of %d sites saw %s within %s, %d needed: not %s",
		len(saw), len(voters), self, t.FenceAfter, need, strings.Join(not, ", "))}
}

// MayFailOver decides for an agent outside the primary's site (self)
// whether the primary's site (lost) has been out of a majority's sight for
// After: each voter but lost counts when its vote reports lost unseen for
// After or more, self by unseenNow (what it measures now, its own clock)
// and the others by the votes it could read, each live (unseenNow of that
// site under Live: its agent still writes).
func MayFailOver(t Timing, voters []string, self, lost string, unseenNow map[string]time.Duration, votes map[string]Vote) Decision {
	var agree, not []string
	for _, site := range voters {
		if site == lost {
			continue
		}
		var gone time.Duration
		if site == self {
			gone = unseenNow[lost]
		} else {
			v, ok := votes[site]
			if !ok {
				not = append(not, site+" (its vote not read)")
				continue
			}
			if unseenNow[site] >= t.Live {
				not = append(not, fmt.Sprintf("%s (its vote unchanged for %s: not live)", site, unseenNow[site].Round(time.Millisecond)))
				continue
			}
			gone = time.Duration(v.Unseen[lost])
		}
		if gone < t.After {
			not = append(not, fmt.Sprintf("%s (saw %s's vote %s ago)", site, lost, gone.Round(time.Millisecond)))
			continue
		}
		agree = append(agree, site)
	}
	need := Majority(len(voters))
	if len(agree) >= need {
		return Decision{Act: true, Why: fmt.Sprintf("%d of %d sites have not seen %s for %s or more (%s)", len(agree), len(voters), lost, t.After, strings.Join(agree, ", "))}
	}
	why := fmt.Sprintf("%d of %d sites have not seen %s for %s, %d needed", len(agree), len(voters), lost, t.After, need)
	if len(not) > 0 {
		why += ": not " + strings.Join(not, ", ")
	}
	return Decision{Why: why}
}

// LastPrimaryLSN is the furthest WAL position of primary that the votes
// report: what the surviving sites know the primary wrote.
func LastPrimaryLSN(primary string, votes map[string]Vote) (snapshot.LSN, []string) {
	var best snapshot.LSN
	var from []string
	for _, site := range slices.Sorted(maps.Keys(votes)) {
		v := votes[site]
		if v.Primary != primary || v.PrimaryLSN == 0 {
			continue
		}
		switch {
		case v.PrimaryLSN > best:
			best, from = v.PrimaryLSN, []string{site}
		case v.PrimaryLSN == best:
			from = append(from, site)
		}
	}
	return best, from
}

// Loss is what a failover to a target that has WAL up to target loses of
// what the survivors saw the primary write (0 when it has all of it).
func Loss(lastSeen, target snapshot.LSN) int64 {
	if target >= lastSeen {
		return 0
	}
	return int64(lastSeen - target)
}

// Tracker is an agent's memory of the other sites' votes: the stamp it
// last read of each, and when by its own clock that stamp changed.
type Tracker struct {
	started time.Time
	seen    map[string]time.Time
	changed map[string]time.Time
	last    map[string]Vote
}

// NewTracker starts a tracker at started (the agent's clock): a site not
// seen yet counts as unseen since then.
func NewTracker(started time.Time) *Tracker {
	return &Tracker{started: started, seen: map[string]time.Time{}, changed: map[string]time.Time{}, last: map[string]Vote{}}
}

// Observe takes the votes read at now (by the agent's clock) and returns,
// for each of sites, how long its vote's stamp has not changed.
func (t *Tracker) Observe(now time.Time, sites []string, read map[string]Vote) map[string]time.Duration {
	unseen := make(map[string]time.Duration, len(sites))
	for _, s := range sites {
		if v, ok := read[s]; ok && !v.Renewed.Equal(t.seen[s]) {
			t.seen[s], t.changed[s], t.last[s] = v.Renewed, now, v
		}
		changed, ok := t.changed[s]
		if !ok {
			changed = t.started
		}
		unseen[s] = now.Sub(changed)
	}
	return unseen
}

// Latest is the last vote read of each site. A vote not read this round
// is still what that site last said: a site that copied the primary's
// stamp saw the primary then, read now or not, and a read that fails for
// a moment must not fence a primary the majority sees (the decisions age
// these votes by the stamps and durations they carry).
func (t *Tracker) Latest() map[string]Vote { return maps.Clone(t.last) }

// Vote is the agent's vote of site at now, from what it tracks.
func (t *Tracker) Vote(site, agent string, now time.Time, unseen map[string]time.Duration) Vote {
	v := Vote{Site: site, Agent: agent, Renewed: now, Seen: map[string]time.Time{}, Unseen: map[string]Duration{}}
	for s, d := range unseen {
		if s == site {
			continue
		}
		if seen, ok := t.seen[s]; ok {
			v.Seen[s] = seen
		}
		v.Unseen[s] = Duration(d)
	}
	return v
}

// Candidate is a standby a failover could promote, as a look saw it.
type Candidate struct {
	Cluster string
	Site    string
	// Received is how far its WAL is received and flushed: what a
	// promotion replays.
	Received snapshot.LSN
}

// Choice is a failover's target and what it loses of what the survivors
// saw the primary write.
type Choice struct {
	Target   Candidate
	LastSeen snapshot.LSN // the furthest primary LSN the votes report
	SeenBy   []string     // the sites whose votes report it
	Loss     int64        // bytes of WAL
}

// Choose picks the standby with the most WAL (the first in candidates'
// order on a tie) and bounds what promoting it loses by the furthest LSN
// of primary that the votes report. It refuses when no vote reports one
// (the loss could not be bounded) or the loss exceeds maxLoss.
func Choose(primary string, candidates []Candidate, votes map[string]Vote, maxLoss int64) (Choice, error) {
	if len(candidates) == 0 {
		return Choice{}, fmt.Errorf("no standby of %s answers: nothing to promote", primary)
	}
	best := candidates[0]
	for _, c := range candidates[1:] {
		if c.Received > best.Received {
			best = c
		}
	}
	last, by := LastPrimaryLSN(primary, votes)
	ch := Choice{Target: best, LastSeen: last, SeenBy: by}
	if last == 0 {
		return ch, fmt.Errorf("no surviving site's vote reports %s's WAL position: what a failover loses cannot be bounded", primary)
	}
	var err error
	ch.Loss, err = Within(last, best, primary, maxLoss)
	return ch, err
}

// Within is what promoting target loses of what the survivors saw primary
// write (up to lastSeen), refused above maxLoss.
func Within(lastSeen snapshot.LSN, target Candidate, primary string, maxLoss int64) (int64, error) {
	loss := Loss(lastSeen, target.Received)
	if loss > maxLoss {
		return loss, fmt.Errorf("promoting %s loses %d bytes of %s's WAL (it has %s, the survivors saw %s at %s), more than maxDataLoss %d",
			target.Cluster, loss, primary, target.Received, primary, lastSeen, maxLoss)
	}
	return loss, nil
}
