package schema

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/pgtopo/pgtopo/topology"
)

// minWALKeep is the operator's hot-standby runbook's advice for max_slot_wal_keep_size.
const minWALKeep = 10 << 30

// advise returns warnings: things that are valid but unwise.
func advise(doc *topology.Document, t *topology.Topology) []Finding {
	var out []Finding
	p := topology.Path{}.Child("spec").Child("postgres").Child("parameters").Child("max_slot_wal_keep_size")
	if raw, ok := t.Spec.Postgres.Parameters["max_slot_wal_keep_size"]; ok {
		n, err := parsePGSize(fmt.Sprint(raw), 1<<20)
		switch {
		case err != nil:
			f := newFinding(doc, p, RuleAdvice, fmt.Sprintf("cannot read %q as a size (%v); PostgreSQL will refuse it", fmt.Sprint(raw), err), ByPgtopo)
			f.Severity = SeverityWarning
			out = append(out, f)
		case n >= 0 && n < minWALKeep:
			f := newFinding(doc, p, RuleAdvice, fmt.Sprintf("%v is below 10GB: a standby that falls behind for a while loses its slot and needs a rebuild; 10GB or more is advised", raw), ByPgtopo)
			f.Severity = SeverityWarning
			out = append(out, f)
		}
	}
	if tls := t.Spec.Postgres.TLS; tls != nil && tls.Mode == topology.TLSDisable {
		f := newFinding(doc, topology.Path{}.Child("spec").Child("postgres").Child("tls").Child("mode"), RuleAdvice,
			"disable: pgtopo signs in to every cluster as its superuser in plaintext, across sites; anyone on the path reads the session and can take it over. Serve TLS and use verify-full (the default)", ByPgtopo)
		f.Severity = SeverityWarning
		out = append(out, f)
	}
	if c := t.Spec.AcceptDataLoss; c != nil {
		f := newFinding(doc, topology.Path{}.Child("spec").Child("acceptDataLoss"), RuleAdvice,
			fmt.Sprintf("consent to lose the writes of %s (system identifier %s, timeline %d) that did not reach %s: it authorises one failover from that timeline and is spent once carried out (pgtopo diff says whether it is); remove it in a follow-up change",
				c.Cluster, c.SystemIdentifier, c.Timeline, t.Spec.Primary), ByPgtopo)
		f.Severity = SeverityWarning
		out = append(out, f)
	}
	if f := t.Spec.Failover; f != nil && f.Mode == topology.FailoverAutomatic {
		w := newFinding(doc, topology.Path{}.Child("spec").Child("failover").Child("mode"), RuleAdvice,
			"automatic: the agents (reconcile --site, one per site) fence a primary cut off from the majority and fail over by themselves, committing the new primary to the repository; new in this version: proved on the lab's network partitions (sites in network namespaces) and by a nemesis, not yet by wide use (docs/automatic-failover.md)", ByPgtopo)
		w.Severity = SeverityWarning
		out = append(out, w)
	}
	return out
}

var rePGSize = regexp.MustCompile(`^\s*(-?[0-9]+)\s*([a-zA-Z]*)\s*$`)

// parsePGSize reads a PostgreSQL memory-unit setting (e.g. 10GB, 512MB, or a
// bare number in the setting's base unit) as bytes; -1 means unlimited.
func parsePGSize(s string, baseUnit int64) (int64, error) {
	m := rePGSize.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("expected a number with an optional unit (B, kB, MB, GB, TB)")
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return 0, err
	}
	if n < 0 {
		return -1, nil
	}
	units := map[string]int64{"": baseUnit, "B": 1, "kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
	u, ok := units[m[2]]
	if !ok {
		return 0, fmt.Errorf("unknown unit %q (PostgreSQL units are case-sensitive: B, kB, MB, GB, TB)", strings.TrimSpace(m[2]))
	}
	return n * u, nil
}
