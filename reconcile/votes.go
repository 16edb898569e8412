package reconcile

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
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

// Fencer fences the primary from its own site, and lifts that fence.
type Fencer interface {
	// FenceAlone makes cluster refuse new writes and ends its client
	// sessions, recording why on its object, and says whether it had to
	// (false: it found cluster fenced already). It reads and writes the
	// primary's site alone and takes no Lease: the other sites are out of
	// sight, and a fence only takes writes away.
	FenceAlone(ctx context.Context, d *topology.Desired, cluster, why string) (bool, error)
	// Unfence lifts the quorum's fence of cluster, as pgtopo unfence does:
	// under the topology's Lease, with every site answering, cluster still
	// the file's primary and no other cluster writable.
	Unfence(ctx context.Context, d *topology.Desired, cluster string) error
}

// FailOver carries out a failover the quorum decided.
type FailOver interface {
	// FailOver promotes choice's target with consent to lose what it
	// lacks of what the survivors saw, once it has checked again that the
	// primary's site is out of its sight and the loss within maxDataLoss,
	// under the topology's Lease; then it records the new primary and the
	// consent in the file the loop follows, and says what it lost and
	// where the record went.
	FailOver(ctx context.Context, in *Input, choice quorum.Choice, why string) (string, error)
}

// PrimaryProbe reads the primary's WAL position now: a keeper asks it
// every renewal, so that its vote carries what the primary wrote a
// second ago rather than at the loop's last cycle.
type PrimaryProbe interface {
	PrimaryLSN(ctx context.Context, d *topology.Desired) (snapshot.LSN, error)
}

// QuorumFence begins the reason a keeper records with its fence; a fence
// whose reason begins otherwise was set by someone else, and the keeper
// never lifts it.
const QuorumFence = "quorum:"

// unfenceTimeout bounds the lifting of a fence: a full look, the Lease in
// every site, the unfence and its mark.
const unfenceTimeout = time.Minute

// Keeper is the agent of one site for a topology whose failover is
// automatic: every renewal it reads the other voting sites' votes, writes
// its own with the primary's LSN it last saw, and decides as package
// quorum does: in the primary's site whether the primary must be fenced,
// elsewhere whether the others may fail over. In the primary's site it
// fences the primary (with Fencer; nil only decides) and lifts that fence
// once a majority sees the site again; the failover it only decides, and
// says so.
type Keeper struct {
	Site     string // the site this agent runs in
	Agent    string // its identity
	Store    VoteStore
	Probe    PrimaryProbe // nil: the vote carries the LSN of the loop's last look
	Fencer   Fencer
	FailOver FailOver
	Log      *slog.Logger
	// Now is the agent's clock (time.Now when nil).
	Now func() time.Time

	mu         sync.Mutex
	input      *Input
	desired    *topology.Desired
	primary    string // the primary it last saw writable, and its LSN
	lsn        snapshot.LSN
	candidates []quorum.Candidate // standbys as the last look saw them
	failing    bool               // a failover runs
	failedAt   time.Time          // when its last failover attempt failed
	failedOver bool               // a failover of this agent's succeeded,
	failedFor  string             // for the topology of this digest
	marked     bool               // the loop's last look saw the file's primary under a quorum fence
	fenced     bool               // this keeper fenced the primary and has not lifted it
	unfencing  bool
	tracker    *quorum.Tracker
	started    time.Time // by the agent's clock, its first round
	renewed    time.Time
	lastGist   string
	lastAt     time.Time
}

// retryFailover is how long a keeper waits after a failed failover before
// it tries again (each attempt takes the Lease and looks at every site).
const retryFailover = 10 * time.Second

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
	// Fenced says the primary's agent fenced the primary this round;
	// FenceError why it could not.
	Fenced     bool
	FenceError error
	// Starting says the primary's agent would fence but has run for less
	// than FenceAfter: the others have not copied its stamps yet.
	Starting bool
	// Choice is the failover's target and loss, once one may start;
	// Refused why it may not go ahead; Started that this agent began it.
	Choice  *quorum.Choice
	Refused error
	Started bool
}

// Update gives the keeper the topology and what the loop's last cycle saw.
func (k *Keeper) Update(in *Input, snap *snapshot.Snapshot) {
	k.mu.Lock()
	defer k.mu.Unlock()
	d := in.Desired
	k.input, k.desired = in, d
	if snap == nil {
		return
	}
	// A standby this look could not read stays a candidate as last read:
	// the candidates only pick the target, which the failover reads again
	// before anything (a look during a partition may miss it).
	known := map[string]quorum.Candidate{}
	for _, c := range k.candidates {
		known[c.Cluster] = c
	}
	for _, c := range snap.Clusters {
		if c.PG == nil || c.Error != "" {
			continue
		}
		if !c.PG.InRecovery {
			delete(known, c.Name)
			// A probe in a renewal may have read further than this look.
			if c.Name != k.primary || c.PG.CurrentLSN > k.lsn {
				k.primary, k.lsn = c.Name, c.PG.CurrentLSN
			}
			continue
		}
		known[c.Name] = quorum.Candidate{Cluster: c.Name, Site: c.Site, Received: max(c.PG.ReceiveLSN, c.PG.ReplayLSN)}
	}
	k.candidates = k.candidates[:0]
	for _, c := range d.Clusters {
		if cand, ok := known[c.Name]; ok {
			k.candidates = append(k.candidates, cand)
		}
	}
	if c, ok := snap.Cluster(d.Primary().Name); ok && c.Exists && c.Object != nil {
		f := c.Object.Marks.Fence
		k.marked = f != nil && strings.HasPrefix(f.Reason, QuorumFence)
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
		k.started = k.now()
		k.tracker = quorum.NewTracker(k.started)
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
	if k.Probe != nil {
		wg.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, timing.Read)
			defer cancel()
			if got, err := k.Probe.PrimaryLSN(pctx, d); err == nil && got > 0 {
				k.mu.Lock()
				k.primary, k.lsn = d.Primary().Name, got
				k.mu.Unlock()
				primary, lsn = d.Primary().Name, got
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
		fence := quorum.MustFence(timing, voters, k.Site, k.renewed, k.tracker.Latest(), k.now())
		r.Fence = &fence
		k.act(ctx, d, &r, timing.FenceAfter)
	} else {
		fo := quorum.MayFailOver(timing, voters, k.Site, primarySite, unseen, k.tracker.Latest())
		r.Failover = &fo
		k.failOver(ctx, d, &r)
	}
	return r, true
}

// act carries out the primary's agent's decision: it fences the primary
// within quorum.FenceTime once the decision says so (again each round
// until it is done), and lifts its own fence, in the background, once a
// majority sees the site again. A fence the keeper did not set (no quorum
// mark) is never lifted.
func (k *Keeper) act(ctx context.Context, d *topology.Desired, r *Round, grace time.Duration) {
	if k.Fencer == nil {
		return
	}
	primary := d.Primary().Name
	k.mu.Lock()
	fenced, marked, unfencing := k.fenced, k.marked, k.unfencing
	k.mu.Unlock()
	switch {
	case r.Fence.Act && k.now().Sub(k.started) < grace:
		// A starting agent has no majority yet: the others have not
		// copied its stamps. It fences FenceAfter after its start
		// if they still have not.
		r.Starting = true
	case r.Fence.Act:
		// Every round while the majority is lost, not once: the fence is
		// read again where it lives, the primary's database. The soak
		// found a keeper that remembered fencing a primary in an earlier
		// life (since rejoined, unfenced and promoted again) and so left
		// it writable when its site was cut off anew.
		fctx, cancel := context.WithTimeout(ctx, quorum.FenceTime)
		applied, err := k.Fencer.FenceAlone(fctx, d, primary, QuorumFence+" "+r.Fence.Why)
		cancel()
		if err != nil {
			r.FenceError = err
			return
		}
		k.mu.Lock()
		k.fenced, k.marked = true, true
		k.mu.Unlock()
		r.Fenced = applied
	case !r.Fence.Act && (fenced || marked) && !unfencing:
		k.mu.Lock()
		k.unfencing = true
		k.mu.Unlock()
		go func() {
			uctx, cancel := context.WithTimeout(ctx, unfenceTimeout)
			err := k.Fencer.Unfence(uctx, d, primary)
			cancel()
			k.mu.Lock()
			k.unfencing = false
			if err == nil {
				k.fenced, k.marked = false, false
			}
			k.mu.Unlock()
			if err != nil {
				k.Log.Warn("quorum: the quorum's fence is not lifted: "+err.Error(), "topology", d.Name, "site", k.Site, "cluster", primary)
				return
			}
			k.Log.Info("quorum: fence lifted: a majority sees "+k.Site+" again", "topology", d.Name, "site", k.Site, "cluster", primary)
		}()
	}
}

// failOver starts the failover a round decided, from the agent of the
// target's site alone (the standby with the most WAL; a witness never
// acts), once per topology revision, in the background: renewals go on.
func (k *Keeper) failOver(ctx context.Context, d *topology.Desired, r *Round) {
	if !r.Failover.Act {
		return
	}
	k.mu.Lock()
	in, cands, done := k.input, k.candidates, k.failedOver && k.failedFor == d.Digest
	busy := k.failing || time.Since(k.failedAt) < retryFailover
	k.mu.Unlock()
	votes := k.tracker.Latest()
	votes[k.Site] = r.Vote
	// The target and the loss by the loop's last look, which may be a
	// cycle old: the loss is gated again on a fresh look by FailOver;
	// here only a failover that could not be bounded at all is refused.
	choice, err := quorum.Choose(d.Primary().Name, cands, votes, math.MaxInt64)
	r.Choice, r.Refused = &choice, err
	if err != nil || k.FailOver == nil || choice.Target.Site != k.Site || busy || done {
		return
	}
	k.mu.Lock()
	k.failing = true
	k.mu.Unlock()
	r.Started = true
	why := r.Failover.Why
	go func() {
		where, err := k.FailOver.FailOver(ctx, in, choice, why)
		k.mu.Lock()
		k.failing = false
		if err == nil {
			k.failedOver, k.failedFor = true, d.Digest
		} else {
			k.failedAt = time.Now()
		}
		k.mu.Unlock()
		attrs := []any{"topology", d.Name, "site", k.Site, "from", d.Primary().Name, "to", choice.Target.Cluster}
		if err != nil {
			k.Log.Error("quorum: the failover did not happen: "+err.Error(), attrs...)
			return
		}
		k.Log.Warn(fmt.Sprintf("quorum: failed over: %s is primary; %s", choice.Target.Cluster, where), attrs...)
	}()
}

// say logs a round's decision when it changes.
func (k *Keeper) say(r Round) {
	var line string
	var act bool
	switch {
	case r.Fence != nil:
		line, act = "quorum: primary's site: "+r.Fence.Why, r.Fence.Act
		switch {
		case !act:
		case r.Starting:
			line = "quorum: starting, no majority yet: " + r.Fence.Why
		case r.Fenced:
			line = "quorum: fenced the primary: " + r.Fence.Why
		case r.FenceError != nil:
			line = "quorum: must fence the primary and could not: " + r.FenceError.Error() + ": " + r.Fence.Why
		case k.Fencer == nil:
			line = "quorum: would fence the primary: " + r.Fence.Why + " (nothing done: this agent decides only)"
		default:
			line = "quorum: the primary stays fenced: " + r.Fence.Why
		}
	case r.Failover != nil:
		line, act = "quorum: "+r.Failover.Why, r.Failover.Act
		switch {
		case !act:
		case r.Refused != nil:
			line = "quorum: a failover may start and is refused: " + r.Refused.Error() + " (" + r.Failover.Why + ")"
		case r.Started:
			line = fmt.Sprintf("quorum: failing over to %s: %s; by the last cycle's look it loses %d bytes of the %s the survivors saw (measured again, and gated by maxDataLoss, before the promotion)", r.Choice.Target.Cluster, r.Failover.Why, r.Choice.Loss, r.Choice.LastSeen)
		case k.FailOver == nil:
			line = "quorum: a failover may start: " + r.Failover.Why + " (nothing done: this agent decides only)"
		case r.Choice.Target.Site != k.Site:
			line = "quorum: a failover may start: " + r.Failover.Why + "; " + r.Choice.Target.Site + "'s agent promotes " + r.Choice.Target.Cluster
		default:
			line = "quorum: a failover may start: " + r.Failover.Why + "; this agent's failover runs or ran"
		}
	}
	// A changed decision at once; the same one again every
	// sayAgain (its words hold durations, which change every round).
	gist := fmt.Sprint(act, r.Wrote, len(r.Read), r.Fenced, r.FenceError != nil, r.Starting, r.Refused != nil, r.Started)
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
