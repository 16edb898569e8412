package schema

import (
	"fmt"
	"slices"
	"sort"

	"github.com/pgtopo/pgtopo/printable"
	"github.com/pgtopo/pgtopo/topology"
)

// Severity of a finding: errors fail validation, warnings do not.
type Severity string

// Severities.
const (
	SeverityError   Severity = "error"
	SeverityWarning Severity = "warning"
)

// Rule is the kind of problem a finding reports. Structural rules are
// checked by both validators; RuleRelation only by CUE (JSON Schema cannot
// relate one value to another); RuleSyntax before either runs.
type Rule string

// Rules.
const (
	RuleSyntax       Rule = "syntax"
	RuleUnknownField Rule = "unknown-field"
	RuleRequired     Rule = "required"
	RuleType         Rule = "type"
	RuleFormat       Rule = "format"
	RuleEnum         Rule = "enum"
	RuleRange        Rule = "range"
	RuleRelation     Rule = "relation"
	RuleAdvice       Rule = "advice"
)

// Validator names.
const (
	ByCUE        = "cue"
	ByJSONSchema = "jsonschema"
	ByPgtopo     = "pgtopo"
)

// Finding is one problem in a topology file.
type Finding struct {
	File     string   `json:"file"`
	Line     int      `json:"line"`
	Column   int      `json:"column"`
	Path     string   `json:"path"`
	Severity Severity `json:"severity"`
	Rule     Rule     `json:"rule"`
	Message  string   `json:"message"`
	// Validators that reported it; both, when they agree.
	Validators []string `json:"validators"`

	path topology.Path
}

// String renders file:line:col: path: message.
func (f Finding) String() string {
	loc := fmt.Sprintf("%s:%d:%d", f.File, f.Line, f.Column)
	path := f.Path
	if path == "" {
		path = "(document)"
	}
	// Values quoted from the file can hold anything; printed, they must
	// not start lines of their own (a CI log runs some as commands).
	loc, path, msg := printable.String(loc), printable.String(path), printable.String(f.Message)
	if f.Severity == SeverityWarning {
		return fmt.Sprintf("%s: %s: warning: %s", loc, path, msg)
	}
	return fmt.Sprintf("%s: %s: %s", loc, path, msg)
}

// Findings of one or more files.
type Findings []Finding

// HasErrors reports whether any finding is an error.
func (fs Findings) HasErrors() bool {
	for _, f := range fs {
		if f.Severity == SeverityError {
			return true
		}
	}
	return false
}

// merge de-duplicates findings that name the same path and rule, keeping the
// first message and recording every validator that found it, and sorts them
// by position.
func merge(lists ...[]Finding) Findings {
	var out Findings
	index := map[string]int{}
	for _, l := range lists {
		for _, f := range l {
			key := f.Path + "\x00" + string(f.Rule)
			if i, ok := index[key]; ok {
				for _, v := range f.Validators {
					if !slices.Contains(out[i].Validators, v) {
						out[i].Validators = append(out[i].Validators, v)
					}
				}
				continue
			}
			index[key] = len(out)
			out = append(out, f)
		}
	}
	for i := range out {
		sort.Strings(out[i].Validators)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		if a.Column != b.Column {
			return a.Column < b.Column
		}
		return a.Path < b.Path
	})
	return out
}
