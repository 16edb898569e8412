package cli

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/rhysd/actionlint"
	"go.yaml.in/yaml/v3"
	sigsyaml "sigs.k8s.io/yaml"
)

const deployDir = "../examples/deploy"

// deployFiles lists every file of examples/deploy.
func deployFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(deployDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, p)
		}
		return err
	})
	if err != nil || len(files) == 0 {
		t.Fatalf("examples/deploy: %v (%d files)", err, len(files))
	}
	return files
}

// TestDeployExamplesSayWhatTheyAreFor: each file opens with a comment of at
// least two lines saying what it is for.
func TestDeployExamplesSayWhatTheyAreFor(t *testing.T) {
	for _, f := range deployFiles(t) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(data), "\n")
		n := 0
		for n < len(lines) && strings.HasPrefix(lines[n], "#") {
			n++
		}
		if n < 2 {
			t.Errorf("%s: starts with %d comment line(s); say in a header what the file is for", f, n)
		}
	}
}

// pgtopoCommands finds the pgtopo command lines in the deploy examples:
// container args of images named pgtopo, and `pgtopo ...` in workflow steps.
func pgtopoCommands(t *testing.T) map[string][][]string {
	t.Helper()
	out := map[string][][]string{}
	inRun := regexp.MustCompile(`pgtopo ((?:diff|apply|reconcile|status|validate)[^>|\n]*)`)
	for _, f := range deployFiles(t) {
		if !strings.HasSuffix(f, ".yaml") {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for {
			var doc any
			if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			walk(doc, func(m map[string]any) {
				if img, _ := m["image"].(string); strings.Contains(img, "pgtopo") {
					var args []string
					for _, a := range m["args"].([]any) {
						args = append(args, a.(string))
					}
					out[f] = append(out[f], args)
				}
				if run, _ := m["run"].(string); run != "" {
					for _, match := range inRun.FindAllStringSubmatch(run, -1) {
						var args []string
						for _, a := range strings.Fields(match[1]) {
							args = append(args, strings.Trim(a, `"'`))
						}
						out[f] = append(out[f], args)
					}
				}
			})
		}
	}
	return out
}

func walk(v any, visit func(map[string]any)) {
	switch x := v.(type) {
	case map[string]any:
		visit(x)
		for _, c := range x {
			walk(c, visit)
		}
	case []any:
		for _, c := range x {
			walk(c, visit)
		}
	}
}

// TestDeployExamplesCommandLines: every pgtopo command line in the deploy
// examples names a real command with flags it accepts.
func TestDeployExamplesCommandLines(t *testing.T) {
	cmds := pgtopoCommands(t)
	want := map[string]int{
		"../examples/deploy/argocd/presync-job.yaml":   1,
		"../examples/deploy/flux/pgtopo/job.yaml":      1,
		"../examples/deploy/github/pgtopo.yaml":        2,
		"../examples/deploy/reconcile-deployment.yaml": 1,
		"../examples/deploy/agent-deployment.yaml":     1,
		"../examples/deploy/drill-cronjob.yaml":        2,
	}
	for f, n := range want {
		if len(cmds[f]) != n {
			t.Errorf("%s: found %d pgtopo command line(s), want %d: %q", f, len(cmds[f]), n, cmds[f])
		}
	}
	for f, lines := range cmds {
		for _, args := range lines {
			var stdout, stderr bytes.Buffer
			code := Run(append(args, "--help"), env{stdout: &stdout, stderr: &stderr, getenv: func(string) string { return "" }})
			if code != 0 || !strings.Contains(stdout.String(), "Usage:") {
				t.Errorf("%s: pgtopo %s: exit %d: %s", f, strings.Join(args, " "), code, stderr.String())
			}
		}
	}
}

// TestDockerfileBuildsAStaticBinary runs the Dockerfile's build command and
// checks that the binary needs no dynamic loader, so it runs on distroless
// static.
func TestDockerfileBuildsAStaticBinary(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(deployDir, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	// Every base image is pinned by digest: a tag alone moves under a rebuild.
	froms := regexp.MustCompile(`(?m)^FROM (\S+)`).FindAllStringSubmatch(string(data), -1)
	if len(froms) == 0 {
		t.Fatal("Dockerfile: no FROM line")
	}
	for _, f := range froms {
		if !regexp.MustCompile(`^[^@\s]+:[^@\s]+@sha256:[0-9a-f]{64}$`).MatchString(f[1]) {
			t.Errorf("Dockerfile: FROM %s is not pinned by digest (write image:tag@sha256:<64 hex digits>)", f[1])
		}
	}
	m := regexp.MustCompile(`(?m)^RUN (CGO_ENABLED=0 go build .*) -o /out/pgtopo \.$`).FindStringSubmatch(string(data))
	if m == nil {
		t.Fatal("Dockerfile: no `RUN CGO_ENABLED=0 go build ... -o /out/pgtopo .` line")
	}
	out := filepath.Join(t.TempDir(), "pgtopo")
	cmd := exec.Command("sh", "-c", m[1]+" -o "+out+" .")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "VERSION=v9.9.9", "REVISION=0123456789abcdef")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", m[1], err, b)
	}
	bin, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer bin.Close()
	for _, p := range bin.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("the binary asks for a dynamic loader: it would not start on distroless static")
		}
	}
	if libs, _ := bin.ImportedLibraries(); len(libs) > 0 {
		t.Fatalf("the binary links shared libraries: %v", libs)
	}
	st, _ := os.Stat(out)
	t.Logf("static binary: %.1f MiB", float64(st.Size())/(1<<20))
	if v, err := exec.Command(out, "version").Output(); err != nil || string(v) != "pgtopo v9.9.9 (revision 0123456789abcdef)\n" {
		t.Fatalf("the image's binary says %q (%v), want its version and revision build args", v, err)
	}
	ignore, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{".git", "bin"} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(want) + `$`).Match(ignore) {
			t.Errorf(".dockerignore does not keep %s out of the build context", want)
		}
	}
}

// TestDeployKustomizationsResolve: the resources a kustomization lists exist.
func TestDeployKustomizationsResolve(t *testing.T) {
	n := 0
	for _, f := range deployFiles(t) {
		if filepath.Base(f) != "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var k struct{ Resources []string }
		if err := yaml.Unmarshal(data, &k); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, r := range k.Resources {
			n++
			if _, err := os.Stat(filepath.Join(filepath.Dir(f), r)); err != nil {
				t.Errorf("%s: resource %s: %v", f, r, err)
			}
		}
	}
	if n == 0 {
		t.Fatal("no kustomization resources found")
	}
}

// workflow is the GitHub Actions example.
const workflow = deployDir + "/github/pgtopo.yaml"

// githubWorkflow is what the workflow tests read of the example.
type githubWorkflow struct {
	Concurrency any `json:"concurrency"`
	Jobs        map[string]struct {
		Environment string `json:"environment"`
		Concurrency struct {
			Group  string `json:"group"`
			Cancel bool   `json:"cancel-in-progress"`
		} `json:"concurrency"`
		Steps []struct {
			Run string            `json:"run"`
			Env map[string]string `json:"env"`
		} `json:"steps"`
	} `json:"jobs"`
}

func readWorkflow(t *testing.T) githubWorkflow {
	t.Helper()
	b, err := os.ReadFile(workflow)
	if err != nil {
		t.Fatal(err)
	}
	var wf githubWorkflow
	if err := sigsyaml.Unmarshal(b, &wf); err != nil {
		t.Fatal(err)
	}
	return wf
}

// actionlint finds nothing in the workflow (shellcheck is not run: it is
// not a Go module; the self-hosted runner's label is declared).
func TestWorkflowLints(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "actionlint.yaml")
	if err := os.WriteFile(cfg, []byte("self-hosted-runner:\n  labels: [db-network]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := actionlint.NewLinter(io.Discard, &actionlint.LinterOptions{ConfigFile: cfg})
	if err != nil {
		t.Fatal(err)
	}
	errs, err := l.LintFile(workflow, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range errs {
		t.Errorf("%s:%d:%d: %s [%s]", workflow, e.Line, e.Column, e.Message, e.Kind)
	}
}

// Plans and applies never share a concurrency group: a new pull request
// run cancels only its own older plan, and an apply is never cancelled.
// The plan names the pull request's head, not the merge commit.
func TestWorkflowConcurrencyAndRevisions(t *testing.T) {
	wf := readWorkflow(t)
	if wf.Concurrency != nil {
		t.Error("a workflow-level concurrency group puts plans and applies in one queue")
	}
	plan, apply := wf.Jobs["plan"].Concurrency, wf.Jobs["apply"].Concurrency
	if !plan.Cancel || !strings.Contains(plan.Group, "github.event.pull_request.number") {
		t.Errorf("plan concurrency %+v: want one group per pull request, cancelled by a newer run", plan)
	}
	if apply.Cancel || apply.Group == "" || apply.Group == plan.Group {
		t.Errorf("apply concurrency %+v: want its own group, never cancelled", apply)
	}
	var head bool
	for _, s := range wf.Jobs["plan"].Steps {
		if strings.Contains(s.Run, "pgtopo diff") {
			head = strings.Contains(s.Run, `--head "$HEAD_SHA"`) && s.Env["HEAD_SHA"] == "${{ github.event.pull_request.head.sha }}"
		}
	}
	if !head {
		t.Error("the plan step must diff the pull request's head commit, not HEAD (the merge commit)")
	}
}

// The plan step passes when pgtopo diff says "in sync" (0) or "changes
// pending" (4) and fails the check on a refusal (1) or a wrong command
// line (2). Its script runs in bash against a pgtopo that only exits.
func TestWorkflowPlanStepExitCodes(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Fatal("bash is needed to run the workflow's step: install bash")
	}
	wf := readWorkflow(t)
	var script string
	for _, s := range wf.Jobs["plan"].Steps {
		if strings.Contains(s.Run, "pgtopo diff") {
			script = s.Run
		}
	}
	if script == "" {
		t.Fatal("the plan job has no step that runs pgtopo diff")
	}
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "pgtopo"), []byte("#!/bin/sh\nexit \"$PGTOPO_EXIT\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		code int
		pass bool
	}{{ExitOK, true}, {ExitChanges, true}, {ExitError, false}, {ExitUsage, false}, {ExitSplitBrain, false}} {
		// GitHub runs a step's script with bash -e.
		cmd := exec.Command("bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script)
		cmd.Dir = t.TempDir()
		cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"), fmt.Sprintf("PGTOPO_EXIT=%d", tc.code))
		err := cmd.Run()
		if passed := err == nil; passed != tc.pass {
			t.Errorf("pgtopo diff exit %d: step passed=%v, want %v (%v)", tc.code, passed, tc.pass, err)
		}
	}
}

// The GitOps Jobs retry a refusal with backoff without a change to the file
// and fail at once on a wrong command line; Argo CD's hook ConfigMap keeps
// one name, replaced at every sync, so none is left behind per revision.
func TestDeployJobsRetryAndClean(t *testing.T) {
	for _, f := range []string{deployDir + "/flux/pgtopo/job.yaml", deployDir + "/argocd/presync-job.yaml"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var job struct {
			Spec struct {
				BackoffLimit     int `json:"backoffLimit"`
				PodFailurePolicy struct {
					Rules []struct {
						Action      string `json:"action"`
						OnExitCodes struct {
							ContainerName, Operator string
							Values                  []int
						} `json:"onExitCodes"`
					} `json:"rules"`
				} `json:"podFailurePolicy"`
			} `json:"spec"`
		}
		if err := sigsyaml.Unmarshal(data, &job); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if job.Spec.BackoffLimit < 3 {
			t.Errorf("%s: backoffLimit %d: a transient refusal would end the run for good", f, job.Spec.BackoffLimit)
		}
		failsOnUsage := false
		for _, r := range job.Spec.PodFailurePolicy.Rules {
			c := r.OnExitCodes
			failsOnUsage = failsOnUsage || r.Action == "FailJob" && c.ContainerName == "pgtopo" && c.Operator == "In" && slices.Equal(c.Values, []int{2})
		}
		if !failsOnUsage {
			t.Errorf("%s: a wrong command line (exit 2) must fail the Job at once, not be retried", f)
		}
	}
	data, err := os.ReadFile(deployDir + "/argocd/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		ConfigMapGenerator []struct {
			Options struct {
				DisableNameSuffixHash bool              `json:"disableNameSuffixHash"`
				Annotations           map[string]string `json:"annotations"`
			} `json:"options"`
		} `json:"configMapGenerator"`
	}
	if err := sigsyaml.Unmarshal(data, &k); err != nil {
		t.Fatal(err)
	}
	if len(k.ConfigMapGenerator) != 1 || !k.ConfigMapGenerator[0].Options.DisableNameSuffixHash ||
		!strings.Contains(k.ConfigMapGenerator[0].Options.Annotations["argocd.argoproj.io/hook-delete-policy"], "BeforeHookCreation") {
		t.Fatalf("Argo CD's hook ConfigMap must keep one name and be deleted before its next creation: %+v", k.ConfigMapGenerator)
	}
}

// The examples install a release, never "latest": a Job that runs twice
// runs the same pgtopo. The image says what it is (OCI labels).
func TestDeployExamplesPinTheirVersion(t *testing.T) {
	latest := regexp.MustCompile(`(?m)^[^#]*(:latest\b|@latest\b|_VERSION: latest\b)`)
	for _, f := range deployFiles(t) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if m := latest.Find(data); m != nil {
			t.Errorf("%s: %q: pin a release", f, m)
		}
	}
	data, err := os.ReadFile(deployDir + "/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, label := range []string{"org.opencontainers.image.source", "org.opencontainers.image.version", "org.opencontainers.image.revision", "org.opencontainers.image.licenses"} {
		if !strings.Contains(string(data), label+"=") {
			t.Errorf("Dockerfile: no %s label", label)
		}
	}
}

// The plan job, which a pull request can change, holds the read-only
// identity alone and probes as the observer login; the writing kubeconfig
// reaches only the apply job, through the production environment.
func TestWorkflowPlanJobHoldsNothingThatWrites(t *testing.T) {
	wf := readWorkflow(t)
	secretsOf := func(job string) []string {
		var out []string
		for _, s := range wf.Jobs[job].Steps {
			for _, v := range s.Env {
				for _, m := range regexp.MustCompile(`secrets\.([A-Z_]+)`).FindAllStringSubmatch(v, -1) {
					out = append(out, m[1])
				}
			}
			if strings.Contains(s.Run, "secrets.") {
				t.Errorf("job %s: a secret in a script, not in env: %q", job, s.Run)
			}
		}
		return out
	}
	if got := secretsOf("plan"); !slices.Equal(got, []string{"PGTOPO_READONLY_KUBECONFIG"}) {
		t.Errorf("the plan job holds secrets %v, want the read-only kubeconfig alone", got)
	}
	if got := secretsOf("apply"); !slices.Equal(got, []string{"PGTOPO_KUBECONFIG"}) || wf.Jobs["apply"].Environment != "production" {
		t.Errorf("the apply job holds %v in environment %q: want PGTOPO_KUBECONFIG, an environment secret of production", got, wf.Jobs["apply"].Environment)
	}
	var observer bool
	for _, s := range wf.Jobs["plan"].Steps {
		if strings.Contains(s.Run, "pgtopo diff") {
			observer = strings.Contains(s.Run, "--observer-secret pgtopo-observer")
		}
	}
	if !observer {
		t.Error("the plan job's pgtopo diff must probe as the observer login (--observer-secret pgtopo-observer): the reader may read no other Secret")
	}
}
