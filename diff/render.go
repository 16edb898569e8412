package diff

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/pgtopo/pgtopo/printable"
)

// PlanAPIVersion versions the JSON form of a plan.
const PlanAPIVersion = "pgtopo.dev/v1alpha1"

// Summary is the closing line of a text plan.
func (p *Plan) Summary() string {
	if p.InSync() {
		return "No changes. The live topology matches the file."
	}
	c := p.Count()
	if c.Delete > 0 {
		return fmt.Sprintf("Plan: %d switchover, %d to create, %d to update, %d to delete, %d refused.", c.Switchovers, c.Create, c.Update, c.Delete, c.Refused)
	}
	return fmt.Sprintf("Plan: %d switchover, %d to create, %d to update, %d refused.", c.Switchovers, c.Create, c.Update, c.Refused)
}

// Headline says in words what applying the plan does to the roles.
func (p *Plan) Headline() string {
	var now, after string
	for _, c := range p.Clusters {
		if c.Now == RolePrimary {
			now = c.Name
		}
		if c.After == RolePrimary {
			after = c.Name
		}
	}
	if p.Refused() {
		return fmt.Sprintf("topology %s: refused", p.Topology)
	}
	if after != "" && now == "" {
		return fmt.Sprintf("topology %s: bring up with primary %s", p.Topology, after)
	}
	if after != "" && now != after {
		return fmt.Sprintf("topology %s: switchover %s → %s", p.Topology, now, after)
	}
	return fmt.Sprintf("topology %s: primary %s", p.Topology, now)
}

// WriteText renders the plan for a terminal.
func (p *Plan) WriteText(w io.Writer) error {
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
		put(&b, "  %2d. %-2s %-16s %s\n", i+1, Catalogue[s.Action].Symbol, s.Action, s.Subject)
		put(&b, "          %s\n", s.Reason)
		for _, c := range s.Changes {
			put(&b, "          %s: %s → %s\n", c.Field, show(c.Before), show(c.After))
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

func show(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// jsonPlan is the stable, versioned JSON document.
type jsonPlan struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	InSync     bool   `json:"inSync"`
	Refused    bool   `json:"refused"`
	Summary    string `json:"summary"`
	Plan
}

// WriteJSON renders the plan for machines.
func (p *Plan) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(jsonPlan{APIVersion: PlanAPIVersion, Kind: "Plan", InSync: p.InSync(), Refused: p.Refused(), Summary: p.Summary(), Plan: *p})
}

// WriteMarkdown renders the plan as a pull-request comment.
func (p *Plan) WriteMarkdown(w io.Writer) error {
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
