package plan

import (
	"github.com/pgtopo/pgtopo/snapshot"
)

// Failover is a failover's payload: the lost primary, the target, the
// consent it runs on and the facts that consent was bound to.
type Failover struct {
	From Subject `json:"from"`
	To   Subject `json:"to"`
	// FromEndpoint is where the target streamed from (its peer): apply
	// confirms nothing answers there before it promotes.
	FromEndpoint *snapshot.Endpoint `json:"fromEndpoint,omitempty"`
	ToEndpoint   *snapshot.Endpoint `json:"toEndpoint,omitempty"`
	Promoted     snapshot.Spec      `json:"promoted"`
	// PromoteFirst is as for a Switchover.
	PromoteFirst *snapshot.Spec `json:"promoteFirst,omitempty"`
	// SystemID and FromTimeline are the lost primary's as the target saw
	// them; apply refuses if the target's differ when it acts.
	SystemID     string `json:"systemIdentifier"`
	FromTimeline int    `json:"fromTimeline"`
	Epoch        int    `json:"epoch"`
	// Consent says where consent came from: "file" or "flag".
	Consent string `json:"consent"`
	// Resume is "promoting" for a failover whose consent is recorded and
	// whose target was being promoted when the run that began it ended.
	Resume string `json:"resume,omitempty"`
}

// Rejoin is the payload that fences a lost primary on its return and makes
// it a standby of the primary that took over.
type Rejoin struct {
	Record    snapshot.FailoverRecord `json:"record"`
	Primary   Subject                 `json:"primary"`
	PrimaryEP *snapshot.Endpoint      `json:"primaryEndpoint,omitempty"`
	Demoted   snapshot.Spec           `json:"demoted"`
	Policy    string                  `json:"policy"`
	Secret    *CredentialsCopy        `json:"secret,omitempty"`
	// Rebuild: rewinding cannot be trusted (see rejoinStep), rebuild.
	Rebuild bool `json:"rebuild,omitempty"`
	// Fenced is the returned cluster's live spec with the fence on return
	// as a parameter: written while its database does not answer, so that
	// its operator starts it refusing writes rather than promoted and
	// writable before the demotion lands.
	Fenced snapshot.Spec `json:"fenced"`
}

// FenceParameter is the setting a fence turns on (snapshot's, named here
// for the planner's readers).
const FenceParameter = snapshot.FenceParameter

// ConsentFlag is the source of a break-glass consent.
const (
	ConsentFile = "file"
	ConsentFlag = "flag"
)

// Restart is the restart a step waits for: the settings that take effect
// only then, and whether it is the primary's, a write outage.
type Restart struct {
	Parameters []string `json:"parameters"`
	Primary    bool     `json:"primary,omitempty"`
	// Follows is the primary a restarted standby streams from again.
	Follows string `json:"follows,omitempty"`
	// Values are the settings' values the restart brings into effect;
	// none for a restart for whatever is pending.
	Values map[string]string `json:"values,omitempty"`
}
