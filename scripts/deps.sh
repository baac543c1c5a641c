#!/usr/bin/env bash
# Installs what building and testing edgewasm needs, idempotently: the base packages and Rust targets
# here, then every component's own list in scripts/deps.d/*.sh. Safe to run again (a quick no-op).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in build-essential pkg-config protobuf-compiler libseccomp-dev iproute2 jq curl ca-certificates; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
	SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
	echo "[deps] apt-get install ${need_apt[*]}"
	$SUDO apt-get update -q
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

installed_targets=$(rustup target list --installed)
for t in wasm32-wasip1 wasm32-wasip2; do
	grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed | grep -q '^clippy' || rustup component add clippy

for script in scripts/deps.d/*.sh; do
	[[ -e $script ]] || continue
	bash "$script"
done
