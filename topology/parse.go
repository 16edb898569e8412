package topology

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	yamlv3 "go.yaml.in/yaml/v3"
	"sigs.k8s.io/yaml"
)

// Pos is a 1-based line and column in a file.
type Pos struct {
	Line   int `json:"line"`
	Column int `json:"column"`
}

// Document is a parsed topology file before validation: its generic value
// (what the validators see) and where every value and key sits in the file.
type Document struct {
	File  string
	Data  []byte
	Value any
	pos   map[string]Pos
	key   map[string]Pos
}

// SyntaxError is a file that is not a single well-formed YAML document.
type SyntaxError struct {
	File string
	Pos  Pos
	Path Path
	Msg  string
}

func (e *SyntaxError) Error() string {
	loc := fmt.Sprintf("%s:%d:%d", e.File, e.Pos.Line, e.Pos.Column)
	if len(e.Path) > 0 {
		return fmt.Sprintf("%s: %s: %s", loc, e.Path, e.Msg)
	}
	return fmt.Sprintf("%s: %s", loc, e.Msg)
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// MaxFileBytes is the most a topology file may hold: far more than any
// real topology, far less than what would make validation slow.
const MaxFileBytes = 1 << 20

// ReadFile reads a topology file without reading more than MaxFileBytes
// and one byte: a larger file (or /dev/zero) is refused by ParseDocument,
// never buffered whole.
func ReadFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
}

// ParseDocument reads one YAML document and indexes its positions. It
// rejects files over MaxFileBytes, empty files, several documents in one
// file and duplicate keys.
func ParseDocument(file string, data []byte) (*Document, error) {
	if len(data) > MaxFileBytes {
		return nil, &SyntaxError{File: file, Pos: Pos{1, 1}, Msg: fmt.Sprintf("more than %d bytes (1 MiB), the most a topology file may hold; is this the right file?", MaxFileBytes)}
	}
	if err := badBytes(file, data); err != nil {
		return nil, err
	}
	dec := yamlv3.NewDecoder(bytes.NewReader(data))
	var root yamlv3.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &SyntaxError{File: file, Pos: Pos{1, 1}, Msg: "file is empty; expected a Topology (apiVersion: " + APIVersion + ")"}
		}
		return nil, yamlError(file, data, err)
	}
	var extra yamlv3.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &SyntaxError{File: file, Pos: Pos{extra.Line, extra.Column}, Msg: "a second YAML document; put one topology per file"}
	} else if !errors.Is(err, io.EOF) {
		return nil, yamlError(file, data, err)
	}
	body := &root
	if root.Kind == yamlv3.DocumentNode && len(root.Content) == 1 {
		body = root.Content[0]
	}
	if body.Kind == yamlv3.DocumentNode || (body.Kind == yamlv3.ScalarNode && body.Tag == "!!null") {
		return nil, &SyntaxError{File: file, Pos: Pos{1, 1}, Msg: "file is empty; expected a Topology (apiVersion: " + APIVersion + ")"}
	}
	doc := &Document{File: file, Data: data, pos: map[string]Pos{}, key: map[string]Pos{}}
	if err := doc.index(body, nil, 0); err != nil {
		return nil, err
	}
	if err := doc.aliasesBounded(body); err != nil {
		return nil, err
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, yamlError(file, data, err)
	}
	d := json.NewDecoder(bytes.NewReader(js))
	d.UseNumber()
	if err := d.Decode(&doc.Value); err != nil {
		return nil, &SyntaxError{File: file, Pos: Pos{1, 1}, Msg: "cannot be read as JSON-compatible YAML: " + err.Error()}
	}
	doc.Value = normalizeNumbers(doc.Value)
	return doc, nil
}

// yamlError positions a YAML parser's error at the byte or token at fault.
// The parser names a line only, and for many errors the line where the
// enclosing collection began, counted from 0; so the position is found
// again from the message: a tab in indentation, an unclosed flow
// collection, an unknown anchor; otherwise the first line at which the
// file, read up to there, no longer parses.
func yamlError(file string, data []byte, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 1
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	pos, what := locateYAMLError(data, msg, line)
	if what != "" {
		msg += " (" + what + ")"
	}
	return &SyntaxError{File: file, Pos: pos, Msg: "not valid YAML: " + msg}
}

func locateYAMLError(data []byte, msg string, line int) (Pos, string) {
	lines := strings.Split(string(data), "\n")
	switch {
	case strings.Contains(msg, "tab character") || strings.Contains(msg, "cannot start any token"):
		for i, l := range lines {
			indent := l[:len(l)-len(strings.TrimLeft(l, " \t"))]
			if j := strings.IndexByte(indent, '\t'); j >= 0 {
				return Pos{i + 1, j + 1}, "a tab in indentation; indent with spaces"
			}
		}
	case strings.HasPrefix(msg, "did not find expected ',' or ']'") || strings.HasPrefix(msg, "did not find expected ',' or '}'"):
		if p, ok := unclosedFlow(lines); ok {
			return p, "this collection is not closed"
		}
	case strings.HasPrefix(msg, "unknown anchor '"):
		name := strings.TrimSuffix(strings.TrimPrefix(msg, "unknown anchor '"), "' referenced")
		re := regexp.MustCompile(`\*` + regexp.QuoteMeta(name) + `(?:[\s,\]}]|$)`)
		for i, l := range lines {
			if loc := re.FindStringIndex(l); loc != nil {
				return Pos{i + 1, loc[0] + 1}, "no anchor &" + name + " is defined before it"
			}
		}
	}
	if n := firstFailingLine(lines); n > 0 {
		l := lines[n-1]
		return Pos{n, len(l) - len(strings.TrimLeft(l, " ")) + 1}, ""
	}
	return Pos{max(line, 1), 1}, ""
}

// unclosedFlow finds the flow collection ('[' or '{') left open, skipping
// quoted strings and comments.
func unclosedFlow(lines []string) (Pos, bool) {
	var open []Pos
	for i, l := range lines {
		quote := byte(0)
		for j := 0; j < len(l); j++ {
			c := l[j]
			switch {
			case quote != 0:
				if c == quote {
					quote = 0
				} else if c == '\\' && quote == '"' {
					j++
				}
			case c == '"' || c == '\'':
				quote = c
			case c == '#' && (j == 0 || l[j-1] == ' ' || l[j-1] == '\t'):
				j = len(l)
			case c == '[' || c == '{':
				open = append(open, Pos{i + 1, j + 1})
			case (c == ']' || c == '}') && len(open) > 0:
				open = open[:len(open)-1]
			}
		}
	}
	if len(open) == 0 {
		return Pos{}, false
	}
	return open[len(open)-1], true
}

// firstFailingLine is the smallest n such that the first n lines do not
// parse, found by bisection (0 when they all parse).
func firstFailingLine(lines []string) int {
	fails := func(n int) bool {
		var v yamlv3.Node
		return yamlv3.Unmarshal([]byte(strings.Join(lines[:n], "\n")), &v) != nil
	}
	lo, hi := 0, len(lines)
	if !fails(hi) {
		return 0
	}
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if fails(mid) {
			hi = mid
		} else {
			lo = mid
		}
	}
	return hi
}

// badBytes refuses a file with bytes YAML cannot hold, at the byte: invalid
// UTF-8, NUL and other control characters but tab, line feed and carriage
// return.
func badBytes(file string, data []byte) error {
	line, col := 1, 1
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			return &SyntaxError{File: file, Pos: Pos{line, col}, Msg: fmt.Sprintf("not valid YAML: byte 0x%02x is not UTF-8; save the file as UTF-8", data[i])}
		case r < 0x20 && r != '\t' && r != '\n' && r != '\r', r == 0x7f:
			return &SyntaxError{File: file, Pos: Pos{line, col}, Msg: fmt.Sprintf("not valid YAML: control character %U; remove it", r)}
		}
		if r == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
		i += size
	}
	return nil
}

// maxDepth bounds nesting so hostile input cannot exhaust the stack.
const maxDepth = 64

func (d *Document) index(n *yamlv3.Node, path Path, depth int) error {
	if depth > maxDepth {
		return &SyntaxError{File: d.File, Pos: Pos{n.Line, n.Column}, Path: path, Msg: fmt.Sprintf("nested deeper than %d levels", maxDepth)}
	}
	if n.Kind == yamlv3.AliasNode {
		// Aliases point back into the document; their target is indexed
		// where it is defined, and YAMLToJSON expands them.
		d.pos[path.String()] = Pos{n.Line, n.Column}
		return nil
	}
	d.pos[path.String()] = Pos{n.Line, n.Column}
	switch n.Kind {
	case yamlv3.MappingNode:
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Tag == "!!merge" {
				continue
			}
			if k.Kind != yamlv3.ScalarNode {
				return &SyntaxError{File: d.File, Pos: Pos{k.Line, k.Column}, Path: path,
					Msg: "a complex mapping key (a list, a mapping or an alias used as a key); keys are plain names"}
			}
			child := path.Child(k.Value)
			if first, dup := seen[k.Value]; dup {
				return &SyntaxError{File: d.File, Pos: Pos{k.Line, k.Column}, Path: child,
					Msg: fmt.Sprintf("duplicate key %q (first at line %d); a key may appear once", k.Value, first)}
			}
			seen[k.Value] = k.Line
			d.key[child.String()] = Pos{k.Line, k.Column}
			if err := d.index(v, child, depth+1); err != nil {
				return err
			}
		}
	case yamlv3.SequenceNode:
		for i, v := range n.Content {
			if err := d.index(v, path.Index(i), depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// maxExpanded bounds what aliases may add to a document, beyond the values
// written out: a topology's aliases add a few hundred, an alias bomb
// billions.
const maxExpanded = 100000

// aliasesBounded refuses a document whose aliases expand it by more than
// maxExpanded values, at the alias that crosses the bound. A large
// document written out is no bomb: only what aliases add counts.
func (d *Document) aliasesBounded(root *yamlv3.Node) error {
	written := 0
	var count func(n *yamlv3.Node)
	count = func(n *yamlv3.Node) {
		written++
		for _, c := range n.Content {
			count(c)
		}
	}
	count(root)
	limit := written + maxExpanded
	sizes := map[*yamlv3.Node]int{}
	var size func(n *yamlv3.Node) (int, *yamlv3.Node)
	size = func(n *yamlv3.Node) (int, *yamlv3.Node) {
		if s, ok := sizes[n]; ok {
			return s, nil
		}
		sizes[n] = limit + 1 // an alias to its own ancestor never ends
		total := 1
		if n.Kind == yamlv3.AliasNode && n.Alias != nil {
			s, at := size(n.Alias)
			if at != nil {
				return s, at
			}
			if total += s; total > limit {
				return total, n
			}
		}
		for _, c := range n.Content {
			s, at := size(c)
			if at != nil {
				return s, at
			}
			if total += s; total > limit {
				if c.Kind == yamlv3.AliasNode {
					return total, c
				}
				return total, n
			}
		}
		sizes[n] = total
		return total, nil
	}
	if _, at := size(root); at != nil {
		return &SyntaxError{File: d.File, Pos: Pos{at.Line, at.Column},
			Msg: fmt.Sprintf("not valid YAML: aliases expand this document by more than %d values (an alias bomb?); write the values out", maxExpanded)}
	}
	return nil
}

// Position of the value at path, or of its nearest ancestor in the file
// (a missing field points at the mapping that should hold it).
func (d *Document) Position(p Path) Pos {
	for i := len(p); i >= 0; i-- {
		if pos, ok := d.pos[p[:i].String()]; ok {
			return pos
		}
	}
	return Pos{1, 1}
}

// KeyPosition of the mapping key that ends path, falling back to Position.
func (d *Document) KeyPosition(p Path) Pos {
	if pos, ok := d.key[p.String()]; ok {
		return pos
	}
	return d.Position(p)
}

// Resolve turns validator path segments into a Path, using the document's
// shape to tell list indexes from mapping keys that look like numbers.
func (d *Document) Resolve(segments []string) Path {
	var p Path
	cur := d.Value
	for _, s := range segments {
		switch v := cur.(type) {
		case []any:
			i, err := strconv.Atoi(s)
			if err == nil {
				p = p.Index(i)
				if i >= 0 && i < len(v) {
					cur = v[i]
				} else {
					cur = nil
				}
				continue
			}
			p = p.Child(s)
			cur = nil
		case map[string]any:
			p = p.Child(s)
			cur = v[s]
		default:
			p = p.Child(s)
			cur = nil
		}
	}
	return p
}

// normalizeNumbers turns json.Number into int64 or float64, like YAML means.
func normalizeNumbers(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = normalizeNumbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = normalizeNumbers(e)
		}
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	}
	return v
}

// Decode turns a validated document into a Topology with defaults applied.
// Unknown fields are errors here too, as a second line of defence.
func (d *Document) Decode() (*Topology, error) {
	var t Topology
	if err := yaml.UnmarshalStrict(d.Data, &t); err != nil {
		return nil, fmt.Errorf("%s: %w", d.File, err)
	}
	t.ApplyDefaults()
	return &t, nil
}
