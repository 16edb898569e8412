// Package patroni is the flavor of Patroni clusters outside Kubernetes
// (VMs), driven through Patroni's own REST API: a cluster's role is its
// dynamic configuration's standby_cluster (set: a standby cluster of that
// peer; absent: a primary), its standbys' slots are permanent slots there,
// and pgtopo's marks (journal, digest, failover record) are one key of it,
// "pgtopo". pgtopo never starts or removes a Patroni cluster.
package patroni

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// MarksKey is the dynamic configuration's key holding pgtopo's marks, as
// one JSON string so that a merge patch replaces it whole.
const MarksKey = "pgtopo"

// Credentials of one Patroni cluster, from the environment or a file named
// by a flag; never from the topology file, never printed.
type Credentials struct {
	PGUser, PGPassword     string
	RESTUser, RESTPassword string
	// PGCA is the PEM bundle that verifies the cluster's PostgreSQL
	// server certificate, and PGCAFrom where it was given; nil when none.
	PGCA     []byte
	PGCAFrom string
}

// Cluster is one Patroni cluster of a site.
type Cluster struct {
	Name   string
	Client *Client
	Creds  Credentials
}

// Site is a patroni site: its clusters by name. It serves what observing
// and applying need of a site; what a Kubernetes site has and a set of VMs
// does not (Services, Nodes, Leases, Secrets that can be written) is
// refused with words.
type Site struct {
	Name     string
	Clusters map[string]Cluster
	// CredentialsSecret is the name the rest of pgtopo knows a cluster's
	// admin credentials by (the operator flavor's); GetSecret answers it
	// from Creds.
	CredentialsSecret func(cluster string) string
	// UserKey and PasswordKey are that Secret's keys of the login.
	UserKey, PasswordKey string
}

var errNotKube = errors.New("a patroni site has no Kubernetes API")

func (s Site) cluster(name string) (Cluster, error) {
	c, ok := s.Clusters[name]
	if !ok {
		return Cluster{}, fmt.Errorf("patroni site %s has no cluster %s", s.Name, name)
	}
	return c, nil
}

// ReadCluster reads a cluster's dynamic configuration and members. A
// cluster none of whose members answers does not exist yet (nil, nil):
// pgtopo does not start VMs, and the plan says what to do.
func (s Site) ReadCluster(ctx context.Context, _, name string) (*snapshot.Object, error) {
	c, err := s.cluster(name)
	if err != nil {
		return nil, err
	}
	view, err := c.Client.Cluster(ctx)
	if errors.Is(err, ErrNoMember) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	cfg, err := c.Client.Config(ctx)
	if err != nil {
		return nil, err
	}
	o := Parse(cfg, view)
	return &o, nil
}

// Parse reads a cluster's object from its dynamic configuration and its
// members: the role it is configured for, pgtopo's marks, its permanent
// slots, and whether a leader runs.
func Parse(cfg map[string]any, view *ClusterView) snapshot.Object {
	o := snapshot.Object{Spec: snapshot.Spec{Flavor: snapshot.FlavorPatroni,
		Replication: snapshot.Replication{Enabled: true}}}
	if sc, ok := cfg["standby_cluster"].(map[string]any); ok {
		r := &o.Spec.Replication
		r.IsReplica = true
		r.PeerHost, _ = sc["host"].(string)
		r.PeerPort = intOf(sc["port"])
		r.PrimarySlot, _ = sc["primary_slot_name"].(string)
	}
	if slots, ok := cfg["slots"].(map[string]any); ok {
		o.PermanentSlots = slices.Sorted(maps.Keys(slots))
	}
	if params, ok := nestedMap(cfg, "postgresql", "parameters"); ok {
		if v, ok := params[snapshot.FenceParameter]; ok && v != nil {
			o.Spec.Parameters = map[string]string{snapshot.FenceParameter: fmt.Sprint(v)}
		}
	}
	if raw, ok := cfg[MarksKey]; ok {
		str, _ := raw.(string)
		if err := json.Unmarshal([]byte(str), &o.Marks); err != nil {
			o.MarksError = fmt.Sprintf("dynamic config key %q is not pgtopo's marks: %v", MarksKey, err)
			o.Marks = snapshot.Marks{}
		}
	}
	b, _ := json.Marshal(cfg) // maps marshal with sorted keys: a stable version
	sum := sha256.Sum256(b)
	o.ResourceVersion = "config-" + hex.EncodeToString(sum[:6])
	o.Status, o.Ready = status(view)
	if view != nil {
		for _, m := range view.Members {
			o.MemberSlots = append(o.MemberSlots, MemberSlot(m.Name))
		}
	}
	return o
}

// status describes the members and says whether a leader runs.
func status(v *ClusterView) (string, bool) {
	if v == nil || len(v.Members) == 0 {
		return "no members", false
	}
	l, ok := v.Leader()
	if !ok {
		return fmt.Sprintf("no leader (%d members)", len(v.Members)), false
	}
	return fmt.Sprintf("%s %s %s, %d members", l.Role, l.Name, l.State, len(v.Members)), l.State == "running"
}

// MemberSlot is the slot Patroni keeps for a member: its name in
// lowercase with every character a slot name cannot hold as '_'.
func MemberSlot(member string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_':
			return r
		case r >= 'A' && r <= 'Z':
			return r + ('a' - 'A')
		}
		return '_'
	}, member)
}

func intOf(v any) int {
	switch n := v.(type) {
	case float64:
		return int(n)
	case string:
		var i int
		_, _ = fmt.Sscan(n, &i)
		return i
	}
	return 0
}

// ListClusters finds no orphans: a patroni site is the clusters the file
// lists.
func (s Site) ListClusters(context.Context, string, string) ([]string, error) { return nil, nil }

// CheckFlavor: Patroni's REST API is the same for every cluster.
func (s Site) CheckFlavor(context.Context) string { return "" }

// GetService: a Patroni cluster's endpoint is the file's (a VIP or
// HAProxy), not a Service.
func (s Site) GetService(context.Context, string, string) (*corev1.Service, error) {
	return nil, errNotKube
}

// ListNodes answers whether the site is reachable: it is when a member of
// any of its clusters answers (none listed: no VM to ask, so reachable).
func (s Site) ListNodes(ctx context.Context) ([]corev1.Node, error) {
	var errs []string
	for _, name := range slices.Sorted(maps.Keys(s.Clusters)) {
		_, err := s.Clusters[name].Client.Cluster(ctx)
		if err == nil {
			return nil, nil
		}
		errs = append(errs, name+": "+err.Error())
	}
	if len(errs) == 0 {
		return nil, nil
	}
	return nil, fmt.Errorf("no Patroni member answers: %s", strings.Join(errs, "; "))
}

// GetSecret answers a cluster's credentials Secret from the credentials
// pgtopo was given, so the rest of pgtopo (probes, admin sessions, a
// standby's bootstrap Secret copied to an operator site) reads them the
// same way; any other Secret does not exist here.
func (s Site) GetSecret(_ context.Context, ns, name string) (*corev1.Secret, error) {
	for _, c := range s.Clusters {
		if s.CredentialsSecret(c.Name) == name && c.Creds.PGPassword != "" {
			sec := &corev1.Secret{Data: map[string][]byte{s.UserKey: []byte(c.Creds.PGUser), s.PasswordKey: []byte(c.Creds.PGPassword)}}
			sec.Name, sec.Namespace = name, ns
			return sec, nil
		}
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, name)
}

// PostgresCA answers a cluster's CA bundle from its credentials: a
// Patroni site has no ConfigMap or Secret for a topology's source to name.
// With none given, the system's roots verify it unless the topology names
// a source, which would then be silently ignored: that is refused.
func (s Site) PostgresCA(_ context.Context, cluster, _ string, src *topology.CASource) ([]byte, string, error) {
	c, err := s.cluster(cluster)
	if err != nil {
		return nil, "", err
	}
	if c.Creds.PGCA != nil {
		return c.Creds.PGCA, c.Creds.PGCAFrom, nil
	}
	if src != nil {
		kind, name, _ := src.Object()
		return nil, "", fmt.Errorf("no CA bundle for Patroni cluster %s: spec.postgres.tls.ca names %s %s, which a Patroni site does not hold; give the bundle with its credentials (PGTOPO_PATRONI_PG_CA_FILE, or per cluster PGTOPO_PATRONI_<CLUSTER>_PG_CA_FILE)", cluster, kind, name)
	}
	return nil, "", nil
}

// RestartPending has Patroni restart each member of the cluster whose
// server waits for a restart.
func (s Site) RestartPending(ctx context.Context, _, name string) error {
	c, err := s.cluster(name)
	if err != nil {
		return err
	}
	return c.Client.RestartPending(ctx)
}

// GetLease: a patroni site holds no Lease (the lock lives in the
// topology's kubernetes sites).
func (s Site) GetLease(context.Context, string, string) (*coordinationv1.Lease, error) {
	return nil, errNotKube
}

// GetConfigMap: a Patroni site keeps no ConfigMaps (nor a topology's
// drills: those are in its Kubernetes sites).
func (s Site) GetConfigMap(context.Context, string, string) (*corev1.ConfigMap, error) {
	return nil, errNotKube
}

// WriteSpec writes a cluster's role: standby_cluster pointed at the peer
// through the payload's slot, or removed, which promotes the standby
// leader; and the fence on return, the one parameter pgtopo owns in a
// Patroni cluster's dynamic config (every member applies it, also when it
// starts), or its removal.
func (s Site) WriteSpec(ctx context.Context, _, name string, spec snapshot.Spec) error {
	c, err := s.cluster(name)
	if err != nil {
		return err
	}
	var fence any // null: removed
	if v, ok := spec.Parameters[snapshot.FenceParameter]; ok {
		fence = v
	}
	return c.Client.PatchConfig(ctx, map[string]any{"standby_cluster": StandbyCluster(spec),
		"postgresql": map[string]any{"parameters": map[string]any{snapshot.FenceParameter: fence}}})
}

// StandbyCluster is the standby_cluster section of a spec, nil for a
// primary: the peer, its slot, and a base backup as the way to create
// replicas (never from an archive pgtopo does not know of).
func StandbyCluster(spec snapshot.Spec) map[string]any {
	r := spec.Replication
	if !r.IsReplica {
		return nil
	}
	sc := map[string]any{"host": r.PeerHost, "port": r.PeerPort, "create_replica_methods": []string{"basebackup"}}
	if r.PrimarySlot != "" {
		sc["primary_slot_name"] = r.PrimarySlot
	}
	return sc
}

// WriteMarks writes pgtopo's marks as one key of the dynamic config.
func (s Site) WriteMarks(ctx context.Context, _, name string, m snapshot.Marks) error {
	c, err := s.cluster(name)
	if err != nil {
		return err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return c.Client.PatchConfig(ctx, map[string]any{MarksKey: string(b)})
}

// EnsurePermanentSlot adds a physical slot to the cluster's permanent
// slots: its leader creates it and keeps it, and every member that
// becomes leader does too.
func (s Site) EnsurePermanentSlot(ctx context.Context, _, name, slot string) error {
	c, err := s.cluster(name)
	if err != nil {
		return err
	}
	return c.Client.PatchConfig(ctx, map[string]any{"slots": map[string]any{slot: map[string]any{"type": "physical"}}})
}

// DropPermanentSlot removes a slot from the cluster's permanent slots, so
// that its leader no longer keeps it.
func (s Site) DropPermanentSlot(ctx context.Context, _, name, slot string) error {
	c, err := s.cluster(name)
	if err != nil {
		return err
	}
	return c.Client.PatchConfig(ctx, map[string]any{"slots": map[string]any{slot: nil}})
}

// DeleteCluster is refused: pgtopo does not remove VMs' data.
func (s Site) DeleteCluster(_ context.Context, _, name string) error {
	return fmt.Errorf("%s is a Patroni cluster outside Kubernetes: pgtopo does not delete its data; rebuild it by hand (pgtopo render patroni-bootstrap %s)", name, name)
}

// ApplySecret is refused: a patroni site has no Secrets to write.
func (s Site) ApplySecret(_ context.Context, sec *corev1.Secret) error {
	return fmt.Errorf("secret %s: %w", sec.Name, errNotKube)
}

// DeleteSecret is refused, as ApplySecret.
func (s Site) DeleteSecret(_ context.Context, _, name string) error {
	return fmt.Errorf("secret %s: %w", name, errNotKube)
}

// CreateLease is refused: the lock lives in kubernetes sites.
func (s Site) CreateLease(context.Context, *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	return nil, errNotKube
}

// UpdateLease is refused, as CreateLease.
func (s Site) UpdateLease(context.Context, *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	return nil, errNotKube
}

// nestedMap is the map at keys in a decoded JSON document.
func nestedMap(m map[string]any, keys ...string) (map[string]any, bool) {
	for _, k := range keys {
		next, ok := m[k].(map[string]any)
		if !ok {
			return nil, false
		}
		m = next
	}
	return m, true
}
