// Package render says a plan, and what a pull request will do, for people
// (text, markdown) and for machines (versioned JSON).
package render

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/pgtopo/pgtopo/plan"

	"github.com/pgtopo/pgtopo/printable"
)

// Text renders the plan for a terminal.
func Text(w io.Writer, p *plan.Plan) error {
	var b strings.Builder
	put(&b, "%s\n", p.Headline())
	if p.Revision != "" {
		put(&b, "revision %s, digest %s\n", p.Revision, p.Digest)
	}
	// In the order apply runs them, each naming its site.
	if len(p.Steps) > 0 {
		b.WriteString("\n")
	}
	for i, s := range p.Steps {
		put(&b, "  %2d. %-2s %-16s %s\n", i+1, plan.Actions[s.Action].Symbol, s.Action, s.Subject)
		put(&b, "          %s\n", s.Reason)
		for _, c := range s.Changes {
			put(&b, "          %s: %s → %s\n", c.Field, printable.OrNone(c.Before), printable.OrNone(c.After))
		}
	}
	if len(p.Refusals) > 0 {
		put(&b, "\nRefused:\n")
		for _, r := range p.Refusals {
			put(&b, "  ! %s\n", r.Reason)
		}
	}
	if len(p.Notes) > 0 {
		put(&b, "\nNotes:\n")
		for _, n := range p.Notes {
			if n.Subject != nil {
				put(&b, "  - %s: %s\n", n.Subject, n.Message)
			} else {
				put(&b, "  - %s\n", n.Message)
			}
		}
	}
	put(&b, "\n%s\n", p.Summary())
	_, err := io.WriteString(w, b.String())
	return err
}

// jsonPlan is the stable, versioned JSON document.
type jsonPlan struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	InSync     bool   `json:"inSync"`
	Refused    bool   `json:"refused"`
	Summary    string `json:"summary"`
	plan.Plan
}

// JSON renders the plan for machines.
func JSON(w io.Writer, p *plan.Plan) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(jsonPlan{APIVersion: plan.PlanAPIVersion, Kind: "Plan", InSync: p.InSync(), Refused: p.Refused(), Summary: p.Summary(), Plan: *p})
}

// Markdown renders the plan as a pull-request comment.
func Markdown(w io.Writer, p *plan.Plan) error {
	var b strings.Builder
	put(&b, "### pgtopo: %s\n\n", p.Headline())
	put(&b, "| cluster | site | namespace | role now | role after |\n|---|---|---|---|---|\n")
	for _, c := range p.Clusters {
		after := c.After
		if after != c.Now {
			after = "**" + after + "**"
		}
		put(&b, "| %s | %s | %s | %s | %s |\n", c.Name, c.Site, c.Namespace, c.Now, after)
	}
	if len(p.Steps) > 0 {
		put(&b, "\n**Steps**\n\n")
		for i, s := range p.Steps {
			put(&b, "%d. `%s` %s: %s\n", i+1, s.Action, s.Subject, s.Reason)
			for _, c := range s.Changes {
				put(&b, "   - `%s`: %s → %s\n", c.Field, mdValue(c.Before), mdValue(c.After))
			}
		}
	}
	if len(p.Refusals) > 0 {
		put(&b, "\n**Refused**\n\n")
		for _, r := range p.Refusals {
			put(&b, "- :no_entry: %s\n", r.Reason)
		}
	}
	if len(p.Notes) > 0 {
		put(&b, "\n**Notes**\n\n")
		for _, n := range p.Notes {
			put(&b, "- %s\n", n.Message)
		}
	}
	put(&b, "\n%s\n", p.Summary())
	_, err := io.WriteString(w, b.String())
	return err
}

func mdValue(s string) string {
	if s == "" {
		return "_(none)_"
	}
	return "`" + s + "`"
}

// put writes a line of a rendering with every string argument made
// printable: a value from the file, a CR or a server never adds a line.
func put(b *strings.Builder, format string, args ...any) {
	for i, a := range args {
		switch v := a.(type) {
		case string:
			args[i] = printable.String(v)
		case fmt.Stringer:
			args[i] = printable.String(v.String())
		}
	}
	fmt.Fprintf(b, format, args...)
}
