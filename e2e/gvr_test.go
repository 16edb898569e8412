package e2e

import "github.com/pgtopo/pgtopo/flavor/alauda"

var postgresqlGVR = alauda.Resource
