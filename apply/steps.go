package apply

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pgtopo/pgtopo/diff"
	"github.com/pgtopo/pgtopo/flavor/alauda"
	"github.com/pgtopo/pgtopo/live"
	"github.com/pgtopo/pgtopo/topology"
)

// exec runs one step.
type exec struct {
	r     *Runner
	d     *topology.Desired
	step  diff.Step
	start time.Time
	// last is the snapshot that satisfied the latest wait: fresh enough to
	// build the next write from without observing again.
	last *live.Snapshot
}

func (x *exec) progress(format string, args ...any) { x.r.progress(x.start, "  "+format, args...) }

func (x *exec) cluster(name string) topology.DesiredCluster {
	c, _ := x.d.Cluster(name)
	return c
}

func (x *exec) writer(c topology.DesiredCluster) (SiteWriter, error) {
	return x.r.Writer(c.Site.Context)
}

// keepAnnotations returns the pgtopo annotations a CR has now, so that a
// step that does not mean to change them sends them unchanged.
func keepAnnotations(o *live.ClusterState) map[string]string {
	out := map[string]string{}
	if o != nil && o.Exists {
		for k, v := range o.CR.Annotations {
			out[k] = v
		}
	}
	return out
}

// shapeNow is the CR shape a cluster should have given its role in the
// file and the primary's endpoint.
func (x *exec) shapeNow(c topology.DesiredCluster, o *live.ClusterState, primaryEP *live.Endpoint) alauda.Shape {
	s := alauda.Shape{Instances: c.Instances, Annotations: keepAnnotations(o)}
	if c.Role == topology.RoleStandby {
		s.IsReplica = true
		if primaryEP != nil {
			s.PeerHost, s.PeerPort = primaryEP.Host, primaryEP.Port
		} else if o != nil && o.Exists {
			s.PeerHost, s.PeerPort = o.CR.Replication.PeerHost, o.CR.Replication.PeerPort
		}
	}
	return s
}

func (x *exec) applyCR(ctx context.Context, c topology.DesiredCluster, s alauda.Shape) error {
	w, err := x.writer(c)
	if err != nil {
		return err
	}
	if err := w.ApplyPostgresql(ctx, alauda.Build(x.d, c, s)); err != nil {
		return fmt.Errorf("apply CR %s/%s: %w", c.Namespace, c.Name, err)
	}
	return nil
}

func (x *exec) ensurePrimary(ctx context.Context, snap *live.Snapshot) error {
	c := x.cluster(x.step.Subject.Cluster)
	o, _ := snap.Cluster(c.Name)
	if err := x.applyCR(ctx, c, x.shapeNow(c, o, nil)); err != nil {
		return err
	}
	return x.wait(ctx, fmt.Sprintf("%s Running and writable", c.Name), func(s *live.Snapshot) (bool, string) {
		cs, _ := s.Cluster(c.Name)
		return cs.Exists && cs.CR.Status == alauda.StatusRunning && cs.Writable(), statusWords(cs)
	})
}

func (x *exec) checkpoint(ctx context.Context, snap *live.Snapshot) error {
	o, _ := snap.Cluster(x.step.Subject.Cluster)
	return x.sql(ctx, o, "CHECKPOINT")
}

// sql runs a statement on a cluster as its admin user.
func (x *exec) sql(ctx context.Context, o *live.ClusterState, stmt string, args ...any) error {
	return x.session(ctx, o, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, stmt, args...)
		return err
	})
}

// session runs fn on one connection to a cluster's endpoint as its admin.
func (x *exec) session(ctx context.Context, o *live.ClusterState, fn func(*pgx.Conn) error) error {
	c := x.cluster(o.Name)
	w, err := x.writer(c)
	if err != nil {
		return err
	}
	if o.Endpoint == nil {
		return fmt.Errorf("%s has no endpoint", o.Name)
	}
	sec, err := w.GetSecret(ctx, c.Namespace, alauda.CredentialsSecret(c.Name))
	if err != nil {
		return fmt.Errorf("credentials of %s: %w", c.Name, err)
	}
	conn, err := live.Connect(ctx, *o.Endpoint, string(sec.Data["username"]), string(sec.Data["password"]), 0)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if err := fn(conn); err != nil {
		return fmt.Errorf("%s: %w", o.Name, err)
	}
	return nil
}

// bootstrapSecret copies the primary's admin credentials into the standby's
// namespace as a basic-auth Secret. The values pass from one API server to
// the other and are never printed.
func (x *exec) bootstrapSecret(ctx context.Context, snap *live.Snapshot) error {
	primary := x.d.Primary()
	standby := x.cluster(x.step.Subject.Cluster)
	pw, err := x.writer(primary)
	if err != nil {
		return err
	}
	src, err := pw.GetSecret(ctx, primary.Namespace, alauda.CredentialsSecret(primary.Name))
	if err != nil {
		return fmt.Errorf("credentials of %s: %w", primary.Name, err)
	}
	sw, err := x.writer(standby)
	if err != nil {
		return err
	}
	name := alauda.BootstrapSecret(x.d.Name)
	if cur, err := sw.GetSecret(ctx, standby.Namespace, name); err == nil && cur.Type != corev1.SecretTypeBasicAuth {
		// The type of a Secret cannot change in place.
		if err := sw.DeleteSecret(ctx, standby.Namespace, name); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("replace secret %s: %w", name, err)
		}
	}
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: standby.Namespace, Labels: map[string]string{alauda.LabelTopology: x.d.Name}},
		Type:       corev1.SecretTypeBasicAuth,
		Data: map[string][]byte{
			corev1.BasicAuthUsernameKey: src.Data["username"],
			corev1.BasicAuthPasswordKey: src.Data["password"],
		},
	}
	if err := sw.ApplySecret(ctx, sec); err != nil {
		return fmt.Errorf("secret %s/%s: %w", standby.Namespace, name, err)
	}
	x.progress("secret %s/%s in site %s: copy of %s (fingerprint %s)", standby.Namespace, name, standby.Site.Name,
		alauda.CredentialsSecret(primary.Name), alauda.HashSecretData(sec.Data))
	return nil
}

func (x *exec) createStandby(ctx context.Context, snap *live.Snapshot) error {
	c := x.cluster(x.step.Subject.Cluster)
	primary, _ := snap.Cluster(x.d.Primary().Name)
	if primary.Endpoint == nil {
		return fmt.Errorf("the primary %s has no endpoint yet", primary.Name)
	}
	o, _ := snap.Cluster(c.Name)
	if err := x.applyCR(ctx, c, x.shapeNow(c, o, primary.Endpoint)); err != nil {
		return err
	}
	return x.waitStreaming(ctx, c.Name, primary.Name)
}

// waitStreaming waits until a standby streams from the primary with the
// same system identifier.
func (x *exec) waitStreaming(ctx context.Context, standby, primary string) error {
	return x.wait(ctx, fmt.Sprintf("%s streaming from %s", standby, primary), func(s *live.Snapshot) (bool, string) {
		sb, _ := s.Cluster(standby)
		pr, _ := s.Cluster(primary)
		if sb.PG == nil || pr.PG == nil {
			return false, statusWords(sb)
		}
		if sb.PG.SystemID != pr.PG.SystemID {
			return false, fmt.Sprintf("system identifier %s, primary's %s", sb.PG.SystemID, pr.PG.SystemID)
		}
		w := sb.PG.WalReceiver
		if w == nil || w.Status != "streaming" || pr.Endpoint == nil || w.SenderHost != pr.Endpoint.Host || w.SenderPort != pr.Endpoint.Port {
			return false, fmt.Sprintf("wal receiver %s", describeReceiver(w))
		}
		return true, fmt.Sprintf("replay %s, %s behind", sb.PG.ReplayLSN, diff.HumanBytes(behind(pr.PG, sb.PG)))
	})
}

func (x *exec) repoint(ctx context.Context, snap *live.Snapshot) error {
	c := x.cluster(x.step.Subject.Cluster)
	primary, _ := snap.Cluster(x.d.Primary().Name)
	if primary.Endpoint == nil || !primary.Writable() {
		return fmt.Errorf("the primary %s is not writable yet", primary.Name)
	}
	o, _ := snap.Cluster(c.Name)
	if err := x.applyCR(ctx, c, x.shapeNow(c, o, primary.Endpoint)); err != nil {
		return err
	}
	return x.waitStreaming(ctx, c.Name, primary.Name)
}

func (x *exec) update(ctx context.Context, snap *live.Snapshot) error {
	c := x.cluster(x.step.Subject.Cluster)
	o, _ := snap.Cluster(c.Name)
	var ep *live.Endpoint
	if c.Role == topology.RoleStandby {
		if p, _ := snap.Cluster(x.d.Primary().Name); p.Endpoint != nil {
			ep = p.Endpoint
		}
	}
	if err := x.applyCR(ctx, c, x.shapeNow(c, o, ep)); err != nil {
		return err
	}
	return x.wait(ctx, c.Name+" Running", func(s *live.Snapshot) (bool, string) {
		cs, _ := s.Cluster(c.Name)
		return cs.Exists && cs.CR.Status == alauda.StatusRunning && cs.CR.Instances == c.Instances, statusWords(cs)
	})
}

func (x *exec) fillExternalIP(ctx context.Context, snap *live.Snapshot) error {
	primary, _ := snap.Cluster(x.d.Primary().Name)
	standby, _ := snap.Cluster(x.step.Subject.Cluster)
	if standby.Endpoint == nil {
		return fmt.Errorf("%s has no load balancer address yet", standby.Name)
	}
	return x.sql(ctx, primary, "UPDATE sys_operator.multi_cluster_info SET external_ip = $1 WHERE cluster_name = $2 AND external_ip = ''",
		standby.Endpoint.Host, standby.Name)
}

func (x *exec) record(ctx context.Context, snap *live.Snapshot) error {
	c := x.cluster(x.step.Subject.Cluster)
	o, _ := snap.Cluster(c.Name)
	if !o.Exists {
		return fmt.Errorf("%s has no CR to record on", c.Name)
	}
	s := alauda.Shape{IsReplica: o.CR.Replication.IsReplica, Instances: o.CR.Instances, Annotations: keepAnnotations(o),
		PeerHost: o.CR.Replication.PeerHost, PeerPort: o.CR.Replication.PeerPort}
	s.Annotations[alauda.AnnotationDigest] = x.d.Digest
	if x.r.Options.Revision != "" {
		s.Annotations[alauda.AnnotationRevision] = x.r.Options.Revision
	}
	return x.applyCR(ctx, c, s)
}

// Poll intervals of waits: a switchover's writes are blocked while it waits,
// so its waits poll more often than the others.
const (
	pollEvery      = 300 * time.Millisecond
	pollSwitchover = 100 * time.Millisecond
)

// wait re-observes until cond holds, printing progress every few seconds.
func (x *exec) wait(ctx context.Context, what string, cond func(*live.Snapshot) (bool, string)) error {
	return x.waitEvery(ctx, pollEvery, what, cond)
}

func (x *exec) waitEvery(ctx context.Context, every time.Duration, what string, cond func(*live.Snapshot) (bool, string)) error {
	timeout := x.r.StepTimeout
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	began := time.Now()
	var lastPrint time.Time
	var detail string
	for {
		snap := x.r.Observer.Observe(ctx, x.d)
		ok, d := cond(snap)
		detail = d
		if ok {
			x.last = snap
			x.progress("%s after %.1fs (%s)", what, time.Since(began).Seconds(), detail)
			return nil
		}
		if time.Since(lastPrint) > 2*time.Second {
			x.progress("waiting for %s: %s (%.0fs)", what, detail, time.Since(began).Seconds())
			lastPrint = time.Now()
		}
		if time.Since(began) > timeout {
			return fmt.Errorf("waited %s for %s: %s", timeout, what, detail)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(every):
		}
	}
}

func statusWords(c *live.ClusterState) string {
	switch {
	case c == nil || !c.Exists:
		return "no CR yet"
	case c.PG == nil:
		return fmt.Sprintf("status %q, database: %s", c.CR.Status, orDash(c.PGError))
	case c.PG.InRecovery:
		return fmt.Sprintf("status %q, in recovery", c.CR.Status)
	}
	return fmt.Sprintf("status %q, writable, timeline %d", c.CR.Status, c.PG.Timeline)
}

func describeReceiver(w *live.WalReceiver) string {
	if w == nil {
		return "not running"
	}
	return fmt.Sprintf("%s from %s:%d", w.Status, w.SenderHost, w.SenderPort)
}

func behind(primary, standby *live.PGState) int64 {
	end := primary.EndOfWAL()
	if standby.ReplayLSN >= end {
		return 0
	}
	return int64(end - standby.ReplayLSN)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
