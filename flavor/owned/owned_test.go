package owned

import (
	"maps"
	"reflect"
	"slices"
	"testing"

	"github.com/pgtopo/pgtopo/snapshot"
)

func base(flavor string) snapshot.Spec {
	return snapshot.Spec{Flavor: flavor, Instances: 2, TeamID: "ACID", Version: "15", Parameters: map[string]string{"a": "1"}, VolumeSize: "1Gi",
		Replication: snapshot.Replication{Enabled: true, IsReplica: true, PeerHost: "10.0.0.1", PeerPort: 5432, ServiceType: "NodePort", BootstrapSecret: "b", PrimarySlot: "s"}}
}

// Every field of a Spec is owned by each flavor's list, or declared not
// owned here: a field added to Spec and to no list fails, and so does one
// a list compares but does not show, or shows but does not compare.
func TestEverySpecFieldIsOwnedOnce(t *testing.T) {
	notOwned := map[string]map[string]bool{
		// The topology is a label, written apart; the operator names the
		// standby's slot itself.
		"": {"Topology": true, "Replication.PrimarySlot": true},
		// A Patroni cluster's owned fields are its role alone.
		snapshot.FlavorPatroni: {"Topology": true, "Instances": true, "TeamID": true, "Version": true, "Parameters": true, "VolumeSize": true,
			"Replication.Enabled": true, "Replication.IsReplica": true, "Replication.ServiceType": true, "Replication.BootstrapSecret": true},
	}
	for _, flavor := range []string{"", snapshot.FlavorPatroni} {
		b := base(flavor)
		fields := For(b)
		if !fields.Same(b, b) {
			t.Fatal("a spec differs from itself")
		}
		var walk func(prefix string, v reflect.Value)
		walk = func(prefix string, v reflect.Value) {
			for i := range v.NumField() {
				f, name := v.Field(i), prefix+v.Type().Field(i).Name
				if f.Kind() == reflect.Struct {
					walk(name+".", f)
					continue
				}
				if name == "Flavor" {
					continue
				}
				old := reflect.ValueOf(f.Interface())
				switch f.Kind() {
				case reflect.String:
					f.SetString(f.String() + "x")
				case reflect.Int:
					f.SetInt(f.Int() + 1)
				case reflect.Bool:
					f.SetBool(!f.Bool())
				case reflect.Map:
					m := maps.Clone(f.Interface().(map[string]string))
					m["b"] = "2"
					f.Set(reflect.ValueOf(m))
				default:
					t.Fatalf("%s: a %s field; teach this test to change it", name, f.Kind())
				}
				compared := !fields.Same(b, mutatedCopy(t, b, name, f))
				shown := !slices.Equal(fields.Shown(b), fields.Shown(mutatedCopy(t, b, name, f)))
				switch {
				case notOwned[flavor][name] && (compared || shown):
					t.Errorf("flavor %q: %s is declared not owned, yet compared=%v shown=%v", flavor, name, compared, shown)
				case !notOwned[flavor][name] && !(compared && shown):
					t.Errorf("flavor %q: %s changed: compared=%v shown=%v; declare it in the flavor's list (flavors.go), or as not owned here", flavor, name, compared, shown)
				}
				f.Set(old)
			}
		}
		probe := b
		probe.Parameters = maps.Clone(b.Parameters)
		walk("", reflect.ValueOf(&probe).Elem())
	}
}

// mutatedCopy is base with the field at path set to f's value.
func mutatedCopy(t *testing.T, b snapshot.Spec, path string, f reflect.Value) snapshot.Spec {
	t.Helper()
	out := b
	v := reflect.ValueOf(&out).Elem()
	start := 0
	for i := 0; i <= len(path); i++ {
		if i == len(path) || path[i] == '.' {
			v = v.FieldByName(path[start:i])
			start = i + 1
		}
	}
	v.Set(f)
	return out
}

// Changes, parameters, the peer and a field left out when empty, as the
// planner and a saved plan's basis read them.
func TestSetHelpers(t *testing.T) {
	a := base("")
	b := a
	b.Parameters = map[string]string{"a": "2", "c": "3"}
	b.Replication.PeerPort = 5433
	got := Alauda.Changes(a, b)
	want := []Change{{"postgresql.parameters.a", "1", "2"}, {"postgresql.parameters.c", "", "3"}, {"clusterReplication.peer", "10.0.0.1:5432", "10.0.0.1:5433"}}
	if !slices.Equal(got, want) {
		t.Fatalf("changes %v, want %v", got, want)
	}
	if n, ok := Alauda.Parameter("postgresql.parameters.max_connections"); !ok || n != "max_connections" {
		t.Fatalf("parameter %q %v", n, ok)
	}
	if _, ok := Alauda.Parameter("teamId"); ok {
		t.Fatal("teamId is no parameter")
	}
	if Alauda.ParameterField("x") != "postgresql.parameters.x" || Patroni.ParameterField("x") != "" {
		t.Fatal("parameter fields")
	}
	if !Alauda.IsPeer("clusterReplication.peer") || Alauda.IsPeer("teamId") || !Patroni.IsPeer("standby_cluster.host:port") {
		t.Fatal("peer fields")
	}
	if !Alauda.Omitted("volume.size") || Alauda.Omitted("teamId") {
		t.Fatal("omitted fields")
	}
	noVolume := a
	noVolume.VolumeSize = ""
	if !Alauda.Same(a, noVolume) || Alauda.Same(noVolume, a) {
		t.Fatal("a volume size the file leaves out is not compared; one it sets is")
	}
}
