package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pgtopo/pgtopo/lab/labtest"
	"github.com/pgtopo/pgtopo/lab/operator"
)

// rotatePrimaryPassword changes orders-east's (the primary's) superuser
// password as a DBA would: ALTER ROLE on the primary, which replicates to
// the standby, and the new value in the primary's credentials Secret. The
// standby's own Secret then no longer authenticates: pgtopo plans its
// refresh from the primary's (never showing the value), applies it, and a
// switchover to the standby and back succeeds.
func (h *harness) rotatePrimaryPassword(t *testing.T, eastFile, westFile string) {
	ctx := context.Background()
	raw := make([]byte, 16)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	password := "rotated-" + hex.EncodeToString(raw)
	c, err := h.conn("east", "orders-east")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, fmt.Sprintf("ALTER ROLE postgres PASSWORD '%s'", password)); err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)
	secrets := h.lab.Kube["east"].CoreV1().Secrets("db")
	sec, err := secrets.Get(ctx, operator.CredentialsSecret("orders-east"), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sec.Data["password"] = []byte(password)
	if _, err := secrets.Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The standby replays the new password; its own Secret keeps the old.
	var plan run
	labtest.Eventually(t, 30*time.Second, "a plan that refreshes orders-west's credentials", func() error {
		plan = h.pgtopo("diff", "-f", eastFile)
		if plan.code != 4 || !strings.Contains(plan.stdout, "refresh-credentials") {
			return fmt.Errorf("exit %d:\n%s", plan.code, plan.stdout)
		}
		return nil
	})
	for _, want := range []string{"refresh-credentials orders-west (west/db)", "fails to authenticate", "username and password of " + operator.CredentialsSecret("orders-east")} {
		if !strings.Contains(plan.stdout, want) {
			t.Fatalf("the plan lacks %q:\n%s", want, plan.stdout)
		}
	}
	if st := h.pgtopo("status", "-f", eastFile); st.code == 0 || !strings.Contains(st.stdout, "NOT DR ready") {
		t.Fatalf("status with orders-west's credentials stale: exit %d:\n%s", st.code, st.stdout)
	}
	r := h.pgtopo("apply", "-f", eastFile)
	h.expect(r, 0, "Apply complete", "refresh-credentials")
	if !strings.Contains(r.stderr, "orders-west authenticating with its refreshed credentials") {
		t.Fatalf("the refresh did not wait for orders-west to take them:\n%s", r.stderr)
	}
	h.expect(h.pgtopo("diff", "-f", eastFile), 0, "No changes.")
	h.expect(h.pgtopo("status", "-f", eastFile), 0, "DR ready: orders-west")
	h.expect(h.pgtopo("apply", "-f", westFile), 0, "Apply complete", "switchover orders-east → orders-west")
	h.expect(h.pgtopo("apply", "-f", eastFile), 0, "Apply complete", "switchover orders-west → orders-east")
	if ok, err := h.writable("east", "orders-east"); !ok {
		t.Fatalf("orders-east not writable after the switchovers with the rotated password: %v", err)
	}
}
