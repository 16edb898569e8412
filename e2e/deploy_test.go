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
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

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
	rbacFile         = "../examples/deploy/rbac.yaml"
	readOnlyRBACFile = "../examples/deploy/rbac-readonly.yaml"
	namespaceFile    = "../examples/deploy/namespace.yaml"
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

// identity is a ServiceAccount of the deploy examples set up in every site
// of a lab: what its RBAC file grants, and a kubeconfig of its tokens (the
// kubeconfig-Secret pattern of the deploy examples).
type identity struct {
	user       string // as the audit log names it
	granted    map[grant]bool
	kubeconfig string
}

// deployIdentity creates namespace.yaml and an RBAC file of the deploy
// examples in every site and mints a token of its ServiceAccount in each.
func (h *harness) deployIdentity(rbac, account string, sites ...string) identity {
	t := h.t
	ctx := context.Background()
	// The Namespace first, from its own file, as the examples say.
	objs := append(manifests(t, namespaceFile), manifests(t, rbac)...)
	id := identity{user: "system:serviceaccount:pgtopo-system:" + account, granted: map[grant]bool{}}
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
						id.granted[grant{g, res, v}] = true
					}
				}
			}
		}
	}
	cfg, err := clientcmd.LoadFromFile(lab.Paths{Dir: h.lab.Dir}.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, site := range sites {
		for _, o := range objs {
			gvr, ok := kindResources[o.GetKind()]
			if !ok {
				t.Fatalf("%s: kind %s: add it to kindResources", rbac, o.GetKind())
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
		tok, err := h.lab.Kube[site].CoreV1().ServiceAccounts("pgtopo-system").CreateToken(ctx, account,
			&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("site %s: token for %s: %v", site, account, err)
		}
		kctx := cfg.Contexts[lab.ContextName(site)]
		user := account + "@" + site
		cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: tok.Status.Token}
		kctx.AuthInfo = user
	}
	id.kubeconfig = filepath.Join(h.dir, account+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, id.kubeconfig); err != nil {
		t.Fatal(err)
	}
	return id
}

// run runs pgtopo as the identity.
func (id identity) run(h *harness, args ...string) run {
	return h.pgtopoEnv([]string{"KUBECONFIG=" + id.kubeconfig}, args...)
}

// audit reads what the audit logs say the identity called, by permission,
// and which of those calls RBAC denied.
func (id identity) audit(h *harness, sites ...string) (map[grant]int, map[grant][]string) {
	t := h.t
	used, denied := map[grant]int{}, map[grant][]string{}
	for _, site := range sites {
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
			if ev.User.Username != id.user || ev.ObjectRef == nil {
				continue
			}
			g := grant{ev.ObjectRef.APIGroup, ev.ObjectRef.Resource, ev.Verb}
			if ev.ResponseStatus.Code == 403 {
				denied[g] = append(denied[g], site+": "+ev.ObjectRef.Namespace+"/"+ev.ObjectRef.Name)
				continue
			}
			used[g]++
			if ev.Verb == "patch" && ev.ResponseStatus.Code == 201 {
				// A server-side apply that creates is also authorized as create.
				used[grant{g.group, g.resource, "create"}]++
			}
		}
	}
	if len(used) == 0 {
		t.Fatalf("the audit logs show no request of %s: is auditing on?", id.user)
	}
	return used, denied
}

// exactly fails unless the identity used every permission its RBAC file
// grants and nothing else, and RBAC denied it only what deniable allows.
func (id identity) exactly(h *harness, file string, deniable func(grant) bool, sites ...string) {
	t := h.t
	used, denied := id.audit(h, sites...)
	var refused, unused, ungranted []string
	for g, where := range denied {
		if !deniable(g) {
			refused = append(refused, g.String()+" "+strings.Join(where, ", "))
		}
	}
	for g := range id.granted {
		if used[g] == 0 {
			unused = append(unused, g.String())
		}
	}
	for g := range used {
		if !id.granted[g] {
			ungranted = append(ungranted, g.String())
		}
	}
	slices.Sort(refused)
	slices.Sort(unused)
	slices.Sort(ungranted)
	if len(refused) > 0 {
		t.Errorf("requests denied by RBAC (pgtopo needs more than %s grants):\n  %s", file, strings.Join(refused, "\n  "))
	}
	if len(unused) > 0 {
		t.Errorf("%s grants what pgtopo never called (not least privilege): %s", file, strings.Join(unused, ", "))
	}
	if len(ungranted) > 0 {
		t.Errorf("pgtopo called what %s does not grant: %s", file, strings.Join(ungranted, ", "))
	}
	t.Logf("%s requests by permission: %v; denied: %v", id.user, used, denied)
}

// TestDeployRBAC runs pgtopo on the lab as the ServiceAccounts of
// examples/deploy: the writing one (rbac.yaml) brings up, switches over,
// drills, plans and deletes a cluster the file drops (deletionPolicy: delete);
// the read-only one (rbac-readonly.yaml) runs diff, status and
// reconcile --observe-only, reads no Secret, and is refused for what it
// could not read in every output format. The kube-apiservers' audit logs
// must show that each used every permission granted and nothing else, so
// the RBAC is exactly what the code calls: a verb taken out of rbac.yaml
// is a denied request here.
func TestDeployRBAC(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "east", "west")
	ctx := context.Background()
	writer := h.deployIdentity(rbacFile, "pgtopo", "east", "west")
	reader := h.deployIdentity(readOnlyRBACFile, "pgtopo-reader", "east", "west")

	// A bootstrap secret of the wrong type, made by hand, which pgtopo must
	// replace: the one path that deletes a Secret.
	if _, err := h.lab.Kube["west"].CoreV1().Secrets("db").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "orders-bootstrap", Namespace: "db"},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{"note": []byte("made by hand")},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	east, west := h.topology("orders-east"), h.topology("orders-west")
	h.expect(writer.run(h, "diff", "-f", east), 4, "bring up with primary orders-east")
	h.expect(writer.run(h, "apply", "-f", east), 0, "Apply complete")
	h.expect(writer.run(h, "apply", "-f", west), 0, "Apply complete", "switchover orders-east → orders-west")
	h.expect(writer.run(h, "diff", "-f", west), 0, "No changes")
	h.expect(writer.run(h, "status", "-f", west), 0, "orders-west")
	// A drill, kept in the sites: status shows it.
	h.expect(writer.run(h, "drill", "switchover", "-f", west, "--hold", "0s"), 0, "Drill switchover of orders: passed")
	h.expect(writer.run(h, "status", "-f", west), 0, "last drill: switchover passed: orders-west → orders-east gap")

	// The read-only identity: what it could not read is a refusal that
	// names it, never a Secret taken for absent and planned as created.
	denied := `cannot observe orders-west: context lab-west: get Secret db/postgres.orders-west.credentials.postgresql.acid.zalan.do: secrets "postgres.orders-west.credentials.postgresql.acid.zalan.do" is forbidden: User "system:serviceaccount:pgtopo-system:pgtopo-reader" cannot get resource "secrets"`
	for _, format := range []string{"text", "json", "markdown"} {
		r := reader.run(h, "diff", "-f", west, "-o", format)
		want := denied
		if format == "json" {
			want = strings.ReplaceAll(denied, `"`, `\"`)
		}
		h.expect(r, 1, want)
		for _, planned := range []string{"bring up", "bootstrap-secret", "ensure-primary", "create-standby"} {
			if strings.Contains(r.stdout, planned) {
				t.Fatalf("diff -o %s as the reader plans %q from Secrets it could not read:\n%s", format, planned, r.stdout)
			}
		}
	}
	r := reader.run(h, "status", "-f", west)
	h.expect(r, 1, "NOT DR ready: cannot observe orders-east: context lab-east: get Secret")
	if !strings.Contains(r.stderr, "pgtopo: cannot observe orders-east: context lab-east: get Secret") {
		t.Fatalf("status as the reader does not say what it could not read:\n%s", r.stderr)
	}
	// As the observer login (the one Secret the reader may read), the
	// same identity sees the databases: a real plan, with what it did not
	// read said, and a DR verdict.
	observe := []string{"--observer-secret", lab.ObserverSecret}
	h.expect(reader.run(h, append([]string{"diff", "-f", west}, observe...)...), 0, "No changes",
		"bootstrap Secret orders-bootstrap not read (observed with an observer login")
	h.expect(reader.run(h, append([]string{"status", "-f", west}, observe...)...), 0, "DR ready: orders-east")
	h.expect(reader.run(h, append([]string{"diff", "-f", east, "-o", "markdown"}, observe...)...), 4, "switchover orders-west → orders-east")
	loop := h.startLoopEnv([]string{"KUBECONFIG=" + reader.kubeconfig}, append([]string{"-f", west, "--observe-only", "--interval", "1h"}, observe...)...)
	loop.waitFor(t, time.Minute, "an observe-only cycle in sync", 0, func(r logRecord) bool { return r.Result == "in-sync" })
	_ = loop.cmd.Process.Kill()

	// A cluster the file drops, under deletionPolicy: delete: the writer
	// deletes its object (rebuilds delete the same way).
	src, err := os.ReadFile(west)
	if err != nil {
		t.Fatal(err)
	}
	only := regexp.MustCompile(`(?s)    - name: orders-east\n.*?(    - name: orders-west)`).ReplaceAllString(string(src), "$1")
	only = strings.Replace(only, "  primary: orders-west", "  deletionPolicy: delete\n  primary: orders-west", 1)
	dropEast := filepath.Join(h.dir, "drop-east.yaml")
	if err := os.WriteFile(dropEast, []byte(only), 0o644); err != nil {
		t.Fatal(err)
	}
	h.expect(writer.run(h, "apply", "-f", dropEast), 0, "Apply complete", "delete-cluster")
	if _, err := h.lab.Dyn["east"].Resource(postgresqlGVR).Namespace("db").Get(ctx, "orders-east", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("orders-east's object after its deletion: %v", err)
	}

	writer.exactly(h, rbacFile, func(grant) bool { return false }, "east", "west")
	// Denied: the Secrets it may not read, and their list (a first
	// look's, which pgtopo then reads one by one).
	reader.exactly(h, readOnlyRBACFile, func(g grant) bool { return g == grant{"", "secrets", "get"} || g == grant{"", "secrets", "list"} }, "east", "west")
	h.noSecretsInOutput()
}
