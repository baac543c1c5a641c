#!/usr/bin/env bash
# What the shim's integration tests need: containerd 1.6 and runc (a private daemon per test), the CNI
# plugins for pod networking, gcc + static libc for the test pause image, iproute2, and the
# wasm32-wasip2 target for the example components. Quick no-op when everything is in place.
set -euo pipefail

need=()
for pkg in containerd runc containernetworking-plugins gcc libc6-dev iproute2; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if ((${#need[@]})); then
	SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
	$SUDO apt-get update -q
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi

rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# The tests build examples/components; fetch their crates now so that needs no network later.
cargo fetch --manifest-path "$(dirname "$0")/../../examples/components/Cargo.toml" >/dev/null
