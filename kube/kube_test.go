package kube

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A request to an API server that takes no answer is bounded by the
// Loader's request timeout, even under a context without a deadline: the
// partition that leaves a connection open and silent.
func TestRequestsAreBounded(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	defer srv.Close()
	defer close(release)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: silent, cluster: {server: "`+srv.URL+`"}}]
users: [{name: u, user: {token: not-a-secret}}]
contexts: [{name: silent, context: {cluster: silent, user: u}}]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	site, err := Loader{Kubeconfig: kubeconfig, RequestTimeout: 200 * time.Millisecond}.Connect("silent")
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	_, err = site.GetService(context.Background(), "db", "orders")
	took := time.Since(began)
	if err == nil {
		t.Fatal("a request to a server that never answers returned no error")
	}
	if took > 3*time.Second {
		t.Fatalf("a request to a server that never answers took %s, bound 200ms", took)
	}
}
