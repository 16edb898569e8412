package reconcile

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/pgtopo/pgtopo/quorum"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// VoteStore reads and writes the topology's votes, one Lease per voting
// site (docs/automatic-failover.md).
type VoteStore interface {
	// ReadVote returns the site's vote, nil when it has none yet.
	ReadVote(ctx context.Context, d *topology.Desired, site string) (*quorum.Vote, error)
	WriteVote(ctx context.Context, d *topology.Desired, v quorum.Vote) error
}

// Keeper is the agent of one site for a topology whose failover is
// automatic: every renewal it reads the other voting sites' votes, writes
// its own with the primary's LSN it last saw, and decides as package
// quorum does: in the primary's site whether the primary must be fenced,
// elsewhere whether the others may fail over. This version decides and
// says so; it acts on neither decision yet.
type Keeper struct {
	Site  string // the site this agent runs in
	Agent string // its identity
	Store VoteStore
	Log   *slog.Logger
	// Now is the agent's clock (time.Now when nil).
	Now func() time.Time

	mu       sync.Mutex
	desired  *topology.Desired
	primary  string // the primary it last saw writable, and its LSN
	lsn      snapshot.LSN
	tracker  *quorum.Tracker
	renewed  time.Time
	lastGist string
	lastAt   time.Time
}

// sayAgain is how often a keeper repeats a decision that has not changed.
const sayAgain = 10 * time.Second

// Round is what one renewal read, wrote and decided.
type Round struct {
	Vote quorum.Vote
	// Read are the other voters' votes read; Unread why the others were not.
	Read   map[string]quorum.Vote
	Unread map[string]string
	// Wrote says whether the agent's own vote was written.
	Wrote bool
	// Fence is the primary's agent's decision; Failover the others'.
	Fence, Failover *quorum.Decision
}

// Update gives the keeper the topology and what the loop's last cycle saw.
func (k *Keeper) Update(d *topology.Desired, snap *snapshot.Snapshot) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.desired = d
	if snap == nil {
		return
	}
	for _, c := range snap.Clusters {
		if c.PG != nil && !c.PG.InRecovery && c.Error == "" {
			k.primary, k.lsn = c.Name, c.PG.CurrentLSN
		}
	}
}

func (k *Keeper) now() time.Time {
	if k.Now != nil {
		return k.Now()
	}
	return time.Now()
}

// Run renews the vote every quorum.DefaultRenew until ctx ends, for as
// long as the topology's failover is automatic and this site votes.
func (k *Keeper) Run(ctx context.Context) {
	t := time.NewTicker(quorum.DefaultRenew)
	defer t.Stop()
	for {
		if r, ok := k.Round(ctx); ok {
			k.say(r)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Round renews once; false when there is nothing to do (no cycle yet, the
// failover not automatic, or this site not a voter).
func (k *Keeper) Round(ctx context.Context) (Round, bool) {
	k.mu.Lock()
	d, primary, lsn := k.desired, k.primary, k.lsn
	k.mu.Unlock()
	if d == nil || !d.Failover.Automatic() {
		return Round{}, false
	}
	voters := d.Voters()
	if !slices.Contains(voters, k.Site) {
		return Round{}, false
	}
	timing := quorum.TimingFor(d.Failover.After)
	if k.tracker == nil {
		k.tracker = quorum.NewTracker(k.now())
	}
	r := Round{Read: map[string]quorum.Vote{}, Unread: map[string]string{}}
	var others []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, site := range voters {
		if site == k.Site {
			continue
		}
		others = append(others, site)
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(ctx, timing.Read)
			defer cancel()
			v, err := k.Store.ReadVote(rctx, d, site)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				r.Unread[site] = err.Error()
			case v == nil:
				r.Unread[site] = "no vote yet"
			default:
				r.Read[site] = *v
			}
		})
	}
	wg.Wait()
	now := k.now()
	unseen := k.tracker.Observe(now, others, r.Read)
	r.Vote = k.tracker.Vote(k.Site, k.Agent, now, unseen)
	r.Vote.Primary, r.Vote.PrimaryLSN = primary, lsn
	wctx, cancel := context.WithTimeout(ctx, timing.Read)
	if err := k.Store.WriteVote(wctx, d, r.Vote); err != nil {
		r.Unread[k.Site] = "its own vote not written: " + err.Error()
	} else {
		r.Wrote, k.renewed = true, now
	}
	cancel()
	primarySite := d.Primary().Site.Name
	if primarySite == k.Site {
		fence := quorum.MustFence(timing, voters, k.Site, k.renewed, r.Read, k.now())
		r.Fence = &fence
	} else {
		fo := quorum.MayFailOver(timing, voters, k.Site, primarySite, unseen, r.Read)
		r.Failover = &fo
	}
	return r, true
}

// say logs a round's decision when it changes.
func (k *Keeper) say(r Round) {
	var line string
	var act bool
	switch {
	case r.Fence != nil:
		line, act = "quorum: primary's site: "+r.Fence.Why, r.Fence.Act
		if act {
			line = "quorum: would fence the primary: " + r.Fence.Why
		}
	case r.Failover != nil:
		line, act = "quorum: "+r.Failover.Why, r.Failover.Act
		if act {
			line = "quorum: a failover may start: " + r.Failover.Why
		}
	}
	if act {
		line += " (automatic failover acts in a later version: nothing done)"
	}
	// A changed decision at once; the same one again every
	// sayAgain (its words hold durations, which change every round).
	gist := fmt.Sprint(act, r.Wrote, len(r.Read))
	if gist == k.lastGist && time.Since(k.lastAt) < sayAgain {
		return
	}
	k.lastGist, k.lastAt = gist, time.Now()
	k.mu.Lock()
	name := k.desired.Name
	k.mu.Unlock()
	attrs := []any{"topology", name, "site", k.Site, "vote", fmt.Sprintf("renewed %s, primary %s at %s", r.Vote.Renewed.Format(time.RFC3339Nano), r.Vote.Primary, r.Vote.PrimaryLSN)}
	for site, why := range r.Unread {
		attrs = append(attrs, "unread "+site, why)
	}
	if act {
		k.Log.Warn(line, attrs...)
		return
	}
	k.Log.Info(line, attrs...)
}
