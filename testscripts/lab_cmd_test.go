package testscripts

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/pgtopo/pgtopo/flavor/alauda"
	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/labtest"
	"github.com/pgtopo/pgtopo/lab/proc"
	"github.com/pgtopo/pgtopo/live"
	"github.com/pgtopo/pgtopo/snapshot"
)

// cmdLab drives the lab from a script:
//
//	lab up SITE...                       start a lab; sets KUBECONFIG; stopped when the script ends
//	lab stop-apiserver SITE              make a site unreachable
//	lab patch SITE CLUSTER JSON          merge-patch a postgresql CR (namespace db), as a hand edit
//	lab set-password SITE CLUSTER PW     put a password in a cluster's credentials Secret (namespace db)
//	lab stop-replay SITE CLUSTER         stop a standby's WAL replay (SIGSTOP its startup process)
//	lab resume-replay SITE CLUSTER       resume it (SIGCONT)
//	lab sql SITE CLUSTER SQL             run SQL on a cluster through its Service as admin
//	lab wait-writable SITE CLUSTER       wait up to 60s until the cluster accepts writes
//	lab wait-recovery SITE CLUSTER       wait up to 60s until the cluster is in recovery
//	lab delete SITE CLUSTER              delete a postgresql CR (namespace db)
//	lab crd-upstream|crd-restore SITE    the CRD's schema without clusterReplication, and back
//	lab create-primary SITE CLUSTER      create a new, independent primary CR (NodePort)
//	lab wait-running SITE CLUSTER        wait up to 90s for status Running
func cmdLab(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) == 0 {
		ts.Fatalf("usage: lab up|stop-apiserver|patch|sql|wait-writable ...")
	}
	dir := ts.Getenv("PGLAB_DIR")
	switch args[0] {
	case "up":
		root, err := labtest.RepoRoot()
		ts.Check(err)
		bin := filepath.Join(root, "bin")
		ts.Check(lab.Preflight(bin))
		release, err := labtest.TakeSlot("lab up")
		ts.Check(err)
		ts.Defer(release)
		dir, err = os.MkdirTemp("", "pglab-script-")
		ts.Check(err)
		ts.Check(os.Chmod(dir, 0o755))
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		_, err = lab.Up(ctx, lab.Config{Dir: dir, Sites: args[1:], BinDir: bin})
		ts.Check(err)
		ts.Defer(func() {
			if err := lab.Down(dir); err != nil {
				ts.Logf("lab down: %v", err)
			}
			_ = os.RemoveAll(dir)
		})
		ts.Setenv("PGLAB_DIR", dir)
		ts.Setenv("KUBECONFIG", lab.Paths{Dir: dir}.Kubeconfig())
	case "stop-apiserver":
		proc.Stop(proc.ReadPid(lab.Paths{Dir: dir}.Pid("apiserver-"+args[1])), 10*time.Second)
	case "patch":
		dyn, _ := clients(ts, dir, args[1])
		_, err := dyn.Resource(alauda.Resource).Namespace("db").Patch(context.Background(), args[2], types.MergePatchType, []byte(args[3]), metav1.PatchOptions{})
		ts.Check(err)
	case "stop-replay", "resume-replay":
		// The startup process replays WAL; stopped, the standby still
		// streams and answers, and replays nothing. (pg_wal_replay_pause
		// does not hold: Patroni resumes a paused replay.)
		sig := syscall.SIGSTOP
		if args[0] == "resume-replay" {
			sig = syscall.SIGCONT
		}
		// This lab's process only: tests run other labs at the same time.
		pids, err := lab.SiteProcesses(dir, args[1], "postgres: "+args[2]+": startup")
		ts.Check(err)
		for _, pid := range pids {
			ts.Check(syscall.Kill(pid, sig))
		}
	case "set-password":
		_, kc := clients(ts, dir, args[1])
		patch := fmt.Sprintf(`{"stringData":{"password":%q}}`, args[3])
		_, err := kc.CoreV1().Secrets("db").Patch(context.Background(), alauda.CredentialsSecret(args[2]), types.MergePatchType, []byte(patch), metav1.PatchOptions{})
		ts.Check(err)
	case "sql":
		c := connect(ts, dir, args[1], args[2])
		defer c.Close(context.Background())
		_, err := c.Exec(context.Background(), strings.Join(args[3:], " "))
		ts.Check(err)
	case "wait-writable", "wait-recovery":
		wantRecovery := args[0] == "wait-recovery"
		deadline := time.Now().Add(60 * time.Second)
		for {
			c, err := tryConnect(dir, args[1], args[2])
			if err == nil {
				var rec bool
				err = c.QueryRow(context.Background(), "SELECT pg_is_in_recovery()").Scan(&rec)
				c.Close(context.Background())
				if err == nil && rec == wantRecovery {
					return
				}
			}
			if time.Now().After(deadline) {
				ts.Fatalf("%s: %s did not happen within 60s: %v", args[2], args[0], err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	case "crd-upstream", "crd-restore":
		// The upstream operator's schema declares spec's fields and no
		// clusterReplication; restore puts the lab's back.
		dyn, _ := clients(ts, dir, args[1])
		crds := dyn.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
		crd, err := crds.Get(context.Background(), alauda.CRD, metav1.GetOptions{})
		ts.Check(err)
		versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
		v := versions[0].(map[string]any)
		spec, _, _ := unstructured.NestedMap(v, "schema", "openAPIV3Schema", "properties", "spec")
		props, _ := spec["properties"].(map[string]any)
		stash := filepath.Join(dir, "crd-stash-"+args[1]+".json")
		if args[0] == "crd-upstream" {
			b, err := json.Marshal(props["clusterReplication"])
			ts.Check(err)
			ts.Check(os.WriteFile(stash, b, 0o644))
			delete(spec, "x-kubernetes-preserve-unknown-fields")
			delete(props, "clusterReplication")
		} else {
			b, err := os.ReadFile(stash)
			ts.Check(err)
			var kept map[string]any
			ts.Check(json.Unmarshal(b, &kept))
			spec["x-kubernetes-preserve-unknown-fields"] = true
			props["clusterReplication"] = kept
		}
		ts.Check(unstructured.SetNestedMap(v, spec, "schema", "openAPIV3Schema", "properties", "spec"))
		ts.Check(unstructured.SetNestedSlice(crd.Object, versions, "spec", "versions"))
		_, err = crds.Update(context.Background(), crd, metav1.UpdateOptions{})
		ts.Check(err)
	case "delete":
		dyn, _ := clients(ts, dir, args[1])
		ts.Check(dyn.Resource(alauda.Resource).Namespace("db").Delete(context.Background(), args[2], metav1.DeleteOptions{}))
	case "create-primary":
		dyn, _ := clients(ts, dir, args[1])
		cr := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": alauda.APIVersion, "kind": alauda.Kind,
			"metadata": map[string]any{"name": args[2], "namespace": "db"},
			"spec": map[string]any{"teamId": "ACID", "numberOfInstances": int64(1), "postgresql": map[string]any{"version": "15"},
				"clusterReplication": map[string]any{"enabled": true, "replSvcType": "NodePort"}},
		}}
		_, err := dyn.Resource(alauda.Resource).Namespace("db").Create(context.Background(), cr, metav1.CreateOptions{})
		ts.Check(err)
	case "wait-running":
		dyn, _ := clients(ts, dir, args[1])
		deadline := time.Now().Add(90 * time.Second)
		for {
			u, err := dyn.Resource(alauda.Resource).Namespace("db").Get(context.Background(), args[2], metav1.GetOptions{})
			if err == nil {
				if st, _, _ := unstructured.NestedString(u.Object, "status", "PostgresClusterStatus"); st == "Running" {
					return
				}
			}
			if time.Now().After(deadline) {
				ts.Fatalf("%s not Running after 90s: %v", args[2], err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	default:
		ts.Fatalf("lab: unknown subcommand %q", args[0])
	}
}

func clients(ts *testscript.TestScript, dir, site string) (dynamic.Interface, kubernetes.Interface) {
	cfg, err := lab.RESTConfig(dir, site)
	ts.Check(err)
	return dynamic.NewForConfigOrDie(cfg), kubernetes.NewForConfigOrDie(cfg)
}

func connect(ts *testscript.TestScript, dir, site, cluster string) *pgx.Conn {
	c, err := tryConnect(dir, site, cluster)
	ts.Check(err)
	return c
}

// tryConnect reaches a cluster the way pgtopo does: its Service endpoint
// and the credentials Secret.
func tryConnect(dir, site, cluster string) (*pgx.Conn, error) {
	cfg, err := lab.RESTConfig(dir, site)
	if err != nil {
		return nil, err
	}
	kc := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	sec, err := kc.CoreV1().Secrets("db").Get(ctx, alauda.CredentialsSecret(cluster), metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	svc, err := kc.CoreV1().Services("db").Get(ctx, cluster, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	st, err := lab.Load(dir)
	if err != nil {
		return nil, err
	}
	s, _ := st.Site(site)
	ep := snapshot.Endpoint{Host: svc.Spec.ClusterIP, Port: 5432}
	if svc.Spec.Type == "NodePort" {
		ep = snapshot.Endpoint{Host: st.Addrs(s).NodeIP().String(), Port: int(svc.Spec.Ports[0].NodePort)}
	}
	bundle, err := os.ReadFile(lab.Paths{Dir: dir}.PostgresCABundle())
	if err != nil {
		return nil, err
	}
	login := live.Login{User: string(sec.Data["username"]), Password: string(sec.Data["password"]), TLS: live.TLS{CA: bundle, From: "the lab's CA bundle"}}
	c, err := live.Connect(ctx, ep, login, 3*time.Second)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cluster, err)
	}
	return c, nil
}
