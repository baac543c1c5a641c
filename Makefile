# edgewasm: `make run` shows it working on this machine, `make test` checks everything.
# Both install what they need first (`make deps`, idempotent).

SHELL := /bin/bash
CARGO ?= cargo
EXAMPLES_MANIFEST := examples/components/Cargo.toml
EXAMPLES_TARGET := examples/components/target/wasm32-wasip2/release

.PHONY: all deps build examples crds run test test-rust test-chart fmt-check clippy bench clean-state

all: build

deps:
	@bash scripts/deps.sh

build: deps
	$(CARGO) build --workspace --bins

examples: deps
	$(CARGO) build --release --target wasm32-wasip2 --manifest-path $(EXAMPLES_MANIFEST)

crds:
	$(CARGO) run -q -p edgewasm-api --bin crdgen -- crds

## The standalone demo: discovery, placement and wasmtime on this machine, no Kubernetes needed.
run: deps examples
	$(CARGO) run --release -p edgewasm-standalone --bin edgewasm -- run --manifests examples/standalone

fmt-check:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path $(EXAMPLES_MANIFEST) --all -- --check

clippy: examples
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --release --target wasm32-wasip2 --manifest-path $(EXAMPLES_MANIFEST) -- -D warnings

# The end-to-end tests run the agent, operator and shim binaries, so they are built first.
test-rust: examples
	$(CARGO) build --workspace --bins
	set -o pipefail; $(CARGO) test --workspace --no-fail-fast 2>&1 | tee .test-output.log

test-chart:
	bash charts/tests/run.sh

## Everything CI checks: formatting, lints, unit and integration tests against real services, the chart.
test: deps fmt-check clippy test-rust test-chart
	@bash scripts/test-summary.sh .test-output.log

bench: deps examples
	bash benches/run.sh
