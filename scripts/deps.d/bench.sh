#!/usr/bin/env bash
# What `make bench` needs beyond the test dependencies: hyperfine (whole-process start times), wrk
# (HTTP load), containerd + runc (the peers), gcc + static libc (the native hello for runc), iproute2
# (a veth pair for the agent's ONVIF handler), and the wasm32-wasip2 target for the benchmark guest.
# The apiserver for the discovery figures comes from harness.sh. Quick no-op when everything is there.
set -euo pipefail

need=()
for pkg in hyperfine wrk containerd runc gcc libc6-dev iproute2; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if ((${#need[@]})); then
	SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
	$SUDO apt-get update -q
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi

rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
