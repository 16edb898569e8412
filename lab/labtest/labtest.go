// Package labtest starts labs for tests: one call brings a lab up in a fresh
// directory and registers its teardown. A missing dependency fails the test
// with the command that installs it; nothing is skipped.
package labtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/operator"
)

// RepoRoot finds the repository root from the test's working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if _, err := os.Stat(filepath.Join(dir, "lab")); err == nil {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("repository root not found above the working directory")
		}
		dir = parent
	}
}

// Lab is a running lab with clients for each site.
type Lab struct {
	*lab.State
	Kube map[string]kubernetes.Interface
	Dyn  map[string]dynamic.Interface
}

// Start brings up a lab with the given sites and stops it when the test
// ends (keeping its directory when the test failed, for the logs).
func Start(t testing.TB, sites ...string) *Lab {
	t.Helper()
	return StartConfig(t, lab.Config{Sites: sites})
}

// StartConfig brings up a lab as cfg says (its Dir and BinDir are the
// test's), e.g. with Patroni sites outside Kubernetes.
func StartConfig(t testing.TB, cfg lab.Config) *Lab {
	t.Helper()
	sites := cfg.Sites
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(root, "bin")
	if err := lab.Preflight(bin); err != nil {
		t.Fatalf("%v\nthe lab tests need these; `make deps lab-bin build` installs them all", err)
	}
	release, err := TakeSlot(t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	dir, err := os.MkdirTemp("", "pglab-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg.Dir, cfg.BinDir = dir, bin
	st, err := lab.Up(ctx, cfg)
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		if err := lab.Down(dir); err != nil {
			t.Errorf("lab down: %v", err)
		}
		if t.Failed() {
			t.Logf("lab directory kept for its logs: %s", dir)
			return
		}
		_ = os.RemoveAll(dir)
	})
	l := &Lab{State: st, Kube: map[string]kubernetes.Interface{}, Dyn: map[string]dynamic.Interface{}}
	for _, s := range sites {
		cfg, err := lab.OutsideRESTConfig(dir, s)
		if err != nil {
			t.Fatal(err)
		}
		l.Kube[s] = kubernetes.NewForConfigOrDie(cfg)
		l.Dyn[s] = dynamic.NewForConfigOrDie(cfg)
	}
	return l
}

// Eventually polls cond every 250ms until it returns nil or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if last = cond(); last == nil {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %v", what, timeout, last)
}

// ClusterStatus returns status.PostgresClusterStatus of a CR.
func (l *Lab) ClusterStatus(site, ns, name string) (string, error) {
	u, err := l.Dyn[site].Resource(operator.GVR).Namespace(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	s, _, _ := unstructured.NestedString(u.Object, "status", "PostgresClusterStatus")
	return s, nil
}

// WaitStatus waits for a CR's status to be want.
func (l *Lab) WaitStatus(t testing.TB, site, ns, name, want string, timeout time.Duration) {
	t.Helper()
	Eventually(t, timeout, fmt.Sprintf("%s/%s/%s %s", site, ns, name, want), func() error {
		s, err := l.ClusterStatus(site, ns, name)
		if err == nil && s != want {
			err = fmt.Errorf("status %q", s)
		}
		return err
	})
}

// WaitRunning waits for a CR's status to be Running.
func (l *Lab) WaitRunning(t testing.TB, site, ns, name string, timeout time.Duration) {
	t.Helper()
	Eventually(t, timeout, fmt.Sprintf("%s/%s/%s Running", site, ns, name), func() error {
		s, err := l.ClusterStatus(site, ns, name)
		if err != nil {
			return err
		}
		if s != operator.StatusRunning {
			return fmt.Errorf("status %q", s)
		}
		return nil
	})
}

// Password reads a cluster's admin password from its credentials Secret.
func (l *Lab) Password(t testing.TB, site, ns, cluster string) string {
	t.Helper()
	pw, err := l.PasswordOf(site, ns, cluster)
	if err != nil {
		t.Fatal(err)
	}
	return pw
}

// PasswordOf is Password for a cluster that may be away (rebuilt, say).
func (l *Lab) PasswordOf(site, ns, cluster string) (string, error) {
	s, err := l.Kube[site].CoreV1().Secrets(ns).Get(context.Background(), operator.CredentialsSecret(cluster), metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	return string(s.Data["password"]), nil
}

// Endpoint returns how a peer reaches a cluster's master Service:
// ClusterIP:5432, node IP:nodePort or load balancer IP:5432.
func (l *Lab) Endpoint(t testing.TB, site, ns, cluster string) (string, int) {
	t.Helper()
	host, port, err := l.EndpointOf(site, ns, cluster)
	if err != nil {
		t.Fatal(err)
	}
	return host, port
}

// EndpointOf is Endpoint for a cluster that may be away (rebuilt, say):
// its Service missing is an error, not the test's end.
func (l *Lab) EndpointOf(site, ns, cluster string) (string, int, error) {
	svc, err := l.Kube[site].CoreV1().Services(ns).Get(context.Background(), cluster, metav1.GetOptions{})
	if err != nil {
		return "", 0, err
	}
	s, _ := l.Site(site)
	switch svc.Spec.Type {
	case corev1.ServiceTypeNodePort:
		return l.Addrs(s).NodeIP().String(), int(svc.Spec.Ports[0].NodePort), nil
	case corev1.ServiceTypeLoadBalancer:
		if len(svc.Status.LoadBalancer.Ingress) == 0 {
			return "", 0, fmt.Errorf("%s: no load balancer ingress yet", cluster)
		}
		return svc.Status.LoadBalancer.Ingress[0].IP, 5432, nil
	}
	return svc.Spec.ClusterIP, 5432, nil
}

// GetJSON fetches url (a Patroni REST endpoint, say) and decodes it.
func GetJSON(url string, out any) error {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}
