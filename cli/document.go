package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	sigsyaml "sigs.k8s.io/yaml"
)

// Output formats of the versioned documents commands print: -o json, and
// -o yaml for the same document as YAML (what kubectl users read).
const (
	formatText = "text"
	formatJSON = "json"
	formatYAML = "yaml"
)

// structured reports whether an -o value asks for a document.
func structured(format string) bool { return format == formatJSON || format == formatYAML }

// checkFormat refuses an -o value the command does not take, as a wrong
// command line; extra lists the command's own formats beside text, json
// and yaml (markdown for diff).
func checkFormat(format string, extra ...string) error {
	all := append([]string{formatText, formatJSON, formatYAML}, extra...)
	if slices.Contains(all, format) {
		return nil
	}
	return usagef("--output %q: use %s or %s", format, strings.Join(all[:len(all)-1], ", "), all[len(all)-1])
}

// writeDocument writes v as indented JSON, or as YAML for -o yaml.
func writeDocument(w io.Writer, format string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if format == formatYAML {
		y, err := sigsyaml.JSONToYAML(b)
		if err != nil {
			return err
		}
		_, err = w.Write(y)
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// writeYAMLOf writes what writeJSON writes, as YAML.
func writeYAMLOf(w io.Writer, writeJSON func(io.Writer) error) error {
	var b bytes.Buffer
	if err := writeJSON(&b); err != nil {
		return err
	}
	y, err := sigsyaml.JSONToYAML(b.Bytes())
	if err != nil {
		return err
	}
	_, err = w.Write(y)
	return err
}
