#!/usr/bin/env bash
# `make bench`: builds release binaries and the benchmark guests, runs every figure (edgewasm and its
# peers in the same run), writes bench/results/*.json and BENCHMARKS.md, and prints the table.
#
#   BENCH_QUICK=1   few runs per figure (a smoke test, minutes instead of ~15)
#   RUNWASI_SHIM    runwasi's containerd-shim-wasmtime-v1, built locally (default: /opt/runwasi/...
#                   when present); without it runwasi is reported as not built locally
#   BENCH_NO_BUILD  use the binaries already in $CARGO_TARGET_DIR/release (no cargo build first)
#   BENCH_ONLY      run only the steps whose name contains this (inprocess, containerd, discovery,
#                   standalone); the report is always regenerated from all result files
#
# Needs root (a private containerd, a veth pair) and what `make deps` installs.
set -uo pipefail
# Each step stops what it started on SIGINT/SIGTERM and fails; then stop here rather than run the next.
trap 'echo "interrupted" >&2; exit 130' INT TERM

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
CARGO=${CARGO:-cargo}
target=${CARGO_TARGET_DIR:-$root/target}
results=$root/bench/results
bins=$target/release

if [[ $(id -u) -ne 0 ]]; then
	echo "make bench needs root: it runs a private containerd and creates a veth pair" >&2
	exit 1
fi
bash scripts/deps.d/bench.sh || exit 1

step() { echo; echo "=== $*"; }
failed=()
want() { [[ -z ${BENCH_ONLY:-} || $1 == *"$BENCH_ONLY"* ]]; }

if [[ -z ${BENCH_NO_BUILD:-} ]]; then
	step "building (release)"
	set -e
	# The examples' own target folder (where `make examples` puts them), whatever CARGO_TARGET_DIR says.
	$CARGO build --release --target wasm32-wasip2 --manifest-path examples/components/Cargo.toml \
		--target-dir "$root/examples/components/target"
	$CARGO build --release --target wasm32-wasip2 --manifest-path benches/hello/Cargo.toml \
		--target-dir "$target/bench-hello"
	$CARGO build --release -p containerd-shim-edgewasm -p edgewasm-discovery-agent \
		-p edgewasm-standalone -p edgewasm-bench
	set +e
fi
hello_wasm=$target/bench-hello/wasm32-wasip2/release/bench-hello.wasm
server_wasm=$root/examples/components/target/wasm32-wasip2/release/reading_server.wasm
bench=$bins/edgewasm-bench

runwasi=${RUNWASI_SHIM:-/opt/runwasi/containerd-shim-wasmtime-v1}
if [[ -x $runwasi ]]; then
	export RUNWASI_SHIM=$runwasi
	echo "runwasi: $RUNWASI_SHIM"
else
	unset RUNWASI_SHIM
	echo "runwasi: not built locally (set RUNWASI_SHIM; see benches/README.md); comparing with runc only"
fi
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores${BENCH_QUICK:+ (quick mode)}"
mkdir -p "$results"

if want containerd; then
	step "through containerd: cold start, short tasks, memory per instance, wasi:http"
	"$bench" containerd --shim "$bins/containerd-shim-edgewasm-v1" --hello-wasm "$hello_wasm" \
		--hello-c benches/hello.c --server-wasm "$server_wasm" --results "$results" || failed+=(containerd)
fi
if want discovery; then
	step "discovery: device → Device CR, agent idle memory"
	"$bench" discovery --agent "$bins/edgewasm-agent" --crds crds --results "$results" || failed+=(discovery)
fi
if want standalone; then
	step "standalone: device → component running"
	"$bench" standalone --edgewasm "$bins/edgewasm" --hello-wasm "$hello_wasm" --results "$results" ||
		failed+=(standalone)
fi

if want inprocess; then
	step "instance start in-process (criterion)"
	if BENCH_HELLO_WASM=$hello_wasm $CARGO bench -p edgewasm-bench --bench inprocess -- --noplot &&
		"$bench" criterion --dir "$target/criterion" --results "$results"; then :; else failed+=(inprocess); fi
fi
step "report"
"$bench" report --results "$results" --out BENCHMARKS.md || failed+=(report)
if ((${#failed[@]})); then
	echo "FAILED: ${failed[*]} (earlier results of those figures, if any, were kept)" >&2
	exit 1
fi
