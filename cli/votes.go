package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pgtopo/pgtopo/kube"
	"github.com/pgtopo/pgtopo/quorum"
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
