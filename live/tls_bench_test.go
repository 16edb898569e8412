package live

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/pgtopo/pgtopo/lab/pgtest"
)

// BenchmarkConnectTLS: what verify-full costs a new session against the
// same real server than plaintext would, side by side in one run (the
// rounds interleaved), median and p95 of each; kept sessions (Conns) pay
// it once per MaxAge, not per probe.
func BenchmarkConnectTLS(b *testing.B) {
	s := pgtest.Start(b)
	ctx := context.Background()
	const rounds = 50
	modes := []struct {
		name string
		tls  TLS
	}{{"disable", TLS{Mode: "disable"}}, {"verify-full", TLS{CA: pgtest.CA(b).CertPEM}}}
	for range b.N {
		took := make([][]time.Duration, len(modes))
		for range rounds {
			for i, m := range modes {
				start := time.Now()
				c, err := Connect(ctx, s.Endpoint, Login{User: "postgres", Password: pgtest.Password, TLS: m.tls}, 3*time.Second)
				if err != nil {
					b.Fatalf("%s: %v", m.name, err)
				}
				took[i] = append(took[i], time.Since(start))
				c.Close(ctx)
			}
		}
		for i, m := range modes {
			slices.Sort(took[i])
			b.ReportMetric(float64(took[i][rounds/2].Microseconds())/1000, "ms-median/"+m.name)
			b.ReportMetric(float64(took[i][rounds*95/100].Microseconds())/1000, "ms-p95/"+m.name)
		}
		b.ReportMetric(float64(took[1][rounds/2])/float64(took[0][rounds/2]), "verify-full/disable")
	}
}
