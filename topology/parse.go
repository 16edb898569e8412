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
	dec := yamlv3.NewDecoder(bytes.NewReader(data))
	var root yamlv3.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &SyntaxError{File: file, Pos: Pos{1, 1}, Msg: "file is empty; expected a Topology (apiVersion: " + APIVersion + ")"}
		}
		return nil, yamlError(file, err)
	}
	var extra yamlv3.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &SyntaxError{File: file, Pos: Pos{extra.Line, extra.Column}, Msg: "a second YAML document; put one topology per file"}
	} else if !errors.Is(err, io.EOF) {
		return nil, yamlError(file, err)
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
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, yamlError(file, err)
	}
	d := json.NewDecoder(bytes.NewReader(js))
	d.UseNumber()
	if err := d.Decode(&doc.Value); err != nil {
		return nil, &SyntaxError{File: file, Pos: Pos{1, 1}, Msg: "cannot be read as JSON-compatible YAML: " + err.Error()}
	}
	doc.Value = normalizeNumbers(doc.Value)
	return doc, nil
}

func yamlError(file string, err error) error {
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &SyntaxError{File: file, Pos: Pos{line, 1}, Msg: "not valid YAML: " + m[2]}
	}
	return &SyntaxError{File: file, Pos: Pos{1, 1}, Msg: "not valid YAML: " + msg}
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
