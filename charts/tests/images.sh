#!/usr/bin/env bash
# Tests scripts/oci-image.py (what scripts/build-images.sh uses): a layout built from a dynamically
# linked binary is valid and reproducible, and, as root, a throwaway containerd imports and runs it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
oci="$repo/scripts/oci-image.py"
name=docker.io/edgewasm/image-test:0.1.0

work="$(mktemp -d)"
containerd_pid=""
cleanup() {
  if [[ -n "$containerd_pid" ]]; then
    kill "$containerd_pid" 2>/dev/null || true
    wait "$containerd_pid" 2>/dev/null || true
  fi
  umount -R "$work/root" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

build() {
  python3 "$oci" build --name "$name" --out "$1" --with-libs \
    --file /bin/echo:/usr/local/bin/echo --entrypoint /usr/local/bin/echo --cmd "hello from an edgewasm image" >/dev/null
}
build "$work/a.tar"
SOURCE_DATE_EPOCH=0 build "$work/b.tar"
cmp -s "$work/a.tar" "$work/b.tar" || { echo "images.sh: two builds differ" >&2; exit 1; }
python3 "$oci" check "$work/a.tar" --name "$name" --expect-file /usr/local/bin/echo --expect-file /etc/passwd

# A corrupted blob must be caught.
mkdir "$work/broken" && tar -C "$work/broken" -xf "$work/a.tar"
layer="$(python3 -c 'import json,sys;m=json.load(open(sys.argv[1]));print(m["manifests"][0]["digest"].split(":")[1])' "$work/broken/index.json")"
printf 'x' >>"$work/broken/blobs/sha256/$layer"
tar -C "$work/broken" -cf "$work/broken.tar" .
if python3 "$oci" check "$work/broken.tar" 2>/dev/null; then
  echo "images.sh: a corrupted layout passed the check" >&2
  exit 1
fi

# build-images.sh assembles all three images from a folder of release binaries (stand-ins here).
mkdir "$work/bin"
for bin in edgewasm-operator edgewasm-agent edgewasm-node-installer containerd-shim-edgewasm-v1; do
  cp /bin/true "$work/bin/$bin"
done
bash "$repo/scripts/build-images.sh" --bin-dir "$work/bin" --out "$work/images" >/dev/null
for image in operator agent node-installer; do
  python3 "$oci" check "$work/images/edgewasm-$image-0.1.0.tar" --name "docker.io/edgewasm/$image:0.1.0" \
    --expect-file "/usr/local/bin/edgewasm-$image" >/dev/null
done
python3 "$oci" check "$work/images/edgewasm-node-installer-0.1.0.tar" \
  --expect-file /opt/edgewasm/bin/containerd-shim-edgewasm-v1 >/dev/null
echo "ok   build-images.sh: operator, agent and node-installer layouts"

if [[ "$(id -u)" != 0 ]]; then
  echo "SKIPPED importing into containerd: needs root (CI runs as root)"
  exit 0
fi
for tool in containerd ctr containerd-shim-runc-v2 runc; do
  command -v "$tool" >/dev/null || { echo "images.sh: $tool is missing (apt-get install containerd runc)" >&2; exit 1; }
done

# A containerd of our own: own root, state and socket; CRI off (not needed to import and run).
cat >"$work/config.toml" <<EOF
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd.sock"
EOF
containerd --config "$work/config.toml" >"$work/containerd.log" 2>&1 &
containerd_pid=$!
ctr_() { ctr --address "$work/containerd.sock" --namespace edgewasm-image-test "$@"; }
deadline=$((SECONDS + 30))
until ctr_ version >/dev/null 2>&1; do
  if ((SECONDS > deadline)) || ! kill -0 "$containerd_pid" 2>/dev/null; then
    echo "images.sh: containerd did not start:" >&2
    cat "$work/containerd.log" >&2
    exit 1
  fi
  sleep 0.1
done

ctr_ image import "$work/a.tar" >/dev/null
ctr_ image ls -q | grep -qx "$name" || { echo "images.sh: $name not listed after import" >&2; ctr_ image ls >&2; exit 1; }
out="$(ctr_ run --rm --fifo-dir "$work/fifo" --runc-root "$work/runc" "$name" "image-test-$$")"
[[ "$out" == "hello from an edgewasm image" ]] || { echo "images.sh: the imported image printed: $out" >&2; exit 1; }
ctr_ image rm "$name" >/dev/null
echo "ok   imported into containerd $(containerd --version | awk '{print $3}') and ran: $out"
