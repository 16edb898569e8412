# pgtopo: run `make help` for the targets.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X github.com/pgtopo/pgtopo/cli.version=$(VERSION) -X github.com/pgtopo/pgtopo/cli.revision=$(REVISION)
STATICCHECK_VERSION := v0.8.2
FUZZTIME ?= 60s

.PHONY: help build test unit lint deps fuzz demo bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

build: ## build bin/pgtopo
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/pgtopo .

test: build ## run every test (unit, validators' agreement, testscripts)
	$(GO) test -count=1 ./...

lint: bin/staticcheck ## gofmt check, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	bin/staticcheck ./...

deps: bin/staticcheck ## install what the tests and lint need (idempotent)
	$(GO) mod download

bin/staticcheck:
	GOBIN=$(CURDIR)/bin $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

fuzz: ## fuzz parse+validate for FUZZTIME (default 60s)
	$(GO) test -run '^$$' -fuzz FuzzLoad -fuzztime $(FUZZTIME) ./schema

demo: build ## the end-to-end demo on the built-in lab
	@echo "make demo arrives with the lab (issue: the lab); for now try:"
	bin/pgtopo validate examples/topologies/*.yaml

clean: ## remove build output
	rm -rf bin
