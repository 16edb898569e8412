package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/pgtopo/pgtopo/lab"
)

const (
	rbacFile       = "../examples/deploy/rbac.yaml"
	namespaceFile  = "../examples/deploy/namespace.yaml"
	serviceAccount = "system:serviceaccount:pgtopo-system:pgtopo"
)

// manifests reads a multi-document YAML file into objects.
func manifests(t testing.TB, file string) []unstructured.Unstructured {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	var out []unstructured.Unstructured
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if len(u.Object) > 0 {
			out = append(out, u)
		}
	}
}

var kindResources = map[string]schema.GroupVersionResource{
	"Namespace":          {Version: "v1", Resource: "namespaces"},
	"ServiceAccount":     {Version: "v1", Resource: "serviceaccounts"},
	"ClusterRole":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
	"ClusterRoleBinding": {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
	"Role":               {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"},
	"RoleBinding":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"},
}

// grant is one (API group, resource, verb) an RBAC rule allows.
type grant struct{ group, resource, verb string }

func (g grant) String() string {
	group := g.group
	if group == "" {
		group = "core"
	}
	return g.verb + " " + g.resource + " (" + group + ")"
}

// TestDeployRBAC runs pgtopo on the lab as the ServiceAccount of
// examples/deploy/rbac.yaml, through a kubeconfig of ServiceAccount tokens
// (the kubeconfig-Secret pattern of the deploy examples): bring-up, a
// switchover, diff and status must work, and the kube-apiservers' audit
// logs must show that pgtopo used every permission granted and nothing
// else, so the RBAC is exactly what the code calls.
func TestDeployRBAC(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "east", "west")
	ctx := context.Background()
	// The Namespace first, from its own file, as the examples say.
	objs := append(manifests(t, namespaceFile), manifests(t, rbacFile)...)
	granted := map[grant]bool{}
	for _, o := range objs {
		if o.GetKind() != "ClusterRole" && o.GetKind() != "Role" {
			continue
		}
		var role rbacv1.ClusterRole
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &role); err != nil {
			t.Fatal(err)
		}
		for _, r := range role.Rules {
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					for _, v := range r.Verbs {
						granted[grant{g, res, v}] = true
					}
				}
			}
		}
	}

	// The deploy examples in every site, and a token of its ServiceAccount.
	cfg, err := clientcmd.LoadFromFile(lab.Paths{Dir: h.lab.Dir}.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, site := range []string{"east", "west"} {
		for _, o := range objs {
			gvr, ok := kindResources[o.GetKind()]
			if !ok {
				t.Fatalf("%s: kind %s: add it to kindResources", rbacFile, o.GetKind())
			}
			var err error
			if ns := o.GetNamespace(); ns != "" {
				_, err = h.lab.Dyn[site].Resource(gvr).Namespace(ns).Create(ctx, &o, metav1.CreateOptions{})
			} else {
				_, err = h.lab.Dyn[site].Resource(gvr).Create(ctx, &o, metav1.CreateOptions{})
			}
			if err != nil && !(apierrors.IsAlreadyExists(err) && o.GetKind() == "Namespace") {
				t.Fatalf("site %s: create %s %s: %v", site, o.GetKind(), o.GetName(), err)
			}
		}
		expiry := int64(3600)
		tok, err := h.lab.Kube[site].CoreV1().ServiceAccounts("pgtopo-system").CreateToken(ctx, "pgtopo",
			&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("site %s: token for pgtopo: %v", site, err)
		}
		kctx := cfg.Contexts[lab.ContextName(site)]
		user := "pgtopo@" + site
		cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: tok.Status.Token}
		kctx.AuthInfo = user
	}
	saKubeconfig := filepath.Join(h.dir, "pgtopo-sa.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, saKubeconfig); err != nil {
		t.Fatal(err)
	}

	// A bootstrap secret of the wrong type, made by hand, which pgtopo must
	// replace: the one path that deletes.
	if _, err := h.lab.Kube["west"].CoreV1().Secrets("db").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "orders-bootstrap", Namespace: "db"},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{"note": []byte("made by hand")},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	asSA := func(args ...string) run { return h.pgtopoEnv([]string{"KUBECONFIG=" + saKubeconfig}, args...) }
	east, west := h.topology("orders-east"), h.topology("orders-west")
	h.expect(asSA("diff", "-f", east), 4, "bring up with primary orders-east")
	h.expect(asSA("apply", "-f", east), 0, "Apply complete")
	h.expect(asSA("apply", "-f", west), 0, "Apply complete", "switchover orders-east → orders-west")
	h.expect(asSA("diff", "-f", west), 0, "No changes")
	h.expect(asSA("status", "-f", west), 0, "orders-west")

	// What the audit logs say the ServiceAccount called.
	used := map[grant]int{}
	var denied []string
	for _, site := range []string{"east", "west"} {
		data, err := os.ReadFile(lab.Paths{Dir: h.lab.Dir}.AuditLog(site))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var ev struct {
				Verb      string                    `json:"verb"`
				User      struct{ Username string } `json:"user"`
				ObjectRef *struct {
					Resource, APIGroup, Namespace, Name string
				} `json:"objectRef"`
				ResponseStatus struct{ Code int } `json:"responseStatus"`
			}
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Fatalf("audit log of %s: %v", site, err)
			}
			if ev.User.Username != serviceAccount || ev.ObjectRef == nil {
				continue
			}
			g := grant{ev.ObjectRef.APIGroup, ev.ObjectRef.Resource, ev.Verb}
			used[g]++
			if ev.Verb == "patch" && ev.ResponseStatus.Code == 201 {
				// A server-side apply that creates is also authorized as create.
				used[grant{g.group, g.resource, "create"}]++
			}
			if ev.ResponseStatus.Code == 403 {
				denied = append(denied, site+": "+g.String()+" "+ev.ObjectRef.Namespace+"/"+ev.ObjectRef.Name)
			}
		}
	}
	if len(used) == 0 {
		t.Fatal("the audit logs show no request of the ServiceAccount: is auditing on?")
	}
	if len(denied) > 0 {
		t.Errorf("requests denied by RBAC (pgtopo needs more than rbac.yaml grants):\n  %s", strings.Join(denied, "\n  "))
	}
	var unused, ungranted []string
	for g := range granted {
		if used[g] == 0 {
			unused = append(unused, g.String())
		}
	}
	for g := range used {
		if !granted[g] {
			ungranted = append(ungranted, g.String())
		}
	}
	slices.Sort(unused)
	slices.Sort(ungranted)
	if len(unused) > 0 {
		t.Errorf("rbac.yaml grants what pgtopo never called (not least privilege): %s", strings.Join(unused, ", "))
	}
	if len(ungranted) > 0 {
		t.Errorf("pgtopo called what rbac.yaml does not grant: %s", strings.Join(ungranted, ", "))
	}
	t.Logf("ServiceAccount requests by permission: %v", used)
	h.noSecretsInOutput()
}
