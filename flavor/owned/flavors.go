package owned

import "github.com/pgtopo/pgtopo/snapshot"

func path(p ...string) []string { return p }

// Alauda is what pgtopo owns of the alauda flavor's postgresql CR
// (acid.zalan.do/v1 with the clusterReplication extension), under spec.
// The topology label is metadata, written apart.
var Alauda = append(Set{
	Int("numberOfInstances", path("numberOfInstances"), func(s *snapshot.Spec) *int { return &s.Instances }),
	String("teamId", path("teamId"), func(s *snapshot.Spec) *string { return &s.TeamID }),
	String("postgresql.version", path("postgresql", "version"), func(s *snapshot.Spec) *string { return &s.Version }),
	Parameters("postgresql.parameters", path("postgresql", "parameters")),
	String("volume.size", path("volume", "size"), func(s *snapshot.Spec) *string { return &s.VolumeSize }).OmitEmpty(),
	Bool("clusterReplication.enabled", path("clusterReplication", "enabled"), func(s *snapshot.Spec) *bool { return &s.Replication.Enabled }),
	String("clusterReplication.replSvcType", path("clusterReplication", "replSvcType"), func(s *snapshot.Spec) *string { return &s.Replication.ServiceType }),
	Bool("clusterReplication.isReplica", path("clusterReplication", "isReplica"), func(s *snapshot.Spec) *bool { return &s.Replication.IsReplica }),
	String("clusterReplication.bootstrapSecret", path("clusterReplication", "bootstrapSecret"), func(s *snapshot.Spec) *string { return &s.Replication.BootstrapSecret }),
}, Peer("clusterReplication.peer", path("clusterReplication", "peerHost"), path("clusterReplication", "peerPort"))...)

// Patroni is what pgtopo owns of a Patroni cluster: its role, as
// standby_cluster in the dynamic configuration (PATCH /config), which
// flavor/patroni writes.
var Patroni = Set(append(Peer("standby_cluster.host:port", nil, nil),
	String("standby_cluster.primary_slot_name", nil, func(s *snapshot.Spec) *string { return &s.Replication.PrimarySlot })))
