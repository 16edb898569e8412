package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pgtopo/pgtopo/apply"
	"github.com/pgtopo/pgtopo/kube"
	"github.com/pgtopo/pgtopo/live"
	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/planner"
	"github.com/pgtopo/pgtopo/quorum"
	"github.com/pgtopo/pgtopo/reconcile"
	"github.com/pgtopo/pgtopo/schema"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// voteAnnotation holds a site's vote, as JSON, on its vote Lease.
const voteAnnotation = "pgtopo.dev/vote"

// leaseVotes keeps each voting site's vote in a Lease of that site
// (docs/automatic-failover.md), through the run's shared site clients.
type leaseVotes struct{ src *sourceFlags }

func (l leaseVotes) site(d *topology.Desired, name string) (*kube.Site, string, error) {
	for _, s := range d.Sites() {
		if s.Name != name {
			continue
		}
		if s.Patroni() {
			return nil, "", fmt.Errorf("site %s is a Patroni site: it does not vote", name)
		}
		k, err := l.src.sites().Connect(s.Context)
		if err != nil {
			return nil, "", fmt.Errorf("site %s: %w", name, err)
		}
		return k, d.VoteNamespace(name), nil
	}
	return nil, "", fmt.Errorf("site %s is not a site of topology %s", name, d.Name)
}

func (l leaseVotes) ReadVote(ctx context.Context, d *topology.Desired, site string) (*quorum.Vote, error) {
	k, ns, err := l.site(d, site)
	if err != nil {
		return nil, err
	}
	lease, err := k.GetLease(ctx, ns, d.VoteLeaseName())
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("site %s: get Lease %s/%s: %w", site, ns, d.VoteLeaseName(), err)
	}
	raw, ok := lease.Annotations[voteAnnotation]
	if !ok {
		return nil, fmt.Errorf("site %s: Lease %s/%s has no %s annotation: not a vote pgtopo wrote", site, ns, d.VoteLeaseName(), voteAnnotation)
	}
	var v quorum.Vote
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		return nil, fmt.Errorf("site %s: Lease %s/%s: annotation %s: %w", site, ns, d.VoteLeaseName(), voteAnnotation, err)
	}
	return &v, nil
}

// WriteVote writes the vote on its site's Lease, created the first time;
// an update carries the resource version read, so two agents of one site
// cannot both write unnoticed.
func (l leaseVotes) WriteVote(ctx context.Context, d *topology.Desired, v quorum.Vote) error {
	k, ns, err := l.site(d, v.Site)
	if err != nil {
		return err
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	seconds := int32(quorum.TimingFor(d.Failover.After).Live / time.Second)
	renewed := metav1.NewMicroTime(v.Renewed)
	spec := coordinationv1.LeaseSpec{HolderIdentity: &v.Agent, LeaseDurationSeconds: &seconds, RenewTime: &renewed}
	lease, err := k.GetLease(ctx, ns, d.VoteLeaseName())
	switch {
	case apierrors.IsNotFound(err):
		_, err = k.CreateLease(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: d.VoteLeaseName(), Namespace: ns, Annotations: map[string]string{voteAnnotation: string(raw)}},
			Spec:       spec,
		})
	case err == nil:
		if lease.Annotations == nil {
			lease.Annotations = map[string]string{}
		}
		lease.Annotations[voteAnnotation] = string(raw)
		lease.Spec = spec
		_, err = k.UpdateLease(ctx, lease)
	}
	if err != nil {
		return fmt.Errorf("site %s: write Lease %s/%s: %w", v.Site, ns, d.VoteLeaseName(), err)
	}
	return nil
}

// quorumFencer is a keeper's Fencer: the fence and unfence of pgtopo fence
// and unfence, planned and applied the same way.
type quorumFencer struct {
	src    *sourceFlags
	keep   *live.Conns
	holder string
	log    *slog.Logger
}

// FenceAlone fences cluster looking at and writing its site alone, with
// no lock step: the Lease lives in every site, most of them out of sight.
func (f quorumFencer) FenceAlone(ctx context.Context, d *topology.Desired, cluster, why string) (bool, error) {
	local := d.PrimarySiteOnly()
	o, err := f.src.newObserver(local, f.keep)
	if err != nil {
		return false, err
	}
	mark := snapshot.Fence{By: f.holder, At: time.Now().UTC().Format(time.RFC3339), Reason: why}
	pl := func(s *snapshot.Snapshot) plan.Plan {
		p := planner.PlanFence(local, s, cluster, planner.FenceOptions{Force: true, Mark: mark})
		p.Steps = slices.DeleteFunc(p.Steps, func(s plan.Step) bool { return s.Action == plan.ActionLock })
		return p
	}
	snap := o.Observe(ctx, local)
	p := pl(snap)
	if p.Refused() {
		return false, &apply.RefusedError{Plan: p}
	}
	if len(p.Steps) == 0 {
		return false, nil // fenced already
	}
	if err := f.execute(ctx, local, o, p, snap, pl); err != nil {
		return false, err
	}
	return true, nil
}

// execute runs a fence or unfence plan as pgtopo fence and unfence do.
func (f quorumFencer) execute(ctx context.Context, d *topology.Desired, o *live.Observer, p plan.Plan, snap *snapshot.Snapshot, replan func(*snapshot.Snapshot) plan.Plan) error {
	r, err := f.src.runner(d, o, p, plan.Options{}, nil)
	if err != nil {
		return err
	}
	r.Holder, r.Replan = f.holder, replan
	r.Progress = apply.LogProgress(f.log.With("topology", d.Name))
	_, err = r.ExecuteFrom(ctx, p, snap)
	return err
}

// Unfence lifts the quorum's fence of cluster, under the topology's Lease
// in every site, once every site answers; a fence set by anyone else is
// left alone.
func (f quorumFencer) Unfence(ctx context.Context, d *topology.Desired, cluster string) error {
	if d.Primary().Name != cluster {
		return fmt.Errorf("%s is no longer the file's primary (%s is): its fence stays", cluster, d.Primary().Name)
	}
	o, err := f.src.newObserver(d, f.keep)
	if err != nil {
		return err
	}
	snap := o.Observe(ctx, d)
	for _, s := range snap.Sites {
		if !s.Reachable {
			return fmt.Errorf("site %s does not answer (%s): the fence stays until every site does", s.Name, s.Error)
		}
	}
	c, _ := snap.Cluster(cluster)
	if !c.Exists || c.Object == nil || c.Object.Marks.Fence == nil {
		return nil // not fenced (lifted by hand)
	}
	if fence := c.Object.Marks.Fence; !strings.HasPrefix(fence.Reason, reconcile.QuorumFence) {
		return fmt.Errorf("%s is fenced by %s (%s), not by the quorum: left alone", cluster, fence.By, fence.Reason)
	}
	pl := func(s *snapshot.Snapshot) plan.Plan {
		return planner.PlanUnfence(d, s, cluster, planner.FenceOptions{})
	}
	p := pl(snap)
	if p.Refused() {
		return &apply.RefusedError{Plan: p}
	}
	return f.execute(ctx, d, o, p, snap, pl)
}

// failoverLook bounds each site's part of the failover's first look: the
// primary's site has been out of a majority's sight for after, and waiting
// the usual site timeout on it would only lengthen the outage.
const failoverLook = 3 * time.Second

// quorumFailover is a keeper's FailOver: the failover apply runs on consent
// in the file, with the file's new text (primary and consent) written by
// the agent from what it measured, then recorded where the loop reads it.
type quorumFailover struct {
	quorumFencer
	site   string
	record reconcile.Recorder // nil: the source cannot record
}

func (f quorumFailover) FailOver(ctx context.Context, in *reconcile.Input, choice quorum.Choice, why string) (string, error) {
	d := in.Desired
	from := d.Primary()
	if f.record == nil {
		return "", fmt.Errorf("topology %s: no automatic failover from a plain file: the agents record a failover as a commit, so follow the topology from a repository (--repo URL)", d.Name)
	}
	if err := f.record.CanRecord(); err != nil {
		return "", fmt.Errorf("no failover: %w", err)
	}
	o, err := f.src.newObserver(d, f.keep)
	if err != nil {
		return "", err
	}
	o.SiteTimeout = failoverLook
	snap := o.Observe(ctx, d)
	if s, ok := snap.Site(from.Site.Name); ok && s.Reachable {
		return "", fmt.Errorf("site %s answers this agent again: no failover", from.Site.Name)
	}
	t, _ := snap.Cluster(choice.Target.Cluster)
	if t.PG == nil || !t.PG.InRecovery {
		return "", fmt.Errorf("%s is not a standby this agent can read (%s): no failover", choice.Target.Cluster, cmp.Or(t.PGError, "no error"))
	}
	// The loss gate, on what the target has received now (the keeper
	// chose it from the loop's last look).
	received := max(t.PG.ReceiveLSN, t.PG.ReplayLSN)
	loss, err := quorum.Within(choice.LastSeen, quorum.Candidate{Cluster: t.Name, Received: received}, from.Name, d.Failover.MaxDataLossLSN)
	if err != nil {
		return "", fmt.Errorf("%w: no failover", err)
	}
	consent := topology.Consent{Cluster: from.Name, SystemIdentifier: t.PG.SystemID, Timeline: t.PG.Timeline}
	content, err := topology.SetPrimary(in.Source.Name, []byte(in.Source.Content), t.Name, consent)
	if err != nil {
		return "", err
	}
	v, err := schema.NewValidator()
	if err != nil {
		return "", err
	}
	next, err := reconcile.Validate(v, in.Source.Name, content)
	if err != nil {
		return "", fmt.Errorf("the file with primary %s: %w", t.Name, err)
	}
	message := fmt.Sprintf(`%s: automatic failover %s → %s

%s (site %s) was out of sight of a majority of the sites: %s.
pgtopo's agent in site %s promoted %s.

Loss: %d bytes of WAL: %s had received up to %s; the survivors last saw
%s at %s (the votes of %s). maxDataLoss allows %d.
Consent, written below spec.primary: {cluster: %s, systemIdentifier: %q, timeline: %d}.
`, d.Name, from.Name, t.Name, from.Name, from.Site.Name, why, f.site, t.Name,
		loss, t.Name, received, from.Name, choice.LastSeen, strings.Join(choice.SeenBy, ", "), d.Failover.MaxDataLossLSN,
		consent.Cluster, consent.SystemIdentifier, consent.Timeline)
	// The record's commit first, unpublished: the failover records its
	// revision on the clusters, so a loop still reading the older commit
	// sees a rollback and refuses rather than switch back.
	prepared, err := f.record.Prepare(ctx, content, message)
	if err != nil {
		return "", fmt.Errorf("no failover: its record cannot be made: %w", err)
	}
	isFailover := func(s plan.Step) bool { return s.Action == plan.ActionFailover }
	opt, err := prepared.PlanOptions(snap)
	if err != nil {
		return "", err
	}
	pl := planner.Compute(next.Desired, snap, opt)
	if pl.Refused() {
		return "", &apply.RefusedError{Plan: pl}
	}
	if !slices.ContainsFunc(pl.Steps, isFailover) {
		return "", fmt.Errorf("the plan for primary %s holds no failover (%s): no failover", t.Name, pl.Headline())
	}
	r, err := f.src.runner(next.Desired, o, pl, opt, nil)
	if err != nil {
		return "", err
	}
	r.Holder = f.holder
	r.Progress = apply.LogProgress(f.log.With("topology", d.Name))
	r.FollowUps = 1
	r.Changed = func(now plan.Plan, why []string) error {
		if !slices.ContainsFunc(now.Steps, isFailover) {
			return fmt.Errorf("under the Lease the plan holds no failover any more (%s): no failover", strings.Join(why, "; "))
		}
		return nil
	}
	if _, err := r.ExecuteFrom(ctx, pl, snap); err != nil {
		return "", err
	}
	where, err := f.record.Publish(ctx, prepared)
	if err != nil {
		return "", fmt.Errorf("failed over to %s, losing %d bytes of what the survivors saw, but its record, commit %s, was not pushed (%w): the clusters carry its revision, unknown to the loops, so they refuse: commit %s with primary: %s and acceptDataLoss: {cluster: %s, systemIdentifier: %q, timeline: %d}, and apply it once with --allow-rollback",
			t.Name, loss, plan.ShortRevision(prepared.Revision), err, in.Source.Name, t.Name, consent.Cluster, consent.SystemIdentifier, consent.Timeline)
	}
	return fmt.Sprintf("it lost %d bytes of the %s the survivors saw (maxDataLoss %d); %s", loss, choice.LastSeen, d.Failover.MaxDataLossLSN, where), nil
}

// primaryProbe is a keeper's PrimaryProbe: a focused look at the file's
// primary, on one observer kept across renewals (a focused look keeps its
// reads of the Service and the login while the database answers).
type primaryProbe struct {
	src  *sourceFlags
	keep *live.Conns

	mu     sync.Mutex
	obs    *live.Observer
	digest string
}

func (p *primaryProbe) PrimaryLSN(ctx context.Context, d *topology.Desired) (snapshot.LSN, error) {
	p.mu.Lock()
	if p.obs == nil || p.digest != d.Digest {
		o, err := p.src.newObserver(d, p.keep)
		if err != nil {
			p.mu.Unlock()
			return 0, err
		}
		p.obs, p.digest = o, d.Digest
	}
	o := p.obs
	p.mu.Unlock()
	name := d.Primary().Name
	c, _ := o.ObserveClusters(ctx, d, []string{name}).Cluster(name)
	if c.PG == nil || c.PG.InRecovery {
		return 0, fmt.Errorf("%s is not a primary this agent reads (%s)", name, cmp.Or(c.PGError, "no error"))
	}
	return c.PG.CurrentLSN, nil
}
