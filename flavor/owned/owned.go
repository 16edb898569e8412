// Package owned declares, once per flavor, the fields pgtopo owns on a
// cluster's object: where each lives in the object, how a plan names it,
// and which part of a snapshot.Spec holds it. Building the object, parsing
// it, comparing it with the file and showing the changes all come from
// this one list. It is pure: the planner and the saved plan's basis use it
// with no Kubernetes client; flavor/alauda walks it to build and parse the
// CR.
package owned

import (
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/pgtopo/pgtopo/snapshot"
)

// Field is one owned field. Path is where it lives in the object (under
// spec); Show is how plans name it. A field without a Path is written by
// its flavor some other way (Patroni's REST API).
type Field struct {
	Show string
	Path []string
	// text is the value as a plan shows it; same compares two specs'
	// values without building either text (the planner's common case).
	text func(snapshot.Spec) string
	same func(a, b snapshot.Spec) bool
	// get is the value as written into the object; set reads it back from
	// what the object holds (nil when absent).
	get func(snapshot.Spec) any
	set func(*snapshot.Spec, any)
	// Flags.
	omitEmpty bool // "" is not written: left to whoever set it
	peer      bool // the endpoint a standby streams from
	params    bool // a map of PostgreSQL settings, one shown field per key
}

// String is a string field.
func String(show string, path []string, at func(*snapshot.Spec) *string) Field {
	return Field{Show: show, Path: path,
		text: func(s snapshot.Spec) string { return *at(&s) },
		same: func(a, b snapshot.Spec) bool { return *at(&a) == *at(&b) },
		get:  func(s snapshot.Spec) any { return *at(&s) },
		set: func(s *snapshot.Spec, v any) {
			str, _ := v.(string)
			*at(s) = str
		}}
}

// Int is an integer field.
func Int(show string, path []string, at func(*snapshot.Spec) *int) Field {
	return Field{Show: show, Path: path,
		text: func(s snapshot.Spec) string { return strconv.Itoa(*at(&s)) },
		same: func(a, b snapshot.Spec) bool { return *at(&a) == *at(&b) },
		get:  func(s snapshot.Spec) any { return int64(*at(&s)) },
		set:  func(s *snapshot.Spec, v any) { *at(s) = toInt(v) }}
}

// Bool is a boolean field.
func Bool(show string, path []string, at func(*snapshot.Spec) *bool) Field {
	return Field{Show: show, Path: path,
		text: func(s snapshot.Spec) string { return strconv.FormatBool(*at(&s)) },
		same: func(a, b snapshot.Spec) bool { return *at(&a) == *at(&b) },
		get:  func(s snapshot.Spec) any { return *at(&s) },
		set: func(s *snapshot.Spec, v any) {
			b, _ := v.(bool)
			*at(s) = b
		}}
}

// Parameters is the map of PostgreSQL settings: each key is shown as a
// field of its own, Show + "." + key.
func Parameters(show string, path []string) Field {
	return Field{Show: show, Path: path, params: true,
		same: func(a, b snapshot.Spec) bool { return maps.Equal(a.Parameters, b.Parameters) },
		get: func(s snapshot.Spec) any {
			if len(s.Parameters) == 0 {
				return nil
			}
			m := make(map[string]any, len(s.Parameters))
			for k, v := range s.Parameters {
				m[k] = v
			}
			return m
		},
		set: func(s *snapshot.Spec, v any) {
			m, _ := v.(map[string]any)
			if len(m) == 0 {
				return
			}
			s.Parameters = make(map[string]string, len(m))
			for k, x := range m {
				str, _ := x.(string)
				s.Parameters[k] = str
			}
		}}
}

// OmitEmpty marks a field that is not written when the file leaves it
// empty: whoever set it keeps it, and no change is shown.
func (f Field) OmitEmpty() Field { f.omitEmpty = true; return f }

// Peer is the endpoint a standby streams from, shown as host:port. Its
// host and port live at hostPath and portPath (empty for a flavor that
// writes it another way).
func Peer(show string, hostPath, portPath []string) []Field {
	host := String(show, hostPath, func(s *snapshot.Spec) *string { return &s.Replication.PeerHost })
	port := Int(show, portPath, func(s *snapshot.Spec) *int { return &s.Replication.PeerPort })
	shown := Field{Show: show, peer: true,
		text: func(s snapshot.Spec) string { return s.Replication.Peer() },
		same: func(a, b snapshot.Spec) bool { return a.Replication.SamePeer(b.Replication) }}
	if hostPath == nil {
		return []Field{shown}
	}
	// The shown field compares and shows; the two stored ones build and
	// parse and are not shown apart.
	host.Show, port.Show = "", ""
	return []Field{shown, host, port}
}

func toInt(v any) int {
	switch n := v.(type) {
	case int64:
		return int(n)
	case int:
		return n
	case float64:
		return int(n)
	}
	return 0
}

// Set is a flavor's owned fields, in the order plans show them.
type Set []Field

// Stored are the fields with a place in the object, for building and
// parsing it.
func (fs Set) Stored() []Field {
	var out []Field
	for _, f := range fs {
		if f.Path != nil {
			out = append(out, f)
		}
	}
	return out
}

// Get is the field's value as written into the object; nil leaves it out.
func (f Field) Get(s snapshot.Spec) any {
	v := f.get(s)
	if str, ok := v.(string); ok && str == "" && f.omitEmpty {
		return nil
	}
	return v
}

// Set reads the field from what the object holds at its path.
func (f Field) Set(s *snapshot.Spec, v any) { f.set(s, v) }

// Shown lists the spec's owned fields as plans show them, in a fixed
// order: what is shown is what is written.
func (fs Set) Shown(s snapshot.Spec) []snapshot.Field {
	out := make([]snapshot.Field, 0, len(fs)+len(s.Parameters))
	for _, f := range fs {
		switch {
		case f.Show == "":
		case f.params:
			for _, k := range slices.Sorted(maps.Keys(s.Parameters)) {
				out = append(out, snapshot.Field{Path: f.Show + "." + k, Value: s.Parameters[k]})
			}
		default:
			out = append(out, snapshot.Field{Path: f.Show, Value: f.text(s)})
		}
	}
	return out
}

// Same reports whether live has every owned field of want (a field want
// leaves empty and marks OmitEmpty is not compared).
func (fs Set) Same(live, want snapshot.Spec) bool {
	if live.Flavor != want.Flavor {
		return false
	}
	for _, f := range fs {
		if f.Show == "" {
			continue
		}
		if f.omitEmpty && f.text(want) == "" {
			continue
		}
		if !f.same(live, want) {
			return false
		}
	}
	return true
}

// Omitted reports whether a shown field is left out of the write when
// empty.
func (fs Set) Omitted(show string) bool {
	i := slices.IndexFunc(fs, func(f Field) bool { return f.Show == show && f.omitEmpty })
	return i >= 0
}

// IsPeer reports whether a shown field is the standby's peer.
func (fs Set) IsPeer(show string) bool {
	return slices.ContainsFunc(fs, func(f Field) bool { return f.Show == show && f.peer })
}

// Parameter is the PostgreSQL setting a shown field is, if it is one.
func (fs Set) Parameter(show string) (string, bool) {
	for _, f := range fs {
		if f.params {
			if name, ok := strings.CutPrefix(show, f.Show+"."); ok {
				return name, true
			}
		}
	}
	return "", false
}

// ParameterField is how plans name a PostgreSQL setting ("" when the
// flavor owns no settings).
func (fs Set) ParameterField(name string) string {
	for _, f := range fs {
		if f.params {
			return f.Show + "." + name
		}
	}
	return ""
}

// Change is an owned field whose value differs between two specs.
type Change struct {
	Field, Before, After string
}

// Changes lists the owned fields whose values differ from before to
// after, in the order plans show them (a setting only one of them has
// counts, "" in the other).
func (fs Set) Changes(before, after snapshot.Spec) []Change {
	was := map[string]string{}
	for _, f := range fs.Shown(before) {
		was[f.Path] = f.Value
	}
	var out []Change
	seen := map[string]bool{}
	for _, f := range fs.Shown(after) {
		seen[f.Path] = true
		if was[f.Path] != f.Value {
			out = append(out, Change{f.Path, was[f.Path], f.Value})
		}
	}
	for _, f := range fs.Shown(before) {
		if !seen[f.Path] {
			out = append(out, Change{f.Path, f.Value, ""})
		}
	}
	return out
}

// For is the owned fields of s's flavor: an operator's object ("", the
// default flavor) or a Patroni cluster's dynamic configuration.
func For(s snapshot.Spec) Set {
	if s.Flavor == snapshot.FlavorPatroni {
		return Patroni
	}
	return Alauda
}
