# clustermon developer entry points. `make test` is what CI runs.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build test lint fmt unit e2e demo clean deps emulator-test rules-test bench check-deps

all: build

build:
	$(CARGO) build --bins

fmt:
	$(CARGO) fmt --all

lint: check-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# "Only store crates know their database" (ARCHITECTURE.md): the core's
# normal dependencies hold no database client and no Cosmos SDK. Reads the
# lock file only; compiles nothing.
CORE_FORBIDDEN_DEPS := rusqlite libsqlite3-sys postgres tokio-postgres postgres-types sqlx sqlx-core azure_core azure_data_cosmos azure_data_cosmos_driver azure_identity typespec_client_core
check-deps:
	@deps=$$($(CARGO) tree -p clustermon-core -e normal --prefix none --format '{p}' | awk '{print $$1}' | sort -u) || exit 1; \
	bad=$$(for d in $(CORE_FORBIDDEN_DEPS); do grep -qx "$$d" <<<"$$deps" && echo "$$d"; done); \
	if [ -n "$$bad" ]; then \
		echo "clustermon-core must not depend on a database client or the Cosmos SDK; found:" $$bad; \
		echo "(see: cargo tree -p clustermon-core -e normal -i <crate>)"; exit 1; \
	fi; echo "check-deps: clustermon-core links no database client and no Cosmos SDK"
	@# TLS is rustls with ring only: aws-lc-rs (a C build) must not come back
	@# through a dependency's default features (ARCHITECTURE.md, Libraries).
	@if $(CARGO) tree --workspace -e normal,build -i aws-lc-sys >/dev/null 2>&1; then \
		echo "aws-lc-sys is built again; find what turns it on: cargo tree -e features -i aws-lc-rs"; exit 1; \
	fi; echo "check-deps: no aws-lc-sys"
	@# One reqwest in the build (the Cosmos SDK's major version), not two.
	@n=$$($(CARGO) tree --workspace -e normal --prefix none --format '{p}' | awk '$$1 == "reqwest" {print $$2}' | sort -u | wc -l); \
	if [ "$$n" -gt 1 ]; then \
		echo "two versions of reqwest are built; align them: cargo tree -d -e normal -i reqwest"; exit 1; \
	fi; echo "check-deps: one reqwest"

unit: deps
	$(CARGO) test --workspace --exclude clustermon-e2e

# What the tests need beyond the Rust toolchain: node/npm and patch for the
# local Cosmos DB endpoint (installed from Debian when missing), its npm
# package with the project's patch.
deps:
	./hack/install-test-deps.sh

# The local Cosmos DB endpoint's own tests (node's test runner).
emulator-test: deps
	cd hack/cosmos-emulator && node --test test.mjs

# End-to-end: real binaries, a real SQLite file, a real UDP receiver.
e2e: build deps
	$(CARGO) test -p clustermon-e2e -- --nocapture --test-threads 4

# The alerting rules on clustermon itself (deploy/prometheus): valid, and
# each alert fires on its fault and stays silent on a healthy fleet.
rules-test: deps
	python3 hack/tools/gen-rules-test.py --check
	promtool check rules deploy/prometheus/clustermon-rules.yaml
	cd deploy/prometheus && promtool test rules clustermon-rules.test.yaml

# The e2e tests mostly wait on timers: run them side by side.
test: lint build emulator-test rules-test
	$(CARGO) test --workspace -- --test-threads 4

# Three monitors and a simulated fleet on one SQLite file, with a live view
# and a failover. Needs nothing but this repository; cleans up after itself.
demo: build
	./hack/demo.sh

# Benchmarks (not part of `make test`): release binaries, every scenario 3
# times, a table of medians, target/bench/results.json and its plot.
# BENCH_ARGS=--quick tries the bench itself on small sizes.
bench:
	$(CARGO) build --release --bins
	python3 hack/bench/bench.py $(BENCH_ARGS)
	python3 hack/bench/plot.py target/bench/results.json target/bench/throughput.png

clean:
	$(CARGO) clean
