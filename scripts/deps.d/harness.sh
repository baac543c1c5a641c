#!/usr/bin/env bash
# End-to-end harness (tests/harness): the real CRD apiserver built from Debian's Go sources
# (tests/apiserver), etcd, containerd + runc + CNI plugins for the test kubelet, protoc for the CRI
# client, and gcc's static libc for the tiny test images. Quick no-op when everything is in place.
#
# The built binary lands in $CRD_APISERVER_CACHE/bin/crd-apiserver (default
# /var/cache/crd-apiserver), where edgewasm-testkit looks for it (CRD_APISERVER_BIN overrides).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${CRD_APISERVER_CACHE:-/var/cache/crd-apiserver}

need=()
for pkg in containerd runc containernetworking-plugins protobuf-compiler gcc libc6-dev curl; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if ((${#need[@]})); then
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

bash "$root/tests/apiserver/install-deps.sh"
bash "$root/tests/apiserver/build.sh" "$cache/bin/crd-apiserver"
