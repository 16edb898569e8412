// Package kube connects to the sites: kubeconfig loading as kubectl does it
// (--kubeconfig, then KUBECONFIG, then ~/.kube/config), one context per
// site, and "in-cluster" for the pod's own service account.
package kube

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// InCluster is the context name that selects the pod's service account.
const InCluster = "in-cluster"

// Loader builds clients for kubeconfig contexts.
type Loader struct {
	// Kubeconfig is an explicit file (the --kubeconfig flag); empty follows
	// KUBECONFIG and the default location.
	Kubeconfig string
	// RequestTimeout bounds each API request; 0 is DefaultRequestTimeout.
	RequestTimeout time.Duration
}

// DefaultRequestTimeout bounds each API request. A request on a
// connection whose peer was cut off mid-way gets no answer and no error:
// unbounded, it waits for HTTP/2's health check (45 s in client-go), and a
// Lease taken in another site meanwhile stays held (the nemesis found an
// agent's lock step holding one site's Lease for a minute while it waited
// on a site cut off, and the failover it blocked). No request pgtopo makes
// (a read, a write, a list of one namespace) needs longer; none is a watch.
const DefaultRequestTimeout = 10 * time.Second

// RESTConfig returns the client configuration of one context.
func (l Loader) RESTConfig(contextName string) (*rest.Config, error) {
	if contextName == InCluster {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("context in-cluster: %w", err)
		}
		return cfg, nil
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = l.Kubeconfig
	raw, err := rules.Load()
	if err != nil {
		return nil, fmt.Errorf("context %s: kubeconfig: %w", contextName, err)
	}
	if _, ok := raw.Contexts[contextName]; !ok {
		return nil, missingContext(contextName, raw.Contexts, rules)
	}
	cfg, err := clientcmd.NewNonInteractiveClientConfig(*raw, contextName, &clientcmd.ConfigOverrides{}, rules).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("context %s: %w", contextName, err)
	}
	return cfg, nil
}

// missingContext says why a context is not there: no kubeconfig at all,
// or one without it, listing what it has.
func missingContext[T any](name string, contexts map[string]T, rules *clientcmd.ClientConfigLoadingRules) error {
	where := strings.Join(rules.GetLoadingPrecedence(), ", ")
	if rules.ExplicitPath != "" {
		where = rules.ExplicitPath
	}
	if len(contexts) == 0 {
		return fmt.Errorf("context %s: no kubeconfig with contexts found (looked at %s); point at one with --kubeconfig FILE or KUBECONFIG, or use context in-cluster inside a pod", name, where)
	}
	return fmt.Errorf("context %s: not in the kubeconfig (%s), which has %s", name, where, strings.Join(slices.Sorted(maps.Keys(contexts)), ", "))
}

// Site is one site's API access: typed clients for the core objects and a
// dynamic client for the operator's CRs.
type Site struct {
	Typed   kubernetes.Interface
	Dynamic dynamic.Interface
}

// Answers asks the site's API server whether it is ready (GET /readyz):
// one small request, to tell a site that is back from one still away.
func (s *Site) Answers(ctx context.Context) error {
	return s.Typed.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Error()
}

// Connect returns the clients of one context.
func (l Loader) Connect(contextName string) (*Site, error) {
	cfg, err := l.RESTConfig(contextName)
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = 50, 100
	cfg.Timeout = cmp.Or(l.RequestTimeout, DefaultRequestTimeout)
	typed, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("context %s: %w", contextName, err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("context %s: %w", contextName, err)
	}
	return &Site{Typed: typed, Dynamic: dyn}, nil
}

// GetObject reads one custom resource.
func (s *Site) GetObject(ctx context.Context, gvr schema.GroupVersionResource, ns, name string) (*unstructured.Unstructured, error) {
	return s.Dynamic.Resource(gvr).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
}

// ListObjects lists custom resources in a namespace matching a label selector.
func (s *Site) ListObjects(ctx context.Context, gvr schema.GroupVersionResource, ns, selector string) ([]unstructured.Unstructured, error) {
	l, err := s.Dynamic.Resource(gvr).Namespace(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

// GetService reads one Service.
func (s *Site) GetService(ctx context.Context, ns, name string) (*corev1.Service, error) {
	return s.Typed.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
}

// ListNodes lists the site's Nodes.
func (s *Site) ListNodes(ctx context.Context) ([]corev1.Node, error) {
	l, err := s.Typed.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

// GetSecret reads one Secret.
func (s *Site) GetSecret(ctx context.Context, ns, name string) (*corev1.Secret, error) {
	return s.Typed.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
}

// GetConfigMap reads one ConfigMap.
func (s *Site) GetConfigMap(ctx context.Context, ns, name string) (*corev1.ConfigMap, error) {
	return s.Typed.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
}

// GetLease reads one Lease.
func (s *Site) GetLease(ctx context.Context, ns, name string) (*coordinationv1.Lease, error) {
	return s.Typed.CoordinationV1().Leases(ns).Get(ctx, name, metav1.GetOptions{})
}

// ListServices lists a namespace's Services.
func (s *Site) ListServices(ctx context.Context, ns string) ([]corev1.Service, error) {
	l, err := s.Typed.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

// ListSecrets lists a namespace's Secrets.
func (s *Site) ListSecrets(ctx context.Context, ns string) ([]corev1.Secret, error) {
	l, err := s.Typed.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

// ListConfigMaps lists a namespace's ConfigMaps.
func (s *Site) ListConfigMaps(ctx context.Context, ns string) ([]corev1.ConfigMap, error) {
	l, err := s.Typed.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

// ListLeases lists a namespace's Leases.
func (s *Site) ListLeases(ctx context.Context, ns string) ([]coordinationv1.Lease, error) {
	l, err := s.Typed.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

// ApplyObject server-side-applies a custom resource as the given field
// manager, taking over the fields it sends (from a hand edit, say) and no
// others; fields the manager owned and the request leaves out are removed.
func (s *Site) ApplyObject(ctx context.Context, gvr schema.GroupVersionResource, manager string, u *unstructured.Unstructured) error {
	data, err := json.Marshal(u.Object)
	if err != nil {
		return err
	}
	force := true
	_, err = s.Dynamic.Resource(gvr).Namespace(u.GetNamespace()).Patch(ctx, u.GetName(), types.ApplyPatchType, data,
		metav1.PatchOptions{FieldManager: manager, Force: &force})
	return err
}

// DeleteObject removes a custom resource; one already gone is no error.
func (s *Site) DeleteObject(ctx context.Context, gvr schema.GroupVersionResource, ns, name string) error {
	err := s.Dynamic.Resource(gvr).Namespace(ns).Delete(ctx, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// ApplySecret server-side-applies a Secret as field manager pgtopo.
func (s *Site) ApplySecret(ctx context.Context, sec *corev1.Secret) error {
	sec.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"}
	data, err := json.Marshal(sec)
	if err != nil {
		return err
	}
	force := true
	_, err = s.Typed.CoreV1().Secrets(sec.Namespace).Patch(ctx, sec.Name, types.ApplyPatchType, data,
		metav1.PatchOptions{FieldManager: FieldManager, Force: &force})
	return err
}

// DeleteSecret removes a Secret (to change its immutable type).
func (s *Site) DeleteSecret(ctx context.Context, ns, name string) error {
	return s.Typed.CoreV1().Secrets(ns).Delete(ctx, name, metav1.DeleteOptions{})
}

// CreateLease creates a Lease.
func (s *Site) CreateLease(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	return s.Typed.CoordinationV1().Leases(l.Namespace).Create(ctx, l, metav1.CreateOptions{FieldManager: FieldManager})
}

// UpdateLease updates a Lease; the resourceVersion makes it a compare-and-swap.
func (s *Site) UpdateLease(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	return s.Typed.CoordinationV1().Leases(l.Namespace).Update(ctx, l, metav1.UpdateOptions{FieldManager: FieldManager})
}

// FieldManager is pgtopo's server-side apply identity for what it owns in
// objects; MarksFieldManager owns its marks (annotations), written apart.
const (
	FieldManager      = "pgtopo"
	MarksFieldManager = "pgtopo-marks"
)
