# pgtopo: run `make help` for the targets.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X github.com/pgtopo/pgtopo/cli.version=$(VERSION) -X github.com/pgtopo/pgtopo/cli.revision=$(REVISION)
STATICCHECK_VERSION := v0.8.2
GREMLINS_VERSION := v0.6.0
CYCLONEDX_VERSION := v1.10.0
FUZZTIME ?= 60s

APT_PACKAGES := git etcd-server patroni postgresql-15

.PHONY: help build test soak lint deps apt-deps lab-bin fuzz demo bench mutate image release clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

build: ## build bin/pgtopo and bin/pglab
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/pgtopo .
	$(GO) build -o bin/pglab ./cmd/pglab

test: build lab-bin ## run every test (unit, agreement, testscripts, the lab end to end)
	$(GO) test -count=1 -timeout 30m ./...

SOAK ?= 30m
soak: build lab-bin ## the nemesis for SOAK (default 30m; root): faults at random on a lab of network namespaces, automatic failover checked (PGTOPO_NEMESIS_SEED repeats a run)
	PGTOPO_NEMESIS=$(SOAK) PGTOPO_NEMESIS_PATRONI=1 $(GO) test -count=1 -v -timeout 2h -run '^TestNemesis$$' ./e2e

lint: bin/staticcheck ## gofmt check, go vet, staticcheck, no binary or file over 1 MiB tracked
	scripts/check-tree.sh
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	bin/staticcheck ./...

deps: apt-deps bin/staticcheck lab-bin ## install what the tests and lint need (idempotent)
	$(GO) mod download

apt-deps: ## Debian packages of the lab: etcd, Patroni, PostgreSQL 15
	@if dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then echo "apt packages present: $(APT_PACKAGES)"; else \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES); fi

lab-bin: bin/kube-apiserver ## build the lab's kube-apiserver (once; ~4 min cold)

bin/kube-apiserver: lab/apiserver/go.mod lab/apiserver/go.sum lab/apiserver/main.go
	cd lab/apiserver && $(GO) build -o ../../bin/kube-apiserver .

bin/staticcheck:
	GOBIN=$(CURDIR)/bin $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

mutate: bin/gremlins ## mutation scores of planner/, plan/, apply/, drill/, quorum/ and reconcile/ (killed / all mutants; goals 85%, 80%, 70%, 70%, 80%, 60%)
	GREMLINS=bin/gremlins scripts/mutate.sh

release: bin/cyclonedx-gomod ## dist/: static reproducible binaries (linux, darwin; amd64, arm64), SHA256SUMS, a CycloneDX SBOM
	VERSION=$(VERSION) REVISION=$(REVISION) CYCLONEDX=bin/cyclonedx-gomod RELEASE_CHECK=$(RELEASE_CHECK) GO=$(GO) scripts/release.sh

bin/cyclonedx-gomod:
	GOBIN=$(CURDIR)/bin $(GO) install github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod@$(CYCLONEDX_VERSION)

bin/gremlins:
	GOBIN=$(CURDIR)/bin $(GO) install github.com/go-gremlins/gremlins/cmd/gremlins@$(GREMLINS_VERSION)

fuzz: ## fuzz parse+validate for FUZZTIME (default 60s)
	$(GO) test -run '^$$' -fuzz FuzzLoad -fuzztime $(FUZZTIME) ./schema

LAB ?= .lab
LABENV := KUBECONFIG=$(LAB)/kubeconfig

demo: deps build ## the main job end to end on the built-in lab: bring-up, then a switchover
	-bin/pglab down --dir $(LAB) >/dev/null 2>&1; rm -rf $(LAB)
	bin/pglab up --dir $(LAB) --sites east,west
	$(LABENV) bin/pgtopo apply -f examples/topologies/lab-two-sites.yaml
	$(LABENV) bin/pgtopo status -f examples/topologies/lab-two-sites.yaml
	sed 's/  primary: orders-east/  primary: orders-west/' examples/topologies/lab-two-sites.yaml > $(LAB)/topology-west.yaml
	$(LABENV) bin/pgtopo diff -f $(LAB)/topology-west.yaml || true
	$(LABENV) bin/pgtopo apply -f $(LAB)/topology-west.yaml
	$(LABENV) bin/pgtopo status -f $(LAB)/topology-west.yaml
	@echo
	@echo "Look around:  export KUBECONFIG=$(LAB)/kubeconfig; kubectl --context lab-west get postgresql -A"
	@echo "              bin/pgtopo status -f $(LAB)/topology-west.yaml"
	@echo "Tear down:    bin/pglab down --dir $(LAB)"

bench: build lab-bin ## benchmarks printed side by side with ratios: scale (validate, planner, reconcile memory), a session's TLS cost, then the lab (the switchover 10 rounds, PGTOPO_BENCH_ROUNDS; the others 3)
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 20m ./scale ./live
	$(GO) test -run '^$$' -bench 'BenchmarkSwitchover$$' -benchtime 1x -timeout 60m ./e2e
	$(GO) test -run '^$$' -bench 'Benchmark(Observe|Failover|Evacuate|APIRequests)$$' -benchtime 3x -timeout 90m ./e2e

ENGINE ?= $(shell command -v docker || command -v podman)

image: ## build the container image (examples/deploy/Dockerfile) with docker or podman, where one is installed
	@if [ -z "$(ENGINE)" ]; then echo "make image: no docker or podman here; install one, or see examples/deploy/Dockerfile (its static build is tested without one by cli TestDockerfileBuildsAStaticBinary)"; exit 1; fi
	$(ENGINE) build -f examples/deploy/Dockerfile --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t pgtopo:$(VERSION) .

clean: ## remove build output
	rm -rf bin dist
