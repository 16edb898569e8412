package e2e

import "github.com/pgtopo/pgtopo/kube"

var postgresqlGVR = kube.PostgresqlGVR
