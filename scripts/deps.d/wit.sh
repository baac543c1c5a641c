#!/usr/bin/env bash
# What the edgewasm:device world's tests need (runtime/tests/device_world.rs): the wasm32-wasip2 target to
# build the wit-bindgen example guests, and `ip` (iproute2) for the simulated ONVIF camera's network
# namespace. The fake IIO tree and the serial pty need nothing installed.
set -euo pipefail
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
if ! command -v ip >/dev/null 2>&1; then
  apt-get update -q
  apt-get install -y -q iproute2
fi
