package diff

import (
	"fmt"
	"slices"
	"strings"
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

// checkRevisions refuses to move the recorded revision backwards, or onto
// another line of history, unless Options.AllowRollback says so.
func (p *planner) checkRevisions() {
	if p.opt.Revision == "" {
		return
	}
	onCluster := map[string][]string{}
	for _, c := range p.d.Clusters {
		obj := p.object(c.Name)
		if obj == nil {
			continue
		}
		rec := obj.Marks.Revision
		if rec == "" || rec == p.opt.Revision {
			continue
		}
		onCluster[rec] = append(onCluster[rec], c.Name)
	}
	recorded := make([]string, 0, len(onCluster))
	for rec := range onCluster {
		recorded = append(recorded, rec)
	}
	slices.Sort(recorded)
	for _, rec := range recorded {
		h, ok := p.opt.History[rec]
		if !ok {
			h = HistoryUnknown
		}
		if h == HistoryForward {
			continue
		}
		var what string
		switch h {
		case HistoryRollback:
			what = fmt.Sprintf("revision %s is older than %s (an ancestor of it): applying it rolls back", ShortRevision(p.opt.Revision), ShortRevision(rec))
		case HistoryDiverged:
			what = fmt.Sprintf("revision %s is not a descendant of %s: the history diverged", ShortRevision(p.opt.Revision), ShortRevision(rec))
		default:
			what = fmt.Sprintf("revision %s cannot be ordered against %s, which this repository does not have (a shallow clone? fetch the full history)", ShortRevision(p.opt.Revision), ShortRevision(rec))
		}
		where := strings.Join(onCluster[rec], ", ")
		if p.opt.AllowRollback {
			p.note(nil, "%s last applied revision %s; %s (allowed by --allow-rollback)", where, ShortRevision(rec), what)
			continue
		}
		p.refuse(nil, "%s last applied revision %s; %s. Pass --allow-rollback if that is intended", where, ShortRevision(rec), what)
	}
}

// ShortRevision abbreviates a commit hash for people (a little longer than
// git's default, to stay unambiguous); JSON keeps it whole. It is the one
// rule: gitsource abbreviates with it too.
func ShortRevision(rev string) string {
	if len(rev) > 12 {
		return rev[:12]
	}
	return rev
}
