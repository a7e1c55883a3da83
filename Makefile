# concord: see README.md. Every target needs only Go (and, from the
# integration issue on, Docker for `make integration`).

GO    ?= go
SEEDS ?= 50000
FIRST ?= $(shell date +%s)

.PHONY: test vet bench soak run demo

## test: everything that needs no Docker, with the race detector.
test: vet
	./images/install-haproxy
	$(GO) test -race -count=1 -timeout 25m ./...

vet:
	$(GO) vet ./...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi

## bench: the election benchmark table (store operations, round trips,
## failover time) for 3, 5, 9 and 25 nodes and 1, 100 and 1,000 services;
## then failover on an embedded etcd for 3 and 5 nodes (crash, as time
## above the session TTL, and graceful handover), beside etcd's own
## client/v3/concurrency Election with the same TTL, and their ratios;
## the replica manager's and the proxy's figures; crash failover and a
## switchover under load through the proxy, with real concord processes;
## then the same failover harness on real etcd, Consul and ZooKeeper
## servers in containers (needs Docker and `make images`).
bench:
	$(GO) test -run '^$$' -bench . -benchtime=3x -timeout 60m ./core/...
	$(GO) test -run '^$$' -bench Failover -benchtime=5x -timeout 30m ./backends/etcd/
	$(GO) test -run '^$$' -bench . -benchtime=200x -timeout 10m ./replica/...
	$(GO) test -run '^$$' -bench . -benchtime=3000x -timeout 10m ./proxy/
	$(GO) test -run '^$$' -bench . -benchtime=5x -timeout 30m ./e2e/
	TESTCONTAINERS_RYUK_DISABLED=true $(GO) test -tags integration -run '^$$' -bench Failover -benchtime=5x -timeout 30m ./integration/

## soak: many more seeded schedules than `make test`, from a new first
## seed each time (FIRST=N SEEDS=M to choose), plus the largest shape.
soak:
	@echo "soak: seeds $(FIRST) to $$(( $(FIRST) + $(SEEDS) - 1 ))"
	$(GO) test -race -count=1 -timeout 6h ./core/sim -run 'TestSchedules|TestScale' -v \
		-seeds=$(SEEDS) -first=$(FIRST) -soak

## run: the demo, a local cluster in one process (see README.md).
run: demo
demo:
	$(GO) run ./cmd/concord demo

## integration: the tests against real store servers in Docker containers
## (integration/; the images come from `make images`) and real concord
## processes. Needs a Docker daemon.
.PHONY: integration
integration:
	$(GO) vet -tags integration ./integration/
	TESTCONTAINERS_RYUK_DISABLED=true $(GO) test -tags integration -race -count=1 -timeout 60m ./integration/...

## images: the Docker images `make integration` uses, built locally (see
## images/README.md); existing ones are skipped, FORCE=1 rebuilds them.
.PHONY: images
images:
	GO='$(GO)' ./images/build
