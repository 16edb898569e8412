package render

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/pgtopo/pgtopo/plan"
)

// FleetPullRequest is a pull request over many topology files (diff --path
// with a pattern): what merging does, per changed file, in one comment.
type FleetPullRequest struct {
	Base, Head, Pattern string
	// Changed are the files whose topology changes, each as one pull
	// request says it; Moves says which of them move their primary.
	Changed []FleetFile
	// Invalid are files that do not validate at the head (their findings
	// go to stderr); Removed are files the head no longer has (pgtopo
	// stops managing them; nothing is deleted); Unchanged the rest.
	Invalid, Removed, Unchanged []string
}

// FleetFile is one changed file of a fleet pull request.
type FleetFile struct {
	PullRequest
	Topology string `json:"topology"`
	// FromSite and ToSite are where the primary moves from and to, when
	// merging moves it.
	FromSite string `json:"fromSite,omitempty"`
	ToSite   string `json:"toSite,omitempty"`
}

// Headline says in one line what merging does across the files.
func (f *FleetPullRequest) Headline() string {
	var moves, others []string
	for _, c := range f.Changed {
		if c.FromSite != "" {
			moves = append(moves, fmt.Sprintf("%s %s → %s", c.Topology, c.FromSite, c.ToSite))
		} else {
			others = append(others, c.Topology)
		}
	}
	var parts []string
	if len(moves) > 0 {
		parts = append(parts, "switchovers: "+strings.Join(moves, ", "))
	}
	if len(others) > 0 {
		parts = append(parts, "other changes: "+strings.Join(others, ", "))
	}
	if len(f.Invalid) > 0 {
		parts = append(parts, fmt.Sprintf("%d invalid: %s", len(f.Invalid), strings.Join(f.Invalid, ", ")))
	}
	if len(f.Removed) > 0 {
		parts = append(parts, fmt.Sprintf("%d no longer managed: %s", len(f.Removed), strings.Join(f.Removed, ", ")))
	}
	parts = append(parts, fmt.Sprintf("%d file(s) unchanged", len(f.Unchanged)))
	return fmt.Sprintf("merging %s: %s", plan.ShortRevision(f.Head), strings.Join(parts, "; "))
}

// WriteText renders the fleet pull request for a terminal or a CI log.
func (f *FleetPullRequest) WriteText(w io.Writer) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\n%s: base %s, head %s\n", f.Headline(), f.Pattern, plan.ShortRevision(f.Base), plan.ShortRevision(f.Head))
	for i := range f.Changed {
		fmt.Fprintf(&b, "\n=== %s\n", f.Changed[i].Path)
		if err := f.Changed[i].WriteText(&b); err != nil {
			return err
		}
	}
	_, err := w.Write(b.Bytes())
	return err
}

// WriteMarkdown renders the fleet pull request as one comment to post.
func (f *FleetPullRequest) WriteMarkdown(w io.Writer) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# pgtopo: %s\n\n`%s`, base `%s`, head `%s`\n", f.Headline(), f.Pattern, plan.ShortRevision(f.Base), plan.ShortRevision(f.Head))
	for i := range f.Changed {
		fmt.Fprintf(&b, "\n---\n\n")
		if err := f.Changed[i].WriteMarkdown(&b); err != nil {
			return err
		}
	}
	_, err := w.Write(b.Bytes())
	return err
}

// WriteJSON renders the fleet pull request for machines: each changed
// file as diff -o json gives one pull request.
func (f *FleetPullRequest) WriteJSON(w io.Writer) error {
	type file struct {
		Path     string          `json:"path"`
		Topology string          `json:"topology"`
		FromSite string          `json:"fromSite,omitempty"`
		ToSite   string          `json:"toSite,omitempty"`
		Result   json.RawMessage `json:"result"`
	}
	doc := struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Headline   string   `json:"headline"`
		Base       string   `json:"base"`
		Head       string   `json:"head"`
		Pattern    string   `json:"pattern"`
		Changed    []file   `json:"changed"`
		Invalid    []string `json:"invalid"`
		Removed    []string `json:"removed"`
		Unchanged  []string `json:"unchanged"`
	}{APIVersion: plan.PlanAPIVersion, Kind: "FleetPullRequest", Headline: f.Headline(), Base: f.Base, Head: f.Head, Pattern: f.Pattern,
		Changed: []file{}, Invalid: orEmpty(f.Invalid), Removed: orEmpty(f.Removed), Unchanged: orEmpty(f.Unchanged)}
	for i := range f.Changed {
		var one bytes.Buffer
		if err := f.Changed[i].WriteJSON(&one); err != nil {
			return err
		}
		c := f.Changed[i]
		doc.Changed = append(doc.Changed, file{Path: c.Path, Topology: c.Topology, FromSite: c.FromSite, ToSite: c.ToSite, Result: bytes.TrimSpace(one.Bytes())})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
