#!/usr/bin/env bash
# Tools the discovery agent's tests need: `ip` (iproute2) for the ONVIF network-namespace test.
# The OPC UA test needs nothing more (async-opcua is pure Rust, its server runs in the test); the
# publisher's cluster test uses the e2e harness, whose apiserver and etcd harness.sh installs.
set -euo pipefail
if ! command -v ip >/dev/null 2>&1; then
  apt-get update -q
  apt-get install -y -q iproute2
fi
