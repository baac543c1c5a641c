#!/usr/bin/env bash
# Tools the discovery agent's tests need: `ip` (iproute2) for the ONVIF network-namespace test.
set -euo pipefail
if ! command -v ip >/dev/null 2>&1; then
  apt-get update -q
  apt-get install -y -q iproute2
fi
