package topology

import (
	"regexp"
	"strconv"
	"strings"
)

// PathElem is one step into a document: a mapping key or a list index.
type PathElem struct {
	Key   string
	Index int
	IsKey bool
}

// Path locates a value in a document, e.g. spec.clusters[1].site.
type Path []PathElem

var plainKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]*$`)

// String renders the path the way findings print it.
func (p Path) String() string {
	var b strings.Builder
	for _, e := range p {
		switch {
		case !e.IsKey:
			b.WriteString("[" + strconv.Itoa(e.Index) + "]")
		case plainKey.MatchString(e.Key):
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(e.Key)
		default:
			b.WriteString("[" + strconv.Quote(e.Key) + "]")
		}
	}
	return b.String()
}

// Child returns p extended by a key.
func (p Path) Child(key string) Path {
	return append(append(Path{}, p...), PathElem{Key: key, IsKey: true})
}

// Index returns p extended by a list index.
func (p Path) Index(i int) Path {
	return append(append(Path{}, p...), PathElem{Index: i})
}

// HasPrefix reports whether q is p or an ancestor of p.
func (p Path) HasPrefix(q Path) bool {
	if len(q) > len(p) {
		return false
	}
	for i := range q {
		if q[i] != p[i] {
			return false
		}
	}
	return true
}
