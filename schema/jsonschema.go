package schema

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v5"

	"github.com/pgtopo/pgtopo/topology"
)

const schemaURL = "https://pgtopo.dev/schema/v1alpha1/topology.schema.json"

func compileJSONSchema(src []byte) (*jsonschema.Schema, error) {
	c := jsonschema.NewCompiler()
	c.Draft = jsonschema.Draft2020
	if err := c.AddResource(schemaURL, bytes.NewReader(src)); err != nil {
		return nil, fmt.Errorf("topology.schema.json: %w", err)
	}
	s, err := c.Compile(schemaURL)
	if err != nil {
		return nil, fmt.Errorf("topology.schema.json: %w", err)
	}
	return s, nil
}

// jsonSchemaFindings validates the document and flattens the error tree to
// its leaves, one finding per path and rule.
func jsonSchemaFindings(s *jsonschema.Schema, doc *topology.Document) ([]Finding, error) {
	// The validator wants values as encoding/json produces them.
	js, err := json.Marshal(doc.Value)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	err = s.Validate(v)
	if err == nil {
		return nil, nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return nil, err
	}
	var out []Finding
	for _, leaf := range leaves(ve) {
		out = append(out, classifyJSONSchema(doc, leaf)...)
	}
	return out, nil
}

func leaves(e *jsonschema.ValidationError) []*jsonschema.ValidationError {
	if len(e.Causes) == 0 {
		return []*jsonschema.ValidationError{e}
	}
	var out []*jsonschema.ValidationError
	for _, c := range e.Causes {
		out = append(out, leaves(c)...)
	}
	return out
}

var (
	reQuoted   = regexp.MustCompile(`'([^']*)'`)
	reExpected = regexp.MustCompile(`^expected (.+), but got (\w+)$`)
	reOneOf    = regexp.MustCompile(`^value must be (?:one of )?(.+)$`)
	reBoundNum = regexp.MustCompile(`must be ([<>]=?) (\S+) but found`)
)

func classifyJSONSchema(doc *topology.Document, e *jsonschema.ValidationError) []Finding {
	p := doc.Resolve(pointerSegments(e.InstanceLocation))
	got := valueAt(doc.Value, p)
	keyword := e.KeywordLocation[strings.LastIndex(e.KeywordLocation, "/")+1:]
	switch keyword {
	case "additionalProperties":
		var out []Finding
		for _, m := range reQuoted.FindAllStringSubmatch(e.Message, -1) {
			f := p.Child(m[1])
			out = append(out, newFinding(doc, f, RuleUnknownField, unknownFieldMessage(m[1]), ByJSONSchema))
		}
		return out
	case "required":
		var out []Finding
		for _, m := range reQuoted.FindAllStringSubmatch(e.Message, -1) {
			f := p.Child(m[1])
			out = append(out, newFinding(doc, f, RuleRequired, requiredMessage(m[1]), ByJSONSchema))
		}
		return out
	case "type":
		var want []string
		if m := reExpected.FindStringSubmatch(e.Message); m != nil {
			for _, t := range strings.Split(m[1], " or ") {
				want = append(want, typeWord(t))
			}
		}
		return []Finding{newFinding(doc, p, RuleType, typeMessage(p, slices.Sorted(slices.Values(want)), got), ByJSONSchema)}
	case "pattern":
		return []Finding{newFinding(doc, p, RuleFormat, formatMessage(patternOf(e.Message), got), ByJSONSchema)}
	case "enum", "const":
		var allowed []string
		if m := reOneOf.FindStringSubmatch(e.Message); m != nil {
			allowed = strings.Split(m[1], ", ")
		}
		return []Finding{newFinding(doc, p, RuleEnum, enumMessage(allowed, got), ByJSONSchema)}
	case "minimum", "maximum":
		bound := ""
		if m := reBoundNum.FindStringSubmatch(e.Message); m != nil {
			bound = m[2]
		}
		if keyword == "minimum" {
			return []Finding{newFinding(doc, p, RuleRange, minimumMessage(bound, got), ByJSONSchema)}
		}
		return []Finding{newFinding(doc, p, RuleRange, maximumMessage(bound, got), ByJSONSchema)}
	case "minItems":
		return []Finding{newFinding(doc, p, RuleRange, emptyListMessage, ByJSONSchema)}
	}
	return []Finding{newFinding(doc, p, RuleType, e.Message, ByJSONSchema)}
}

// patternOf extracts the pattern from "does not match pattern '...'".
func patternOf(msg string) string {
	i := strings.Index(msg, "'")
	j := strings.LastIndex(msg, "'")
	if i < 0 || j <= i {
		return msg
	}
	return msg[i+1 : j]
}

func pointerSegments(ptr string) []string {
	if ptr == "" || ptr == "/" {
		return nil
	}
	parts := strings.Split(strings.TrimPrefix(ptr, "/"), "/")
	for i, s := range parts {
		parts[i] = strings.ReplaceAll(strings.ReplaceAll(s, "~1", "/"), "~0", "~")
	}
	return parts
}
