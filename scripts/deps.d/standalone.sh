#!/usr/bin/env bash
# Standalone mode's tests build the example components for wasm32-wasip2.
set -euo pipefail
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
