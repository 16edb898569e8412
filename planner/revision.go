package planner

import (
	"fmt"
	"slices"
	"strings"

	"github.com/pgtopo/pgtopo/plan"
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
			h = plan.HistoryUnknown
		}
		if h == plan.HistoryForward {
			continue
		}
		var what string
		switch h {
		case plan.HistoryRollback:
			what = fmt.Sprintf("revision %s is older than %s (an ancestor of it): applying it rolls back", plan.ShortRevision(p.opt.Revision), plan.ShortRevision(rec))
		case plan.HistoryDiverged:
			what = fmt.Sprintf("revision %s is not a descendant of %s: the history diverged", plan.ShortRevision(p.opt.Revision), plan.ShortRevision(rec))
		default:
			what = fmt.Sprintf("revision %s cannot be ordered against %s, which this repository does not have (a shallow clone? fetch the full history)", plan.ShortRevision(p.opt.Revision), plan.ShortRevision(rec))
		}
		where := strings.Join(onCluster[rec], ", ")
		if p.opt.AllowRollback {
			p.note(nil, "%s last applied revision %s; %s (allowed by --allow-rollback)", where, plan.ShortRevision(rec), what)
			continue
		}
		p.refuse(nil, "%s last applied revision %s; %s. Pass --allow-rollback if that is intended", where, plan.ShortRevision(rec), what)
	}
}
