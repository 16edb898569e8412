package schema

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/cuecontext"
	cueerrors "cuelang.org/go/cue/errors"

	"github.com/pgtopo/pgtopo/topology"
)

// cueChecker evaluates topology.cue. A cue.Context is not safe for
// concurrent use, and keeps what it evaluated: one checker per check.
type cueChecker struct {
	ctx      *cue.Context
	topology cue.Value
}

func newCUEChecker(src []byte) (*cueChecker, error) {
	ctx := cuecontext.New()
	v := ctx.CompileBytes(src, cue.Filename("topology.cue"))
	if err := v.Err(); err != nil {
		return nil, fmt.Errorf("topology.cue: %w", err)
	}
	return &cueChecker{ctx: ctx, topology: v.LookupPath(cue.ParsePath("#Topology"))}, nil
}

// maxRounds bounds the fix-point loop below; a document has few nested
// levels, and each round removes at least one bad value.
const maxRounds = 16

// structural reports the violations of #Topology. CUE stops looking inside a
// struct once one error is found there, so this reports, removes the bad
// values from a copy of the document, and evaluates again until nothing new
// turns up. Anything under a path already reported is not reported again.
func (c *cueChecker) structural(doc *topology.Document) ([]Finding, error) {
	data := deepCopy(doc.Value)
	var found []Finding
	var reported []topology.Path
	for round := 0; round < maxRounds; round++ {
		errs, err := c.unify(data)
		if err != nil {
			return nil, err
		}
		byPath := map[string][]string{}
		var order []topology.Path
		for _, e := range errs {
			sel := e.Path()
			if len(sel) > 0 && sel[0] == "#Topology" {
				sel = sel[1:]
			}
			p := doc.Resolve(sel)
			if under(p, reported) {
				continue
			}
			format, args := e.Msg()
			key := p.String()
			if _, ok := byPath[key]; !ok {
				order = append(order, p)
			}
			byPath[key] = append(byPath[key], fmt.Sprintf(format, args...))
		}
		if len(order) == 0 {
			break
		}
		for _, p := range order {
			f, ok := classifyCUE(doc, p, byPath[p.String()])
			if !ok {
				continue
			}
			found = append(found, f)
			reported = append(reported, p)
			remove(data, p)
		}
	}
	return found, nil
}

func (c *cueChecker) unify(data any) ([]cueerrors.Error, error) {
	js, err := cueJSON(data)
	if err != nil {
		return nil, err
	}
	v := c.ctx.CompileBytes(js)
	if err := v.Err(); err != nil {
		return nil, err
	}
	err = c.topology.Unify(v).Validate(cue.Concrete(true), cue.All(), cue.Final())
	return cueerrors.Errors(err), nil
}

// cueJSON is data as JSON that CUE's parser takes: CUE rejects a byte
// order mark anywhere in its input, even inside a string, so it is written
// as the escape \ufeff (JSON strings hold nothing else CUE refuses).
func cueJSON(data any) ([]byte, error) {
	js, err := json.Marshal(data)
	if err != nil {
		return nil, err
	}
	return bytes.ReplaceAll(js, []byte("\ufeff"), []byte(`\ufeff`)), nil
}

var (
	reNotAllowed  = regexp.MustCompile(`^field not allowed`)
	reRequired    = regexp.MustCompile(`required but not present|^incomplete value`)
	reMismatch    = regexp.MustCompile(`mismatched types (\w+) and (\w+)`)
	reConflict    = regexp.MustCompile(`^conflicting values (.+) and (.+)$`)
	rePattern     = regexp.MustCompile(`out of bound =~"(.*)"\)$`)
	reBound       = regexp.MustCompile(`out of bound ([<>]=?)(\S+)\)$`)
	reListLengths = regexp.MustCompile(`incompatible list lengths`)
	reDisjunction = regexp.MustCompile(`errors in empty disjunction`)
)

// classifyCUE turns CUE's messages for one path into a finding.
func classifyCUE(doc *topology.Document, p topology.Path, msgs []string) (Finding, bool) {
	got := valueAt(doc.Value, p)
	var wantTypes, allowed []string
	for _, m := range msgs {
		switch {
		case reDisjunction.MatchString(m):
			continue
		case reNotAllowed.MatchString(m):
			return newFinding(doc, p, RuleUnknownField, unknownFieldMessage(last(p)), ByCUE), true
		case reRequired.MatchString(m):
			return newFinding(doc, p, RuleRequired, requiredMessage(last(p)), ByCUE), true
		case reMismatch.MatchString(m):
			sm := reMismatch.FindStringSubmatch(m)
			// CUE names the two types in either order; the wanted one is
			// whichever is not the document's own.
			for _, t := range sm[1:] {
				if w := typeWord(t); w != typeName(got) && !slices.Contains(wantTypes, w) && !(w == "a number" && typeName(got) == "an integer") {
					wantTypes = append(wantTypes, w)
				}
			}
		case rePattern.MatchString(m):
			return newFinding(doc, p, RuleFormat, formatMessage(rePattern.FindStringSubmatch(m)[1], got), ByCUE), true
		case reBound.MatchString(m):
			sm := reBound.FindStringSubmatch(m)
			if strings.HasPrefix(sm[1], ">") {
				return newFinding(doc, p, RuleRange, minimumMessage(sm[2], got), ByCUE), true
			}
			return newFinding(doc, p, RuleRange, maximumMessage(sm[2], got), ByCUE), true
		case reListLengths.MatchString(m):
			return newFinding(doc, p, RuleRange, emptyListMessage, ByCUE), true
		case reConflict.MatchString(m):
			sm := reConflict.FindStringSubmatch(m)
			for _, v := range sm[1:] {
				if v != quoteValue(got) && !slices.Contains(allowed, v) {
					allowed = append(allowed, v)
				}
			}
		default:
			return newFinding(doc, p, RuleType, m, ByCUE), true
		}
	}
	if len(wantTypes) > 0 {
		sort.Strings(wantTypes)
		return newFinding(doc, p, RuleType, typeMessage(p, wantTypes, got), ByCUE), true
	}
	if len(allowed) > 0 {
		return newFinding(doc, p, RuleEnum, enumMessage(allowed, got), ByCUE), true
	}
	return Finding{}, false
}

func last(p topology.Path) string {
	if len(p) == 0 || !p[len(p)-1].IsKey {
		return p.String()
	}
	return p[len(p)-1].Key
}

func under(p topology.Path, reported []topology.Path) bool {
	for _, r := range reported {
		if p.HasPrefix(r) {
			return true
		}
	}
	return false
}

// remove deletes the mapping entry at p so the next round can see past it.
// List elements stay; what is under them is skipped as already reported.
func remove(data any, p topology.Path) {
	if len(p) == 0 || !p[len(p)-1].IsKey {
		return
	}
	if m, ok := valueAt(data, p[:len(p)-1]).(map[string]any); ok {
		delete(m, p[len(p)-1].Key)
	}
}

func deepCopy(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = deepCopy(e)
		}
		return m
	case []any:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = deepCopy(e)
		}
		return l
	}
	return v
}

var rePathElem = regexp.MustCompile(`\[(\d+)\]|\["((?:[^"\\]|\\.)*)"\]|([^.\[]+)`)

// parsePathString reads a path written by topology.cue, such as
// spec.clusters[1].site.
func parsePathString(doc *topology.Document, s string) topology.Path {
	var segs []string
	for _, m := range rePathElem.FindAllStringSubmatch(s, -1) {
		switch {
		case m[1] != "":
			segs = append(segs, m[1])
		case m[2] != "":
			segs = append(segs, m[2])
		default:
			segs = append(segs, m[3])
		}
	}
	return doc.Resolve(segs)
}
