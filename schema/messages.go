package schema

import (
	"fmt"
	"strings"

	"github.com/pgtopo/pgtopo/topology"
)

// Both validators' raw messages are turned into these, so that a problem
// reads the same whichever validator found it.

// formats describes each pattern of the schemas in words.
var formats = map[string]string{
	`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`:                                    "is not a DNS label: use lowercase letters, digits and '-', start and end with a letter or digit, at most 63 characters",
	`^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[KMGTPE]i|[kMGTPE])?$`: "is not a Kubernetes quantity (e.g. 50Gi, 16Mi, 500M)",
	`^[1-9][0-9]*$`:                       `is not a PostgreSQL major version such as "15"`,
	`^[A-Za-z0-9][-A-Za-z0-9]*$`:          "is not a team id: use letters, digits and '-'",
	`^[^\s]+$`:                            "must not be empty or contain spaces",
	`^([1-9][0-9]{0,3}s|[1-9][0-9]?m)$`:   `is not a duration: seconds or minutes from 1s to 99m, e.g. "30s" or "2m"`,
	`^[a-z]([-a-z0-9]{0,50}[a-z0-9])?$`:   "is not a cluster name: start with a lowercase letter, then lowercase letters, digits and '-', end with a letter or digit, at most 52 characters (the operator adds suffixes such as -repl and pod ordinals to it)",
	`^[a-z0-9_]{1,63}$`:                   "is not a replication slot name: lowercase letters, digits and '_', at most 63 characters",
	`^[A-Za-z0-9]([-_.A-Za-z0-9]{0,62})$`: "is not a Patroni scope: letters, digits, '-', '_' and '.', starting with a letter or digit, at most 63 characters",
	`^[^\x00]*\S[^\x00]*$`:                "is not a query: it is blank or holds a NUL byte",
	`^[^\s\p{Cc}\p{Cf}\p{Z}]+$`:           "is not a usable context name: no spaces, control characters or invisible characters (zero-width or no-break spaces)",
	`^(([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)(\.([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?))*|[0-9A-Fa-f]*:[0-9A-Fa-f:.]*)$`: "is not a host name or IP address: write the host alone (pg-west.example.net), without scheme, port or path; the port goes in endpoint.port",
}

func formatMessage(pattern string, got any) string {
	desc, ok := formatsByShape[patternShape(pattern)]
	if !ok {
		desc = fmt.Sprintf("does not match %s", pattern)
	}
	return fmt.Sprintf("%s %s", quoteValue(got), desc)
}

// formatsByShape indexes formats by patternShape, because each validator
// prints its patterns with its own escaping.
var formatsByShape = func() map[string]string {
	m := make(map[string]string, len(formats))
	for re, desc := range formats {
		m[patternShape(re)] = desc
	}
	return m
}()

func patternShape(re string) string { return strings.ReplaceAll(re, `\`, "") }

func unknownFieldMessage(field string) string {
	return fmt.Sprintf("unknown field %q; remove it or check its spelling and indentation", field)
}

func requiredMessage(field string) string {
	return fmt.Sprintf("required field %q is missing", field)
}

func typeMessage(p topology.Path, want []string, got any) string {
	msg := fmt.Sprintf("must be %s, not %s", joinOr(want), typeName(got))
	if strings.HasSuffix(p.String(), "postgres.version") {
		if _, isNum := got.(int64); isNum {
			msg += fmt.Sprintf(`; quote it: version: "%v"`, got)
		}
	}
	return msg
}

func enumMessage(allowed []string, got any) string {
	if len(allowed) == 1 {
		return fmt.Sprintf("must be %s, not %s", allowed[0], quoteValue(got))
	}
	return fmt.Sprintf("must be one of %s; got %s", strings.Join(allowed, ", "), quoteValue(got))
}

func minimumMessage(bound string, got any) string {
	return fmt.Sprintf("must be at least %s, got %s", bound, quoteValue(got))
}

func maximumMessage(bound string, got any) string {
	return fmt.Sprintf("must be at most %s, got %s", bound, quoteValue(got))
}

const emptyListMessage = "must list at least one item"

// typeName names a document value's type the way messages use it.
func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "empty (null)"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case int64:
		return "an integer"
	case float64:
		return "a number"
	case []any:
		return "a list"
	case map[string]any:
		return "a mapping"
	}
	return fmt.Sprintf("%T", v)
}

// typeWord turns a validator's type name into the article-carrying word
// used in messages.
func typeWord(t string) string {
	switch t {
	case "string":
		return "a string"
	case "int", "integer":
		return "an integer"
	case "number", "float":
		return "a number"
	case "bool", "boolean":
		return "a boolean"
	case "list", "array":
		return "a list"
	case "struct", "object":
		return "a mapping"
	case "null":
		return "empty (null)"
	}
	return t
}

func joinOr(words []string) string {
	switch len(words) {
	case 0:
		return "something else"
	case 1:
		return words[0]
	}
	return strings.Join(words[:len(words)-1], ", ") + " or " + words[len(words)-1]
}

func quoteValue(v any) string {
	switch x := v.(type) {
	case string:
		return fmt.Sprintf("%q", x)
	case nil:
		return "nothing"
	case []any:
		return "a list"
	case map[string]any:
		return "a mapping"
	}
	return fmt.Sprint(v)
}

// valueAt returns the document value at p, or nil.
func valueAt(doc any, p topology.Path) any {
	cur := doc
	for _, e := range p {
		switch v := cur.(type) {
		case map[string]any:
			if !e.IsKey {
				return nil
			}
			cur = v[e.Key]
		case []any:
			if e.IsKey || e.Index < 0 || e.Index >= len(v) {
				return nil
			}
			cur = v[e.Index]
		default:
			return nil
		}
	}
	return cur
}
