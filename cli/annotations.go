package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/pgtopo/pgtopo/printable"
	"github.com/pgtopo/pgtopo/schema"
)

// writeAnnotations prints GitHub Actions workflow commands so findings show
// up on the pull request's lines. validate writes them to stdout; commands
// whose stdout is a plan write them to stderr, which the runner also reads.
func writeAnnotations(w io.Writer, fs schema.Findings) {
	for _, f := range fs {
		level := "error"
		if f.Severity == schema.SeverityWarning {
			level = "warning"
		}
		props := []string{"file=" + escapeProperty(f.File)}
		if f.Line > 0 {
			props = append(props, fmt.Sprintf("line=%d", f.Line), fmt.Sprintf("col=%d", f.Column))
		}
		msg := f.Message
		if f.Path != "" {
			msg = f.Path + ": " + msg
		}
		fmt.Fprintf(w, "::%s %s::%s\n", level, strings.Join(props, ","), escapeData(msg))
	}
}

var (
	dataEscaper     = strings.NewReplacer("%", "%25", "\r", "%0D", "\n", "%0A")
	propertyEscaper = strings.NewReplacer("%", "%25", "\r", "%0D", "\n", "%0A", ":", "%3A", ",", "%2C")
)

func escapeData(s string) string     { return dataEscaper.Replace(printable.String(s)) }
func escapeProperty(s string) string { return propertyEscaper.Replace(printable.String(s)) }
