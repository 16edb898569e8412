// Package schema validates topology files with CUE (topology.cue) and JSON
// Schema (topology.schema.json), and reports every problem at once with its
// position and path.
package schema

import (
	_ "embed"
	"errors"
	"fmt"

	"github.com/santhosh-tekuri/jsonschema/v5"

	"github.com/pgtopo/pgtopo/topology"
)

// CUE is the CUE schema, embedded.
//
//go:embed topology.cue
var CUE []byte

// JSONSchema is the JSON Schema (draft 2020-12), embedded; editors can use
// it through a `# yaml-language-server: $schema=...` comment.
//
//go:embed topology.schema.json
var JSONSchema []byte

// Validator checks topology documents. It is safe for concurrent use.
type Validator struct {
	json *jsonschema.Schema
}

// NewValidator compiles both embedded schemas (the CUE one to find its
// errors now; each check compiles it afresh, see Check).
func NewValidator() (*Validator, error) {
	if _, err := newCUEChecker(CUE); err != nil {
		return nil, err
	}
	j, err := compileJSONSchema(JSONSchema)
	if err != nil {
		return nil, err
	}
	return &Validator{json: j}, nil
}

// Report is what validating one document found, per validator, before
// merging; tests use it to prove the validators agree.
type Report struct {
	CUEStructural []Finding
	Relational    []Finding
	JSONSchema    []Finding
}

// Check runs both validators on a parsed document.
func (v *Validator) Check(doc *topology.Document) (Report, error) {
	var r Report
	var err error
	if r.JSONSchema, err = jsonSchemaFindings(v.json, doc); err != nil {
		return r, fmt.Errorf("%s: json schema: %w", doc.File, err)
	}
	// A cue.Context keeps everything it ever evaluated: one per check, so
	// a long-running reconcile does not grow with every load.
	c, err := newCUEChecker(CUE)
	if err != nil {
		return r, err
	}
	if r.CUEStructural, err = c.structural(doc); err != nil {
		return r, fmt.Errorf("%s: cue: %w", doc.File, err)
	}
	r.Relational = relational(doc)
	return r, nil
}

// Load parses, validates and decodes one topology file. It returns the
// topology (nil when there are errors) and every finding, warnings included.
// The error is for failures of pgtopo itself, not of the file.
func (v *Validator) Load(file string, data []byte) (*topology.Topology, Findings, error) {
	doc, err := topology.ParseDocument(file, data)
	if err != nil {
		var se *topology.SyntaxError
		if errors.As(err, &se) {
			return nil, Findings{syntaxFinding(se)}, nil
		}
		return nil, nil, err
	}
	r, err := v.Check(doc)
	if err != nil {
		// Whatever a validator could not take is this file's problem, not
		// the run's: say where, and go on with the other files.
		return nil, Findings{{File: file, Line: 1, Column: 1, Severity: SeverityError, Rule: RuleSyntax,
			Message: fmt.Sprintf("cannot be checked: %v; remove unusual characters (a byte order mark, control characters) from its values", err), Validators: []string{ByPgtopo}}}, nil
	}
	fs := merge(r.JSONSchema, r.CUEStructural, r.Relational)
	if fs.HasErrors() {
		return nil, fs, nil
	}
	t, err := doc.Decode()
	if err != nil {
		return nil, append(fs, Finding{File: file, Line: 1, Column: 1, Severity: SeverityError, Rule: RuleType,
			Message: err.Error(), Validators: []string{ByPgtopo}}), nil
	}
	if b := bounds(doc, t); len(b) > 0 {
		return nil, merge(fs, b), nil
	}
	fs = merge(fs, advise(doc, t))
	return t, fs, nil
}

func syntaxFinding(se *topology.SyntaxError) Finding {
	return Finding{File: se.File, Line: se.Pos.Line, Column: se.Pos.Column, Path: se.Path.String(),
		Severity: SeverityError, Rule: RuleSyntax, Message: se.Msg, Validators: []string{ByPgtopo}, path: se.Path}
}

func newFinding(doc *topology.Document, p topology.Path, rule Rule, msg, by string) Finding {
	pos := doc.Position(p)
	if rule == RuleUnknownField {
		pos = doc.KeyPosition(p)
	}
	return Finding{File: doc.File, Line: pos.Line, Column: pos.Column, Path: p.String(),
		Severity: SeverityError, Rule: rule, Message: msg, Validators: []string{by}, path: p}
}
