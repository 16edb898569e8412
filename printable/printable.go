// Package printable makes values from a topology file, a CR or a server
// safe to print: control and invisible format characters become visible
// escapes, so no value can start a line of its own in a terminal, a CI log
// (where a line can be a workflow command) or a pull-request comment.
package printable

import (
	"fmt"
	"strings"
	"unicode"
)

// String returns s with every control character (C0, DEL, C1), line and
// paragraph separator and invisible format character (zero-width spaces,
// joiners, byte order marks, bidirectional overrides) written as an
// escape: \n, \r, \t, or \u200b. Everything else, no-break spaces aside
// (\u00a0), passes unchanged.
func String(s string) string {
	if strings.IndexFunc(s, unsafe) < 0 {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case unsafe(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func unsafe(r rune) bool {
	return r == unicode.ReplacementChar || unicode.IsControl(r) || unicode.Is(unicode.Cf, r) ||
		unicode.Is(unicode.Zl, r) || unicode.Is(unicode.Zp, r) || r == '\u00a0'
}

// OrNone is s, or "(none)" when it is empty: a value shown before → after.
func OrNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
