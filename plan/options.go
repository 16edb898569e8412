package plan

// Options carry what the plan records but does not decide on.
type Options struct {
	// Revision is the git commit the topology was read from, if any.
	Revision string `json:"revision,omitempty"`
	// History relates each revision recorded on a CR to Revision; a
	// recorded revision missing here counts as HistoryUnknown.
	History map[string]History `json:"history,omitempty"`
	// AllowRollback lets a plan move the recorded revision backwards.
	AllowRollback bool `json:"allowRollback,omitempty"`
	// AcceptDataLoss is break-glass consent to a failover (pgtopo apply
	// --accept-data-loss CLUSTER): the lost primary whose writes may go.
	AcceptDataLoss string `json:"acceptDataLoss,omitempty"`
	// AllowRebuild names standbys that may be rebuilt whatever the file's
	// policy (pgtopo apply --allow-rebuild CLUSTER).
	AllowRebuild []string `json:"allowRebuild,omitempty"`
	// AllowPrimaryRestart consents to restarting the primary for settings
	// that need it, whatever the file's policy (--allow-primary-restart).
	AllowPrimaryRestart bool `json:"allowPrimaryRestart,omitempty"`
}

// Roles as the plan shows them.
const (
	RolePrimary = "primary"
	RoleStandby = "standby"
	RoleAbsent  = "absent"
	RoleUnknown = "unknown"
	// RoleUnreachable: the cluster's site did not answer.
	RoleUnreachable = "unreachable"
)

// Names of the marks as plans show them.
const (
	MarkDigest   = "mark pgtopo.dev/digest"
	MarkRevision = "mark pgtopo.dev/revision"
)

// History is how a revision recorded on a CR relates to Options.Revision,
// as git history says. The caller reads the history; the plan only uses it.
type History string

// Histories.
const (
	// HistoryForward: the recorded revision is an ancestor of the applied one.
	HistoryForward History = "forward"
	// HistoryRollback: the applied revision is an ancestor of the recorded one.
	HistoryRollback History = "rollback"
	// HistoryDiverged: neither is an ancestor of the other.
	HistoryDiverged History = "diverged"
	// HistoryUnknown: the recorded revision is not in the repository.
	HistoryUnknown History = "unknown"
)

// ShortRevision abbreviates a commit hash for people (a little longer than
// git's default, to stay unambiguous); JSON keeps it whole. It is the one
// rule: gitsource abbreviates with it too.
func ShortRevision(rev string) string {
	if len(rev) > 12 {
		return rev[:12]
	}
	return rev
}

// Intent is one thing a change to the topology file asks for, said in
// words: what merging a pull request will do, independent of live state.
type Intent struct {
	Kind    IntentKind `json:"kind"`
	Subject *Subject   `json:"subject,omitempty"`
	Text    string     `json:"text"`
}

// IntentKind classifies an intent.
type IntentKind string

// Intent kinds.
const (
	IntentNewTopology IntentKind = "new-topology"
	IntentSwitchover  IntentKind = "switchover"
	IntentNewCluster  IntentKind = "new-cluster"
	IntentRemoved     IntentKind = "removed-cluster"
	IntentChange      IntentKind = "change"
	IntentSite        IntentKind = "site"
	IntentSetting     IntentKind = "setting"
)
