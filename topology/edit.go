package topology

import (
	"fmt"
	"strings"
)

// SetPrimary rewrites a topology file's text so that it names primary and
// carries consent as spec.acceptDataLoss, on one line right after the
// primary, replacing any consent the file had. Everything else (comments,
// order, layout) is kept as written: the result is a change a person
// reviews line by line.
func SetPrimary(file string, data []byte, primary string, consent Consent) ([]byte, error) {
	doc, err := ParseDocument(file, data)
	if err != nil {
		return nil, err
	}
	spec := Path{}.Child("spec")
	at := spec.Child("primary")
	if _, ok := doc.pos[at.String()]; !ok {
		return nil, fmt.Errorf("%s: no spec.primary to rewrite", file)
	}
	lines := strings.SplitAfter(string(data), "\n")
	key, val := doc.KeyPosition(at), doc.Position(at)
	if key.Line != val.Line {
		return nil, fmt.Errorf("%s:%d: spec.primary's value is not on its key's line: rewrite it by hand", file, key.Line)
	}
	line := lines[val.Line-1]
	rest := line[val.Column-1:]
	old := ""
	for _, raw := range []string{`"` + primaryOf(doc) + `"`, `'` + primaryOf(doc) + `'`, primaryOf(doc)} {
		if strings.HasPrefix(rest, raw) {
			old = raw
			break
		}
	}
	if old == "" {
		return nil, fmt.Errorf("%s:%d: spec.primary is not written as a plain or quoted name: rewrite it by hand", file, val.Line)
	}
	lines[val.Line-1] = line[:val.Column-1] + primary + rest[len(old):]

	// The consent's old lines go (its key line and what is indented
	// deeper under it); the new one follows the primary.
	drop := map[int]bool{}
	if kp, ok := doc.key[spec.Child("acceptDataLoss").String()]; ok {
		drop[kp.Line-1] = true
		for i := kp.Line; i < len(lines); i++ {
			trimmed := strings.TrimSpace(lines[i])
			if trimmed != "" && indentOf(lines[i]) <= kp.Column-1 {
				break
			}
			drop[i] = true
		}
	}
	consentLine := fmt.Sprintf("%sacceptDataLoss: {cluster: %s, systemIdentifier: %q, timeline: %d}\n",
		strings.Repeat(" ", key.Column-1), consent.Cluster, consent.SystemIdentifier, consent.Timeline)
	var out strings.Builder
	for i, l := range lines {
		if drop[i] {
			continue
		}
		out.WriteString(l)
		if i == val.Line-1 {
			if !strings.HasSuffix(l, "\n") {
				out.WriteString("\n")
			}
			out.WriteString(consentLine)
		}
	}
	return []byte(out.String()), nil
}

func primaryOf(doc *Document) string {
	m, _ := doc.Value.(map[string]any)
	spec, _ := m["spec"].(map[string]any)
	p, _ := spec["primary"].(string)
	return p
}

func indentOf(line string) int { return len(line) - len(strings.TrimLeft(line, " ")) }
