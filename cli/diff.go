package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/pgtopo/pgtopo/printable"

	"github.com/spf13/cobra"

	"github.com/pgtopo/pgtopo/gitsource"
	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/planner"
	"github.com/pgtopo/pgtopo/reconcile"
	"github.com/pgtopo/pgtopo/render"
	"github.com/pgtopo/pgtopo/schema"
)

func newDiffCmd(e env) *cobra.Command {
	var src sourceFlags
	var output, base, head, out string
	var allowRollback, observeLive bool
	var acceptDataLoss string
	var allowRebuild []string
	var allowPrimaryRestart bool
	detailed := true
	cmd := &cobra.Command{
		Use: "diff (-f FILE... | --repo URL|PATH [--ref REV] [--path FILE] | --repo PATH --base REV [--head REV])",
		Example: `  pgtopo diff -f orders.yaml
  pgtopo diff -f topologies/            # every topology of a directory, each its own plan
  pgtopo diff -f orders.yaml -o json --out plan.json
  pgtopo diff --repo . --path orders.yaml --base origin/main -o markdown   # pull-request comment`,
		Short: "Show what apply would do: a plan of ordered steps, or the refusals that stop it",
		Long: `Observe every site of the topology and print the plan that would make the
live world match the file. Nothing is changed. Several -f, or a directory:
each file is its own topology with its own plan, one after the other.

Pull-request mode (--base): compare the topology at two revisions of a
repository, say in words what merging does (a switchover, a new standby, ...),
then show the live plan for the head revision. -o markdown is ready to post
as a pull-request comment.

Exit status (--detailed-exitcode, the default): 0 in sync, 4 changes pending,
1 error or refusal, 2 a wrong command line; over several files, the worst of
theirs. With --detailed-exitcode=false, pending changes exit 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(output, "markdown"); err != nil {
				return err
			}
			if out != "" && src.observerSecret != "" {
				return usagef("--out with --observer-secret: a plan made without the clusters' credentials cannot be applied; make it with an identity that reads them")
			}
			ctx := context.Background()
			if base != "" {
				return pullRequest(ctx, e, &src, prFlags{base: base, head: head, output: output, live: observeLive, allowRollback: allowRollback, detailed: detailed})
			}
			if cmd.Flags().Changed("head") {
				return usagef("--head needs --base: pull-request mode compares two revisions")
			}
			if out != "" && len(src.files) > 0 {
				if files, err := src.topologyFiles(); err != nil || len(files) > 1 {
					return usagef("--out saves one topology's plan: give one -f")
				}
			}
			return src.eachTopology(e, output, 1, func(e env, src *sourceFlags) error {
				in, err := src.load(ctx, e)
				if err != nil {
					return err
				}
				pl, basis, opt, err := livePlan(ctx, src, in, allowRollback, acceptDataLoss, allowRebuild, allowPrimaryRestart)
				if err != nil {
					return err
				}
				if err := writePlan(e, &pl, output); err != nil {
					return err
				}
				if out != "" {
					if err := savePlan(out, pl, basis, opt, in); err != nil {
						return err
					}
					fmt.Fprintf(e.stderr, "pgtopo: plan saved to %s; run it with: pgtopo apply %s\n", out, out)
				}
				return planExit(&pl, !pl.InSync(), detailed)
			})
		},
	}
	src.register(cmd, e)
	src.registerObserver(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text, json, yaml or markdown")
	completeOutput(cmd, formatText, formatJSON, formatYAML, "markdown")
	cmd.Flags().BoolVar(&detailed, "detailed-exitcode", true, "exit 4 when changes are pending")
	cmd.Flags().StringVar(&out, "out", "", "also save the plan, with what it relied on, for pgtopo apply PLAN.json")
	cmd.Flags().BoolVar(&allowRollback, "allow-rollback", false, "plan a revision older than the one recorded as applied")
	cmd.Flags().StringSliceVar(&allowRebuild, "allow-rebuild", nil, "plan the rebuild of standby CLUSTER if it cannot catch up, whatever the file's rebuild policy (saved with --out)")
	cmd.Flags().BoolVar(&allowPrimaryRestart, "allow-primary-restart", false, "plan a restart of the primary (a write outage) for settings that need one, whatever the file's spec.replication.primaryRestart (saved with --out)")
	cmd.Flags().StringVar(&acceptDataLoss, "accept-data-loss", "", "plan a failover with break-glass consent: the lost primary CLUSTER whose unreplicated writes may be lost (saved with --out)")
	cmd.Flags().StringVar(&base, "base", "", "pull-request mode: the revision merged into (e.g. origin/main)")
	cmd.Flags().StringVar(&head, "head", "HEAD", "pull-request mode: the revision being merged")
	cmd.Flags().BoolVar(&observeLive, "live", true, "pull-request mode: also observe the sites and show the live plan for the head")
	completeClusterFlags(cmd, "accept-data-loss", "allow-rebuild")
	return cmd
}

// livePlan observes the sites of in and plans; it also returns what the
// plan relied on and the options, for a saved plan.
func livePlan(ctx context.Context, src *sourceFlags, in *reconcile.Input, allowRollback bool, acceptDataLoss string, allowRebuild []string, allowPrimaryRestart bool) (plan.Plan, plan.Basis, plan.Options, error) {
	obs, err := src.observer(in.Desired)
	if err != nil {
		return plan.Plan{}, plan.Basis{}, plan.Options{}, err
	}
	snap := obs.ObserveListed(ctx, in.Desired)
	opt, err := in.PlanOptions(snap, allowRollback)
	if err != nil {
		return plan.Plan{}, plan.Basis{}, opt, err
	}
	opt.AcceptDataLoss, opt.AllowRebuild, opt.AllowPrimaryRestart = acceptDataLoss, allowRebuild, allowPrimaryRestart
	return planner.Compute(in.Desired, snap, opt), plan.BasisOf(snap), opt, nil
}

// savePlan writes a saved plan to path, for apply PLAN.json; a refused
// plan is not saved.
func savePlan(path string, pl plan.Plan, basis plan.Basis, opt plan.Options, in *reconcile.Input) error {
	if pl.Refused() {
		return fmt.Errorf("--out %s: a refused plan is not saved", path)
	}
	var b bytes.Buffer
	if err := plan.Save(&b, pl, basis, opt, in.Source); err != nil {
		return err
	}
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	return nil
}

func planExit(pl *plan.Plan, changes, detailed bool) error {
	switch {
	case pl != nil && pl.Refused():
		return exitCode(ExitError)
	case changes && detailed:
		return exitCode(ExitChanges)
	}
	return nil
}

type prFlags struct {
	base, head, output            string
	live, allowRollback, detailed bool
}

// pullRequest describes what merging head into base does to the topology,
// then plans the head against the live world.
func pullRequest(ctx context.Context, e env, src *sourceFlags, f prFlags) error {
	if src.repo == "" || len(src.files) > 0 {
		return usagef("--base needs --repo (the repository of the pull request, e.g. --repo .) and --path, not -f")
	}
	repo, err := src.openRepo(ctx, e)
	if err != nil {
		return err
	}
	v, err := schema.NewValidator()
	if err != nil {
		return err
	}
	baseCommit, err := repo.Resolve(f.base)
	if err != nil {
		return fmt.Errorf("--base: %w", err)
	}
	headCommit, err := repo.Resolve(f.head)
	if err != nil {
		return fmt.Errorf("--head: %w", err)
	}
	if gitsource.IsPattern(src.path) {
		return pullRequestFleet(ctx, e, src, f, repo, v, baseCommit, headCommit)
	}
	gs := reconcile.NewGitSource(repo, f.head, src.path, v)
	head, err := loadAt{gs, headCommit}.Load(ctx)
	var invalid *reconcile.InvalidError
	if errors.As(err, &invalid) {
		// The pull request's reviewers see why, in the comment too.
		reportFindings(e, invalid.Findings)
		fmt.Fprintf(e.stderr, "pgtopo: %s\n", printable.String(err.Error()))
		if werr := writeInvalidHead(e, f.output, src.path, headCommit.Hash, invalid.Findings); werr != nil {
			return werr
		}
		return exitCode(ExitError)
	}
	if err != nil {
		return err
	}
	reportFindings(e, head.Findings)
	pr := render.PullRequest{Base: baseCommit.Hash, Head: headCommit.Hash, Path: src.path}
	baseIn, err := gs.At(baseCommit)
	switch {
	case errors.Is(err, gitsource.ErrNoFile):
		pr.Intents = planner.Describe(nil, head.Desired)
	case err != nil:
		// The base is what is deployed; a base that no longer validates
		// (an older schema) should not block reviewing the head.
		fmt.Fprintf(e.stderr, "pgtopo: base %s: %v; describing the head alone\n", baseCommit.Short(), err)
		pr.Intents = planner.Describe(nil, head.Desired)
	default:
		pr.Intents = planner.Describe(baseIn.Desired, head.Desired)
	}
	if f.live {
		pl, _, _, err := livePlan(ctx, src, head, f.allowRollback, "", nil, false)
		if err != nil {
			return err
		}
		pr.Plan = &pl
	}
	if err := writePullRequest(e, f.output, &pr); err != nil {
		return err
	}
	changes := len(pr.Intents) > 0
	if pr.Plan != nil {
		changes = !pr.Plan.InSync()
	}
	return planExit(pr.Plan, changes, f.detailed)
}

// pullRequestFleet is pull-request mode over every file --path matches:
// what merging does per changed file, in one document, each file planned
// against the live world as alone; the exit status is the worst of theirs.
func pullRequestFleet(ctx context.Context, e env, src *sourceFlags, f prFlags, repo *gitsource.Repository, v *schema.Validator, baseCommit, headCommit gitsource.Commit) error {
	headFiles, err := repo.Match(headCommit, src.path)
	if err != nil {
		return err
	}
	baseFiles, err := repo.Match(baseCommit, src.path)
	if err != nil {
		return err
	}
	if len(headFiles) == 0 && len(baseFiles) == 0 {
		return fmt.Errorf("--path %s: no file matches at %s or %s", src.path, baseCommit.Short(), headCommit.Short())
	}
	fleet := render.FleetPullRequest{Base: baseCommit.Hash, Head: headCommit.Hash, Pattern: src.path}
	code := ExitOK
	for _, path := range slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(headFiles), baseFiles...)))) {
		if !slices.Contains(headFiles, path) {
			fleet.Removed = append(fleet.Removed, path)
			continue
		}
		head, err := repo.ReadFile(headCommit, path)
		if err != nil {
			return err
		}
		if base, err := repo.ReadFile(baseCommit, path); err == nil && bytes.Equal(base, head) {
			fleet.Unchanged = append(fleet.Unchanged, path)
			continue
		}
		gs := reconcile.NewGitSource(repo, f.head, path, v)
		headIn, err := gs.At(headCommit)
		var invalid *reconcile.InvalidError
		if errors.As(err, &invalid) {
			reportFindings(e, invalid.Findings)
			fleet.Invalid = append(fleet.Invalid, path)
			code = worse(code, ExitError)
			continue
		}
		if err != nil {
			return err
		}
		reportFindings(e, headIn.Findings)
		one := render.FleetFile{PullRequest: render.PullRequest{Base: baseCommit.Hash, Head: headCommit.Hash, Path: path}, Topology: headIn.Desired.Name}
		baseIn, err := gs.At(baseCommit)
		switch {
		case errors.Is(err, gitsource.ErrNoFile):
			one.Intents = planner.Describe(nil, headIn.Desired)
		case err != nil:
			fmt.Fprintf(e.stderr, "pgtopo: %s: base %s: %v; describing the head alone\n", path, baseCommit.Short(), err)
			one.Intents = planner.Describe(nil, headIn.Desired)
		default:
			one.Intents = planner.Describe(baseIn.Desired, headIn.Desired)
			if bp, hp := baseIn.Desired.Primary(), headIn.Desired.Primary(); bp.Name != hp.Name {
				one.FromSite, one.ToSite = bp.Site.Name, hp.Site.Name
			}
		}
		changes := len(one.Intents) > 0
		if f.live {
			pl, _, _, err := livePlan(ctx, src, headIn, f.allowRollback, "", nil, false)
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			one.Plan = &pl
			changes = !pl.InSync()
		}
		code = worse(code, codeOf(planExit(one.Plan, changes, f.detailed)))
		fleet.Changed = append(fleet.Changed, one)
	}
	if err := writePullRequest(e, f.output, &fleet); err != nil {
		return err
	}
	if code != ExitOK {
		return exitCode(code)
	}
	return nil
}

// pullRequestDoc is a pull request's words in each output format.
type pullRequestDoc interface {
	WriteJSON(io.Writer) error
	WriteMarkdown(io.Writer) error
	WriteText(io.Writer) error
}

func writePullRequest(e env, output string, pr pullRequestDoc) error {
	switch output {
	case formatJSON:
		return pr.WriteJSON(e.stdout)
	case formatYAML:
		return writeYAMLOf(e.stdout, pr.WriteJSON)
	case "markdown":
		return pr.WriteMarkdown(e.stdout)
	}
	return pr.WriteText(e.stdout)
}

// loadAt is a Source fixed at one commit.
type loadAt struct {
	src    *reconcile.GitSource
	commit gitsource.Commit
}

func (l loadAt) Load(context.Context) (*reconcile.Input, error) { return l.src.At(l.commit) }

func writePlan(e env, p *plan.Plan, output string) error {
	switch output {
	case formatJSON:
		return render.JSON(e.stdout, p)
	case formatYAML:
		return writeYAMLOf(e.stdout, func(w io.Writer) error { return render.JSON(w, p) })
	case "markdown":
		return render.Markdown(e.stdout, p)
	}
	return render.Text(e.stdout, p)
}

// InvalidHead is diff's document for a pull request whose topology does
// not validate (kind InvalidPullRequest): the findings, so a bot posts
// them rather than an empty comment.
type InvalidHead struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Headline   string          `json:"headline"`
	Head       string          `json:"head"`
	Path       string          `json:"path"`
	Findings   schema.Findings `json:"findings"`
}

func writeInvalidHead(e env, output, path, head string, fs schema.Findings) error {
	errs := 0
	for _, f := range fs {
		if f.Severity == schema.SeverityError {
			errs++
		}
	}
	headline := fmt.Sprintf("%s at %s does not validate: %d error(s); merging it would apply nothing", path, plan.ShortRevision(head), errs)
	switch output {
	case formatJSON, formatYAML:
		return writeDocument(e.stdout, output, InvalidHead{APIVersion: plan.PlanAPIVersion, Kind: "InvalidPullRequest", Headline: headline, Head: head, Path: path, Findings: fs})
	case "markdown":
		var b strings.Builder
		fmt.Fprintf(&b, "## pgtopo: %s\n\nFix these before merging:\n\n```text\n", printable.String(headline))
		for _, f := range fs {
			// In a code block nothing is markup; a backquote could end it.
			fmt.Fprintln(&b, strings.ReplaceAll(f.String(), "`", "'"))
		}
		b.WriteString("```\n")
		_, err := io.WriteString(e.stdout, b.String())
		return err
	}
	_, err := fmt.Fprintln(e.stdout, printable.String(headline))
	return err
}
