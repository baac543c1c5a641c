#!/usr/bin/env bash
# What the runtime crate's tests need: the wasm32-wasip2 target (they build examples/components) and
# iproute2 (`ip netns` for the network namespace test). Quick no-op when present.
set -euo pipefail

rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

if ! command -v ip >/dev/null 2>&1; then
	SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
	$SUDO apt-get update -q
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends iproute2
fi

# Fetch the examples' crates now so the tests' example build needs no network later.
cargo fetch --manifest-path "$(dirname "$0")/../../examples/components/Cargo.toml" >/dev/null
