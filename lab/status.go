package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/pgtopo/pgtopo/lab/proc"
)

var postgresqlGVR = schema.GroupVersionResource{Group: "acid.zalan.do", Version: "v1", Resource: "postgresqls"}

// PrintStatus writes the lab's processes and the clusters of every site.
func PrintStatus(ctx context.Context, w io.Writer, dir string) error {
	st, err := Load(dir)
	if err != nil {
		return err
	}
	p := Paths{st.Dir}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "PROCESS\tPID\tSTATE\n")
	names := []string{"etcd"}
	for _, s := range st.Sites {
		if s.Patroni {
			names = append(names, "vm-"+s.Name)
			continue
		}
		names = append(names, "apiserver-"+s.Name, "gateway-"+s.Name, "operator-"+s.Name)
	}
	for _, n := range names {
		pid := proc.ReadPid(p.Pid(n))
		fmt.Fprintf(tw, "%s\t%d\t%s\n", n, pid, aliveWord(pid))
	}
	for _, f := range MemberPidFiles(st.Dir) {
		pid := proc.ReadPid(f)
		rel, _ := filepath.Rel(st.Dir, filepath.Dir(f))
		fmt.Fprintf(tw, "patroni %s\t%d\t%s\n", rel, pid, aliveWord(pid))
	}
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "SITE\tFAULT\tSINCE\n")
	for _, s := range st.Sites {
		f := ReadFault(st.Dir, s.Name)
		kind, since := "none", "-"
		if f.Kind != FaultNone {
			kind, since = f.Kind, f.Since.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, kind, since)
	}
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "SITE\tCONTEXT\tNAMESPACE\tCLUSTER\tINSTANCES\tREPLICA\tSTATUS\n")
	for _, s := range st.Sites {
		if c, err := st.PatroniCluster(s); err == nil {
			fmt.Fprintf(tw, "%s\t(patroni)\tvm\t%s\t%d\t%s\tendpoint %s\n", s.Name, c.Name, len(c.Members), patroniStandby(ctx, c), c.Endpoint)
			continue
		}
		if ReadFault(st.Dir, s.Name).Kind == FaultFailed {
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\tsite failed\n", s.Name, s.Context)
			continue
		}
		// The lab's own view, past the gateway: a partitioned site's
		// clusters still show (not in a lab with namespaces: nothing
		// outside reaches a cut site).
		cfg, err := OutsideRESTConfig(st.Dir, s.Name)
		if err != nil {
			return err
		}
		cfg.Timeout = 5 * time.Second
		dc, err := dynamic.NewForConfig(cfg)
		if err != nil {
			return err
		}
		list, err := dc.Resource(postgresqlGVR).Namespace("").List(ctx, metav1.ListOptions{})
		if err != nil {
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\tunreachable: %v\n", s.Name, s.Context, err)
			continue
		}
		for _, cr := range list.Items {
			n, _, _ := unstructured.NestedInt64(cr.Object, "spec", "numberOfInstances")
			rep, _, _ := unstructured.NestedBool(cr.Object, "spec", "clusterReplication", "isReplica")
			status, _, _ := unstructured.NestedString(cr.Object, "status", "PostgresClusterStatus")
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%v\t%s\n", s.Name, s.Context, cr.GetNamespace(), cr.GetName(), n, rep, status)
		}
	}
	return tw.Flush()
}

func aliveWord(pid int) string {
	if proc.Alive(pid) {
		return "running"
	}
	return "stopped"
}

// patroniStandby says whether a Patroni site's cluster is a standby
// cluster, from its dynamic configuration.
func patroniStandby(ctx context.Context, c PatroniCluster) string {
	client := &http.Client{Timeout: 2 * time.Second}
	for _, m := range c.Members {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m+":8008/config", nil)
		resp, err := client.Do(req)
		if err != nil {
			continue
		}
		var cfg map[string]any
		err = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&cfg)
		resp.Body.Close()
		if err == nil {
			return fmt.Sprint(cfg["standby_cluster"] != nil)
		}
	}
	return "unknown"
}
