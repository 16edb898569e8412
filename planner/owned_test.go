package planner

import (
	"maps"
	"reflect"
	"testing"

	"github.com/pgtopo/pgtopo/snapshot"
)

// sameFields is what sameOwnedFields must answer, from the one list of
// owned fields (Spec.Fields): every field equal, a volume size want
// leaves out not compared.
func sameFields(live, want snapshot.Spec) bool {
	l, w := live.Fields(), want.Fields()
	if live.Flavor != want.Flavor || len(l) != len(w) {
		return false
	}
	for i := range l {
		if l[i].Path != w[i].Path || l[i].Value != w[i].Value && !(w[i].Path == "volume.size" && w[i].Value == "") {
			return false
		}
	}
	return true
}

// sameOwnedFields is a fast copy of Spec.Fields' comparison; this keeps it
// one: every field of Spec (and of its Replication), changed in turn, for
// each flavor, changes both answers alike. A field added to Spec.Fields but
// not to sameOwnedFields (no update would ever be planned for it) fails
// here, and so does a field of an operator's Spec that Spec.Fields does
// not show, unless it is declared not owned below.
func TestSameOwnedFieldsFollowsFields(t *testing.T) {
	notOwned := map[string]bool{"Topology": true} // a label, written apart
	// An operator's object leaves the standby's slot name to the operator.
	operatorNotOwned := map[string]bool{"Replication.PrimarySlot": true}
	for _, flavor := range []string{"", snapshot.FlavorPatroni} {
		base := snapshot.Spec{Flavor: flavor, Instances: 2, TeamID: "ACID", Version: "15", Parameters: map[string]string{"a": "1"}, VolumeSize: "1Gi",
			Replication: snapshot.Replication{Enabled: true, IsReplica: true, PeerHost: "10.0.0.1", PeerPort: 5432, ServiceType: "NodePort", BootstrapSecret: "b", PrimarySlot: "s"}}
		if !sameOwnedFields(base, base) || !sameFields(base, base) {
			t.Fatal("a spec differs from itself")
		}
		var mutate func(prefix string, v reflect.Value)
		mutate = func(prefix string, v reflect.Value) {
			for i := range v.NumField() {
				f, name := v.Field(i), prefix+v.Type().Field(i).Name
				if f.Kind() == reflect.Struct {
					mutate(name+".", f)
					continue
				}
				if notOwned[name] || name == "Flavor" {
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
				got, want := sameOwnedFields(mutated(base, name, f), base), sameFields(mutated(base, name, f), base)
				if got != want {
					t.Errorf("flavor %q: %s changed: sameOwnedFields says same=%v, Spec.Fields says same=%v", flavor, name, got, want)
				}
				if flavor == "" && want && !operatorNotOwned[name] {
					t.Errorf("%s changed, and Spec.Fields does not show it: list it there (an owned field), or in operatorNotOwned", name)
				}
				f.Set(old)
			}
		}
		probe := base
		probe.Parameters = maps.Clone(base.Parameters)
		mutate("", reflect.ValueOf(&probe).Elem())
	}
}

// mutated is base with the field at path set to f's value.
func mutated(base snapshot.Spec, path string, f reflect.Value) snapshot.Spec {
	out := base
	v := reflect.ValueOf(&out).Elem()
	for _, name := range splitPath(path) {
		v = v.FieldByName(name)
	}
	v.Set(f)
	return out
}

func splitPath(path string) []string {
	var out []string
	start := 0
	for i := range len(path) {
		if path[i] == '.' {
			out = append(out, path[start:i])
			start = i + 1
		}
	}
	return append(out, path[start:])
}
