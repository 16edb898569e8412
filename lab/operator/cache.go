package operator

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// objects is where a pass reads the Services, Secrets, ConfigMaps and pods
// it keeps: watch-fed caches, as a real operator's listers are. Asked of
// the API server on every pass instead, ten clusters a site made some 60
// GETs a second, each a quorum read of etcd: a third of two cores with
// the lab otherwise idle. An object the cache does not hold yet (just
// created, or the watch not synced) is read from the API server, so
// absence is never taken from a cache that may lag.
type objects struct {
	kube       kubernetes.Interface
	services   corelisters.ServiceLister
	secrets    corelisters.SecretLister
	configMaps corelisters.ConfigMapLister
	pods       corelisters.PodLister
	synced     []cache.InformerSynced
}

// startObjects starts the watches; they run until ctx ends.
func startObjects(ctx context.Context, kube kubernetes.Interface) *objects {
	f := informers.NewSharedInformerFactory(kube, 10*time.Minute)
	core := f.Core().V1()
	o := &objects{kube: kube,
		services: core.Services().Lister(), secrets: core.Secrets().Lister(),
		configMaps: core.ConfigMaps().Lister(), pods: core.Pods().Lister(),
		synced: []cache.InformerSynced{core.Services().Informer().HasSynced, core.Secrets().Informer().HasSynced,
			core.ConfigMaps().Informer().HasSynced, core.Pods().Informer().HasSynced},
	}
	f.Start(ctx.Done())
	return o
}

func (o *objects) ready() bool {
	if len(o.synced) == 0 {
		return false // not started: every read goes to the API server
	}
	for _, s := range o.synced {
		if !s() {
			return false
		}
	}
	return true
}

// Each getter returns a copy the caller may change.

func (o *objects) service(ctx context.Context, ns, name string) (*corev1.Service, error) {
	return readThrough(o.ready(), func() (*corev1.Service, error) { return o.services.Services(ns).Get(name) },
		func() (*corev1.Service, error) {
			return o.kube.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		})
}

func (o *objects) secret(ctx context.Context, ns, name string) (*corev1.Secret, error) {
	return readThrough(o.ready(), func() (*corev1.Secret, error) { return o.secrets.Secrets(ns).Get(name) },
		func() (*corev1.Secret, error) { return o.kube.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{}) })
}

func (o *objects) configMap(ctx context.Context, ns, name string) (*corev1.ConfigMap, error) {
	return readThrough(o.ready(), func() (*corev1.ConfigMap, error) { return o.configMaps.ConfigMaps(ns).Get(name) },
		func() (*corev1.ConfigMap, error) {
			return o.kube.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
		})
}

func (o *objects) pod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	return readThrough(o.ready(), func() (*corev1.Pod, error) { return o.pods.Pods(ns).Get(name) },
		func() (*corev1.Pod, error) { return o.kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}) })
}

// readThrough is a copy of the cached object when the cache is ready and
// holds it, else what the API server says (absence included).
func readThrough[T any, P interface {
	*T
	DeepCopy() *T
}](ready bool, cached, live func() (P, error)) (P, error) {
	if ready {
		if obj, err := cached(); err == nil {
			return obj.DeepCopy(), nil
		}
	}
	return live()
}
