#!/usr/bin/env bash
# Builds the three edgewasm container images as OCI image layout tars, without a Docker daemon:
#   edgewasm/operator, edgewasm/agent, edgewasm/node-installer (which carries the containerd shim).
#
#   scripts/build-images.sh [--bin-dir DIR] [--target TRIPLE] [--out DIR] [--registry docker.io] [--tag TAG]
#
# Without --bin-dir it runs `cargo build --release` for the four binaries (with --target, e.g.
# x86_64-unknown-linux-musl, for static binaries). Dynamically linked binaries get the shared
# libraries they need copied into the image. Import on a node with:
#   sudo k3s ctr image import dist/images/edgewasm-agent-0.1.0.tar      (k3s)
#   sudo ctr -n k8s.io image import dist/images/edgewasm-agent-0.1.0.tar (containerd)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir=""
target=""
out="$repo/dist/images"
registry="docker.io"
tag="$(awk -F'"' '/^appVersion:/ {print $2}' "$repo/charts/edgewasm/Chart.yaml")"

while (($#)); do
  case "$1" in
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --target) target="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --registry) registry="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "build-images.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -n "$tag" ]] || { echo "build-images.sh: no appVersion in charts/edgewasm/Chart.yaml; pass --tag" >&2; exit 2; }

if [[ -z "$bin_dir" ]]; then
  target_dir="${CARGO_TARGET_DIR:-$repo/target}"
  (cd "$repo" && cargo build --release ${target:+--target "$target"} \
    -p edgewasm-operator -p edgewasm-discovery-agent -p edgewasm-node-installer -p containerd-shim-edgewasm)
  bin_dir="$target_dir/${target:+$target/}release"
fi
for bin in edgewasm-operator edgewasm-agent edgewasm-node-installer containerd-shim-edgewasm-v1; do
  [[ -x "$bin_dir/$bin" ]] || { echo "build-images.sh: $bin_dir/$bin is missing" >&2; exit 1; }
done

mkdir -p "$out"
prefix="${registry:+$registry/}edgewasm"
oci() { python3 "$repo/scripts/oci-image.py" "$@"; }

oci build --name "$prefix/operator:$tag" --out "$out/edgewasm-operator-$tag.tar" --with-libs \
  --file "$bin_dir/edgewasm-operator:/usr/local/bin/edgewasm-operator:755" \
  --entrypoint /usr/local/bin/edgewasm-operator --user 65532:65532
oci build --name "$prefix/agent:$tag" --out "$out/edgewasm-agent-$tag.tar" --with-libs \
  --file "$bin_dir/edgewasm-agent:/usr/local/bin/edgewasm-agent:755" \
  --entrypoint /usr/local/bin/edgewasm-agent --user 65532:65532
# The installer's init container runs as root (it writes the host's containerd config); the shim it
# copies to the host must run there, so build it static (--target *-musl) for mixed node distros.
oci build --name "$prefix/node-installer:$tag" --out "$out/edgewasm-node-installer-$tag.tar" --with-libs \
  --file "$bin_dir/edgewasm-node-installer:/usr/local/bin/edgewasm-node-installer:755" \
  --file "$bin_dir/containerd-shim-edgewasm-v1:/opt/edgewasm/bin/containerd-shim-edgewasm-v1:755" \
  --entrypoint /usr/local/bin/edgewasm-node-installer --user 0:0

for image in operator agent node-installer; do
  oci check "$out/edgewasm-$image-$tag.tar" --name "$prefix/$image:$tag"
done
