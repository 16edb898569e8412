package cli

import (
	"fmt"
	"strings"

	"github.com/pgtopo/pgtopo/schema"
)

// writeAnnotations prints GitHub Actions workflow commands so findings show
// up on the pull request's lines. They go to stdout, where the runner reads
// workflow commands.
func writeAnnotations(e env, fs schema.Findings) {
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
		fmt.Fprintf(e.stdout, "::%s %s::%s\n", level, strings.Join(props, ","), escapeData(msg))
	}
}

var (
	dataEscaper     = strings.NewReplacer("%", "%25", "\r", "%0D", "\n", "%0A")
	propertyEscaper = strings.NewReplacer("%", "%25", "\r", "%0D", "\n", "%0A", ":", "%3A", ",", "%2C")
)

func escapeData(s string) string     { return dataEscaper.Replace(s) }
func escapeProperty(s string) string { return propertyEscaper.Replace(s) }
