package schema

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/pgtopo/pgtopo/topology"
)

// Bounds of values the schemas can only check by shape.
var (
	minVolume = resource.MustParse("1Mi")
	maxVolume = resource.MustParse("1Pi")
	minLag    = resource.MustParse("1Ki")
	maxLag    = resource.MustParse("1Ti")
)

// SupportedMajors are the PostgreSQL major versions the operator runs
// (Zalando postgres-operator v1.15: 13 to 17): the one table of them.
var SupportedMajors = []string{"13", "14", "15", "16", "17"}

// The operator's CRD pattern for a volume size: upper-case suffixes only,
// so "500k", which a Kubernetes quantity allows, is refused there.
var reOperatorSize = regexp.MustCompile(`^(\d+(e\d+)?|\d+(\.\d+)?(e\d+)?[EPTGMK]i?)$`)

// A PostgreSQL setting name: what postgresql.conf accepts (letters, digits,
// underscores; a dot for an extension's settings).
var reSetting = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

// bounds checks what both schemas leave to pgtopo: setting names and values
// that postgresql.conf would misread, and quantities outside what any
// cluster could use. Each is an error with the value's position.
func bounds(doc *topology.Document, t *topology.Topology) []Finding {
	var out []Finding
	params := topology.Path{}.Child("spec").Child("postgres").Child("parameters")
	for _, k := range slices.Sorted(maps.Keys(t.Spec.Postgres.Parameters)) {
		p := params.Child(k)
		if !reSetting.MatchString(k) {
			f := newFinding(doc, p, RuleType, fmt.Sprintf("%s is not a PostgreSQL setting name: use letters, digits and '_' (and one '.' for an extension's setting), e.g. max_slot_wal_keep_size", quoteValue(k)), ByPgtopo)
			pos := doc.KeyPosition(p)
			f.Line, f.Column = pos.Line, pos.Column
			out = append(out, f)
			continue
		}
		if s, ok := t.Spec.Postgres.Parameters[k].(string); ok && strings.IndexFunc(s, lineBreaking) >= 0 {
			out = append(out, newFinding(doc, p, RuleType, fmt.Sprintf("%s holds a line break or control character: a setting is one line of postgresql.conf; write the value alone", quoteValue(s)), ByPgtopo))
		}
	}
	if q := t.Spec.Replication.MaxLagBytes; q != nil {
		out = append(out, inRange(doc, topology.Path{}.Child("spec").Child("replication").Child("maxLagBytes"), *q, minLag, maxLag)...)
	}
	if v := t.Spec.Postgres.Version; v != "" && !slices.Contains(SupportedMajors, v) {
		out = append(out, newFinding(doc, topology.Path{}.Child("spec").Child("postgres").Child("version"), RuleType,
			fmt.Sprintf("PostgreSQL %s is not a version the operator runs (%s)", quoteValue(v), strings.Join(SupportedMajors, ", ")), ByPgtopo))
	}
	for i, c := range t.Spec.Clusters {
		if c.Volume != nil {
			p := topology.Path{}.Child("spec").Child("clusters").Index(i).Child("volume").Child("size")
			if raw := volumeSize(doc, i); raw != "" && !reOperatorSize.MatchString(raw) {
				out = append(out, newFinding(doc, p, RuleType, fmt.Sprintf("%s is a size the operator's CRD refuses: write a number with an upper-case suffix, e.g. 500M, 50Gi", quoteValue(raw)), ByPgtopo))
				continue
			}
			out = append(out, inRange(doc, p, c.Volume.Size, minVolume, maxVolume)...)
		}
	}
	return out
}

func inRange(doc *topology.Document, p topology.Path, q, lo, hi resource.Quantity) []Finding {
	if q.Cmp(lo) >= 0 && q.Cmp(hi) <= 0 {
		return nil
	}
	return []Finding{newFinding(doc, p, RuleType, fmt.Sprintf("%s is outside %s to %s", quoteValue(rawValue(doc.Value, p)), lo.String(), hi.String()), ByPgtopo)}
}

// rawValue is the value at p as the file wrote it.
func rawValue(v any, p topology.Path) any {
	for _, e := range p {
		switch x := v.(type) {
		case map[string]any:
			v = x[e.Key]
		case []any:
			if e.Index < 0 || e.Index >= len(x) {
				return nil
			}
			v = x[e.Index]
		default:
			return nil
		}
	}
	return v
}

func lineBreaking(r rune) bool {
	return r < 0x20 || r == 0x7f || r == '\u2028' || r == '\u2029' || r == '\u0085'
}

// volumeSize is a cluster's volume size as written.
func volumeSize(doc *topology.Document, i int) string {
	root, _ := doc.Value.(map[string]any)
	spec, _ := root["spec"].(map[string]any)
	clusters, _ := spec["clusters"].([]any)
	if i >= len(clusters) {
		return ""
	}
	c, _ := clusters[i].(map[string]any)
	v, _ := c["volume"].(map[string]any)
	size, _ := v["size"].(string)
	return size
}
