package plan

import (
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"

	"github.com/pgtopo/pgtopo/flavor/owned"
	"github.com/pgtopo/pgtopo/printable"
	"github.com/pgtopo/pgtopo/snapshot"
)

// Basis is what a plan relied on: every site's reachability and, per
// cluster, its object's owned content and version and the facts the
// preconditions read. A saved plan keeps it so that apply can say what
// changed since.
type Basis struct {
	Sites    []SiteBasis    `json:"sites"`
	Clusters []ClusterBasis `json:"clusters"`
}

// SiteBasis is a site as the plan saw it.
type SiteBasis struct {
	Name      string `json:"name"`
	Reachable bool   `json:"reachable"`
}

// ClusterBasis is a cluster as the plan saw it.
type ClusterBasis struct {
	Name            string          `json:"name"`
	Exists          bool            `json:"exists"`
	ResourceVersion string          `json:"resourceVersion,omitempty"`
	Spec            *snapshot.Spec  `json:"spec,omitempty"`
	Marks           *snapshot.Marks `json:"marks,omitempty"`
	// Role is primary, standby or unreadable.
	Role     string `json:"role"`
	SystemID string `json:"systemIdentifier,omitempty"`
	Timeline int    `json:"timeline,omitempty"`
	Endpoint string `json:"endpoint,omitempty"`
	// Upstream is where its WAL receiver streams from ("" when it does not).
	Upstream string `json:"upstream,omitempty"`
	// Secret versions: "" when absent.
	Credentials     string `json:"credentials,omitempty"`
	BootstrapSecret string `json:"bootstrapSecret,omitempty"`
}

// BasisOf extracts a snapshot's basis.
func BasisOf(snap *snapshot.Snapshot) Basis {
	var b Basis
	for _, s := range snap.Sites {
		b.Sites = append(b.Sites, SiteBasis{Name: s.Name, Reachable: s.Reachable})
	}
	for _, c := range snap.Clusters {
		cb := ClusterBasis{Name: c.Name, Exists: c.Exists, Role: "unreadable",
			Credentials: c.Credentials.ResourceVersion, BootstrapSecret: c.BootstrapSecret.ResourceVersion}
		if c.Exists && c.Object != nil {
			spec, marks := c.Object.Spec, c.Object.Marks
			cb.ResourceVersion, cb.Spec, cb.Marks = c.Object.ResourceVersion, &spec, &marks
		}
		if c.Endpoint != nil {
			cb.Endpoint = c.Endpoint.String()
		}
		if c.PG != nil {
			cb.Role, cb.SystemID, cb.Timeline = RoleStandby, c.PG.SystemID, c.PG.Timeline
			if !c.PG.InRecovery {
				cb.Role = RolePrimary
			}
			if w := c.PG.WalReceiver; w != nil && w.Status == "streaming" {
				cb.Upstream = fmt.Sprintf("%s:%d", w.SenderHost, w.SenderPort)
			}
		}
		b.Clusters = append(b.Clusters, cb)
	}
	return b
}

// Since lists, in words, what differs in now from b, each naming its
// object first.
func (b Basis) Since(now Basis) []string {
	var out []string
	for _, s := range b.Sites {
		i := slices.IndexFunc(now.Sites, func(n SiteBasis) bool { return n.Name == s.Name })
		if i < 0 || now.Sites[i].Reachable != s.Reachable {
			out = append(out, fmt.Sprintf("site %s: reachable %v → %v", s.Name, s.Reachable, i >= 0 && now.Sites[i].Reachable))
		}
	}
	for _, was := range b.Clusters {
		i := slices.IndexFunc(now.Clusters, func(n ClusterBasis) bool { return n.Name == was.Name })
		if i < 0 {
			out = append(out, fmt.Sprintf("%s: no longer observed", was.Name))
			continue
		}
		out = append(out, was.since(now.Clusters[i])...)
	}
	return out
}

func (was ClusterBasis) since(is ClusterBasis) []string {
	var out []string
	add := func(format string, args ...any) {
		out = append(out, was.Name+": "+fmt.Sprintf(format, args...))
	}
	if was.Exists != is.Exists {
		add("exists %v → %v", was.Exists, is.Exists)
	} else if was.Exists {
		var fields []string
		for _, c := range owned.For(*is.Spec).Changes(*was.Spec, *is.Spec) {
			fields = append(fields, fmt.Sprintf("%s %s → %s", c.Field, printable.OrNone(c.Before), printable.OrNone(c.After)))
		}
		if !reflect.DeepEqual(was.Marks, is.Marks) {
			fields = append(fields, "pgtopo's marks (digest, revision or switchover journal) changed")
		}
		if len(fields) > 0 {
			add("resourceVersion %s → %s: %s", was.ResourceVersion, is.ResourceVersion, strings.Join(fields, ", "))
		}
	}
	if was.Role != is.Role {
		add("role %s → %s", was.Role, is.Role)
	}
	if was.SystemID != is.SystemID && is.SystemID != "" && was.SystemID != "" {
		add("system identifier %s → %s", was.SystemID, is.SystemID)
	}
	if was.Timeline != is.Timeline && is.Timeline != 0 && was.Timeline != 0 {
		add("timeline %d → %d", was.Timeline, is.Timeline)
	}
	if was.Endpoint != is.Endpoint {
		add("endpoint %s → %s", printable.OrNone(was.Endpoint), printable.OrNone(is.Endpoint))
	}
	if was.Upstream != is.Upstream {
		add("streams from %s → %s", printable.OrNone(was.Upstream), printable.OrNone(is.Upstream))
	}
	if was.Credentials != is.Credentials {
		add("credentials Secret resourceVersion %s → %s", printable.OrNone(was.Credentials), printable.OrNone(is.Credentials))
	}
	if was.BootstrapSecret != is.BootstrapSecret {
		add("bootstrap Secret resourceVersion %s → %s", printable.OrNone(was.BootstrapSecret), printable.OrNone(is.BootstrapSecret))
	}
	return out
}

// Same reports whether two plans do the same: the same steps with the
// same payloads, changes and preconditions, and the same refusals. Reasons
// and notes are words about the moment and do not count.
func Same(a, b Plan) bool {
	strip := func(p Plan) ([]Step, []string) {
		steps := make([]Step, len(p.Steps))
		for i, s := range p.Steps {
			s.Reason = ""
			steps[i] = s
		}
		var refusals []string
		for _, r := range p.Refusals {
			refusals = append(refusals, r.Reason)
		}
		return steps, refusals
	}
	as, ar := strip(a)
	bs, br := strip(b)
	ja, _ := json.Marshal(as)
	jb, _ := json.Marshal(bs)
	return string(ja) == string(jb) && slices.Equal(ar, br) && a.Digest == b.Digest && a.Revision == b.Revision
}

// SavedPlanKind is the kind of a saved plan document.
const SavedPlanKind = "SavedPlan"

// SavedPlan is a plan written by `diff --out` for `apply PLAN`: the plan,
// what it relied on, and the topology it was computed from (so apply can
// observe the same sites without the file).
type SavedPlan struct {
	APIVersion string  `json:"apiVersion"`
	Kind       string  `json:"kind"`
	Plan       Plan    `json:"plan"`
	Basis      Basis   `json:"basis"`
	Options    Options `json:"options"`
	// Source is the topology file the plan was computed from.
	Source Source `json:"source"`
}

// Source is a topology file as read: where from and its bytes.
type Source struct {
	Name    string `json:"name"`
	Content string `json:"content"`
}

// Save writes a saved plan.
func Save(w io.Writer, plan Plan, basis Basis, opt Options, src Source) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(SavedPlan{APIVersion: PlanAPIVersion, Kind: SavedPlanKind, Plan: plan, Basis: basis, Options: opt, Source: src})
}

// LoadSaved reads a saved plan, naming the file in every error.
func LoadSaved(name string, r io.Reader) (*SavedPlan, error) {
	var sp SavedPlan
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sp); err != nil {
		return nil, fmt.Errorf("%s: not a saved plan: %w", name, err)
	}
	if sp.Kind != SavedPlanKind || sp.APIVersion != PlanAPIVersion {
		return nil, fmt.Errorf("%s: kind %q apiVersion %q: want %s %s (write one with pgtopo diff --out)", name, sp.Kind, sp.APIVersion, SavedPlanKind, PlanAPIVersion)
	}
	if sp.Plan.Refused() {
		return nil, fmt.Errorf("%s: the saved plan is refused: %s", name, sp.Plan.Refusals[0].Reason)
	}
	return &sp, nil
}

// Staleness says why a fresh plan replaces an earlier one: what changed in
// the live world since (by object), or, when nothing the basis records did,
// the first step that differs.
func Staleness(was Plan, wasBasis Basis, now Plan, nowBasis Basis) []string {
	if reasons := wasBasis.Since(nowBasis); len(reasons) > 0 {
		return reasons
	}
	for i := range max(len(was.Steps), len(now.Steps)) {
		if i >= len(was.Steps) {
			return []string{fmt.Sprintf("a step was added: %s %s", now.Steps[i].Action, now.Steps[i].Subject)}
		}
		if i >= len(now.Steps) {
			return []string{fmt.Sprintf("step %d %s %s is no longer needed", i+1, was.Steps[i].Action, was.Steps[i].Subject)}
		}
		if !Same(Plan{Steps: was.Steps[i : i+1]}, Plan{Steps: now.Steps[i : i+1]}) {
			return []string{fmt.Sprintf("step %d %s %s changed", i+1, was.Steps[i].Action, was.Steps[i].Subject)}
		}
	}
	if len(now.Refusals) > 0 {
		return []string{"the plan is now refused: " + now.Refusals[0].Reason}
	}
	return []string{"the plan changed"}
}
