package render

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/pgtopo/pgtopo/plan"
)

// PullRequest is what pgtopo says about a pull request: the intents of the
// change, then the live plan for the head revision (nil when not observed).
type PullRequest struct {
	Base    string        `json:"base"`
	Head    string        `json:"head"`
	Path    string        `json:"path"`
	Intents []plan.Intent `json:"intents"`
	Plan    *plan.Plan    `json:"plan,omitempty"`
}

// Headline says in one line what merging does.
func (pr *PullRequest) Headline() string {
	if len(pr.Intents) == 0 {
		return fmt.Sprintf("merging %s changes nothing in %s", plan.ShortRevision(pr.Head), pr.Path)
	}
	for _, in := range pr.Intents {
		if in.Kind == plan.IntentSwitchover || in.Kind == plan.IntentNewTopology {
			return "merging " + plan.ShortRevision(pr.Head) + ": " + in.Text
		}
	}
	return fmt.Sprintf("merging %s: %d change(s) to %s", plan.ShortRevision(pr.Head), len(pr.Intents), pr.Path)
}

var intentSymbols = map[plan.IntentKind]string{
	plan.IntentNewTopology: "+", plan.IntentSwitchover: "<>", plan.IntentNewCluster: "+", plan.IntentRemoved: "-",
	plan.IntentChange: "~", plan.IntentSite: "~", plan.IntentSetting: "~",
}

// WriteText renders the pull request for a terminal or a CI log.
func (pr *PullRequest) WriteText(w io.Writer) error {
	var b strings.Builder
	put(&b, "%s\n", pr.Headline())
	put(&b, "%s: base %s, head %s\n", pr.Path, plan.ShortRevision(pr.Base), plan.ShortRevision(pr.Head))
	if len(pr.Intents) > 0 {
		put(&b, "\nWhat merging does:\n")
		for _, in := range pr.Intents {
			put(&b, "  %-2s %s\n", intentSymbols[in.Kind], in.Text)
		}
	}
	if pr.Plan != nil {
		put(&b, "\nLive plan for %s:\n", plan.ShortRevision(pr.Head))
	}
	if _, err := w.Write([]byte(b.String())); err != nil {
		return err
	}
	if pr.Plan != nil {
		return Text(w, pr.Plan)
	}
	return nil
}

// WriteMarkdown renders the pull request as a comment to post on it.
func (pr *PullRequest) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	put(&b, "## pgtopo: %s\n\n", pr.Headline())
	put(&b, "`%s`, base `%s`, head `%s`\n\n", pr.Path, plan.ShortRevision(pr.Base), plan.ShortRevision(pr.Head))
	if len(pr.Intents) == 0 {
		put(&b, "The topology is the same at both revisions.\n")
	}
	for _, in := range pr.Intents {
		put(&b, "- %s\n", in.Text)
	}
	if pr.Plan == nil {
		put(&b, "\n_Live state was not observed (--live=false)._\n")
	} else {
		put(&b, "\n")
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	if pr.Plan != nil {
		return Markdown(w, pr.Plan)
	}
	return nil
}

// WriteJSON renders the pull request for machines, versioned like a plan.
func (pr *PullRequest) WriteJSON(w io.Writer) error {
	type jsonPR struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Headline   string `json:"headline"`
		PullRequest
		Plan *jsonPlan `json:"plan,omitempty"`
	}
	doc := jsonPR{APIVersion: plan.PlanAPIVersion, Kind: "PullRequestPlan", Headline: pr.Headline(), PullRequest: *pr}
	if pr.Plan != nil {
		doc.Plan = &jsonPlan{APIVersion: plan.PlanAPIVersion, Kind: "Plan", InSync: pr.Plan.InSync(), Refused: pr.Plan.Refused(), Summary: pr.Plan.Summary(), Plan: *pr.Plan}
	}
	doc.PullRequest.Plan = nil
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}
