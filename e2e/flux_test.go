package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/pgtopo/pgtopo/lab/labtest"
)

// built is what kustomize renders for a deploy example.
type built struct {
	ns  *corev1.Namespace
	cm  *corev1.ConfigMap
	job *batchv1.Job
}

// kustomize renders dir as Flux's kustomize-controller and Argo CD do,
// with kustomize's own Go module (its default load restrictor: no file
// outside dir).
func kustomize(t *testing.T, dir string) built {
	t.Helper()
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var b built
	for _, r := range res.Resources() {
		m, err := r.Map()
		if err != nil {
			t.Fatal(err)
		}
		var into any
		switch r.GetKind() {
		case "Namespace":
			b.ns = &corev1.Namespace{}
			into = b.ns
		case "ConfigMap":
			b.cm = &corev1.ConfigMap{}
			into = b.cm
		case "Job":
			b.job = &batchv1.Job{}
			into = b.job
		default:
			t.Fatalf("%s renders an unexpected %s", dir, r.GetKind())
		}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(m, into); err != nil {
			t.Fatal(err)
		}
	}
	if b.cm == nil || b.job == nil {
		t.Fatalf("%s renders no ConfigMap or no Job", dir)
	}
	return b
}

// copyDir copies a deploy example to a work tree of the test's, as a
// repository at some revision would hold it.
func copyDir(t *testing.T, from string) string {
	t.Helper()
	to := filepath.Join(t.TempDir(), filepath.Base(from))
	if err := os.MkdirAll(to, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return to
}

// runJob runs the Job's container as its pod would: the generated
// ConfigMap's files at the volume's mount path (rewritten under a
// directory of the test's), the lab's kubeconfig.
func (h *harness) runJob(t *testing.T, b built) run {
	t.Helper()
	c := b.job.Spec.Template.Spec.Containers[0]
	mounts := map[string]string{}
	for _, v := range b.job.Spec.Template.Spec.Volumes {
		if v.ConfigMap == nil {
			continue
		}
		if v.ConfigMap.Name != b.cm.Name {
			t.Fatalf("the Job mounts ConfigMap %s, kustomize generated %s", v.ConfigMap.Name, b.cm.Name)
		}
		for _, m := range c.VolumeMounts {
			if m.Name == v.Name {
				mounts[m.MountPath] = filepath.Join(t.TempDir(), "mnt")
			}
		}
	}
	if len(mounts) != 1 {
		t.Fatalf("want the topology ConfigMap mounted once, got %v", mounts)
	}
	args := append([]string(nil), c.Args...)
	for at, dir := range mounts {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, data := range b.cm.Data {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		for i, a := range args {
			args[i] = strings.Replace(a, at, dir, 1)
		}
	}
	return h.pgtopo(args...)
}

// TestFluxJob is the Flux path on the lab: the example renders (no file
// outside its directory), its Job applies the topology of the revision
// rendered, a change to the topology makes a Job the API server will not
// update in place (so Flux's force: true recreates it), and the recreated
// Job applies the change: here, a switchover. The Argo CD example renders
// the same way, its ConfigMap a PreSync hook before the Job.
func TestFluxJob(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "east", "west")
	ctx := context.Background()
	repo := copyDir(t, "../examples/deploy/flux/pgtopo")
	first := kustomize(t, repo)
	if first.ns == nil || first.ns.Name != "pgtopo-system" || !strings.HasPrefix(first.cm.Name, "pgtopo-topology-") {
		t.Fatalf("rendered: namespace %v, ConfigMap %q", first.ns, first.cm.Name)
	}

	// What Flux applies, on the lab's east site: Namespace, ConfigMap, Job.
	kc := h.lab.Kube["east"]
	create := func(b built) error {
		if _, err := kc.CoreV1().Namespaces().Create(ctx, b.ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
		if _, err := kc.CoreV1().ConfigMaps(b.cm.Namespace).Create(ctx, b.cm, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
		_, err := kc.BatchV1().Jobs(b.job.Namespace).Create(ctx, b.job, metav1.CreateOptions{})
		return err
	}
	if err := create(first); err != nil {
		t.Fatal(err)
	}
	h.expect(h.runJob(t, first), 0, "Apply complete", "bring up with primary orders-east")

	// The same revision renders the same Job: nothing to recreate.
	if again := kustomize(t, repo); again.cm.Name != first.cm.Name {
		t.Fatalf("the same topology renders another ConfigMap: %s, then %s", first.cm.Name, again.cm.Name)
	}

	// A merged change to the topology: a new ConfigMap, and a Job whose
	// pod template differs, which the API server refuses to update.
	topo := filepath.Join(repo, "topology.yaml")
	b, err := os.ReadFile(topo)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(topo, []byte(strings.Replace(string(b), "primary: orders-east", "primary: orders-west", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	second := kustomize(t, repo)
	if second.cm.Name == first.cm.Name {
		t.Fatal("a changed topology renders the same ConfigMap name: Flux would not recreate the Job")
	}
	live, err := kc.BatchV1().Jobs(first.job.Namespace).Get(ctx, first.job.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	live.Spec.Template = second.job.Spec.Template
	if _, err := kc.BatchV1().Jobs(live.Namespace).Update(ctx, live, metav1.UpdateOptions{}); !apierrors.IsInvalid(err) {
		t.Fatalf("updating the Job's template in place: %v, want the API server's refusal (field is immutable)", err)
	}
	// force: true deletes and creates it.
	bg := metav1.DeletePropagationBackground
	if err := kc.BatchV1().Jobs(live.Namespace).Delete(ctx, live.Name, metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil {
		t.Fatal(err)
	}
	labtest.Eventually(t, 30*time.Second, "the old Job gone", func() error {
		_, err := kc.BatchV1().Jobs(live.Namespace).Get(ctx, live.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return errors.New("still there")
	})
	if err := create(second); err != nil {
		t.Fatal(err)
	}
	h.expect(h.runJob(t, second), 0, "Apply complete", "switchover orders-east → orders-west")
	h.expect(h.pgtopo("diff", "-f", h.topology("orders-west")), 0, "No changes.")

	// Argo CD: the same ConfigMap, as a PreSync hook before the Job.
	argo := kustomize(t, copyDir(t, "../examples/deploy/argocd"))
	wave := func(a map[string]string) int { n, _ := strconv.Atoi(a["argocd.argoproj.io/sync-wave"]); return n }
	if argo.cm.Annotations["argocd.argoproj.io/hook"] != "PreSync" || argo.job.Annotations["argocd.argoproj.io/hook"] != "PreSync" || wave(argo.cm.Annotations) >= wave(argo.job.Annotations) {
		t.Fatalf("Argo CD: ConfigMap hook %v, Job %v: the ConfigMap must be a PreSync hook in an earlier wave", argo.cm.Annotations, argo.job.Annotations)
	}
	if args := strings.Join(argo.job.Spec.Template.Spec.Containers[0].Args, " "); strings.Contains(args, "--ref") || !strings.Contains(args, "-f /etc/pgtopo/topology/topology.yaml") {
		t.Fatalf("Argo CD's Job must apply the synced revision's file: %s", args)
	}
}
