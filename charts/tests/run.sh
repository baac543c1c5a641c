#!/usr/bin/env bash
# Chart tests (called by `make test-chart`): CRDs identical to crds/, helm lint, helm template with
# several value sets validated offline against the Kubernetes schemas and checked for the chart's
# RBAC/mount/securityContext promises, values typos rejected, deploy/ up to date, image layouts.
#
#   bash charts/tests/run.sh            run every check
#   bash charts/tests/run.sh --update   copy crds/ into the chart and re-render deploy/, then check
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
chart="$repo/charts/edgewasm"
namespace=edgewasm-system
# Oldest Kubernetes the chart supports (ValidatingAdmissionPolicy v1) and a current one.
kube_versions=(1.30.0 1.32.0)

die() { echo "charts/tests: $*" >&2; exit 1; }
for tool in helm kubernetes-validate python3; do
  command -v "$tool" >/dev/null || die "$tool is missing; run 'make deps' (scripts/deps.d/chart.sh)"
done
python3 -c 'import yaml' 2>/dev/null || die "python3 has no yaml module; run 'make deps'"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

render_deploy() {
  # Plain manifests for kubectl users: the namespace, the CRDs, then the chart's objects.
  {
    echo "# Rendered from charts/edgewasm with default values by charts/tests/run.sh --update; do not edit."
    echo "# kubectl apply --server-side -f deploy/edgewasm.yaml"
    echo "---"
    printf 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n' "$namespace"
    helm template edgewasm "$chart" --namespace "$namespace" --include-crds
  } >"$1"
}

if [[ "${1:-}" == "--update" ]]; then
  rm -f "$chart"/crds/*.yaml
  cp "$repo"/crds/*.yaml "$chart/crds/"
  render_deploy "$repo/deploy/edgewasm.yaml"
  echo "updated $chart/crds and deploy/edgewasm.yaml"
fi

step() { echo "== $*"; }

step "CRDs in the chart are the ones in crds/"
shopt -s nullglob
repo_crds=("$repo"/crds/*.yaml)
chart_crds=("$chart"/crds/*.yaml)
shopt -u nullglob
((${#repo_crds[@]} > 0)) || die "no CRDs in crds/ (make crds)"
for file in "${repo_crds[@]}"; do
  copy="$chart/crds/$(basename "$file")"
  [[ -f "$copy" ]] || die "$copy is missing; run: bash charts/tests/run.sh --update"
  cmp -s "$file" "$copy" || die "$copy differs from crds/; run: bash charts/tests/run.sh --update"
done
for copy in "${chart_crds[@]}"; do
  [[ -f "$repo/crds/$(basename "$copy")" ]] || die "$copy is not in crds/; run: bash charts/tests/run.sh --update"
done
for version in "${kube_versions[@]}"; do
  kubernetes-validate --strict --quiet -k "$version" "${chart_crds[@]}" || die "the CRDs are not valid for Kubernetes $version"
done
# The RBAC rules name these resources and subresources; fail here if the CRDs drift from them.
python3 - "${chart_crds[@]}" <<'PY'
import sys, yaml
want = {"devices": ("Cluster", "Device"), "wasmworkloads": ("Namespaced", "WasmWorkload")}
seen = {}
for path in sys.argv[1:]:
    spec = yaml.safe_load(open(path))["spec"]
    assert spec["group"] == "edgewasm.io", f"{path}: group {spec['group']}"
    plural = spec["names"]["plural"]
    seen[plural] = (spec["scope"], spec["names"]["kind"])
    for version in spec["versions"]:
        assert "status" in version.get("subresources", {}), f"{path}: {version['name']} has no status subresource"
assert seen == want, f"CRDs {seen} are not the ones the chart's RBAC names: {want}"
print("ok   CRDs: Device (cluster-scoped), WasmWorkload (namespaced), both with status")
PY

step "helm lint"
helm lint --strict "$chart" --namespace "$namespace"
for values in "$here"/values/*.yaml; do
  helm lint --strict --quiet "$chart" --namespace "$namespace" -f "$values" >/dev/null \
    || die "helm lint fails with $(basename "$values")"
done

step "helm package carries the CRDs"
helm package "$chart" --destination "$work" >/dev/null
packaged_crds="$(helm template edgewasm "$work"/edgewasm-*.tgz --include-crds | grep -c '^kind: CustomResourceDefinition$' || true)"
((packaged_crds == ${#repo_crds[@]})) || die "the packaged chart renders $packaged_crds CRDs, crds/ has ${#repo_crds[@]}"

step "helm template: schemas and the chart's promises, per value set"
for values in "$here"/values/*.yaml; do
  out="$work/$(basename "$values")"
  helm template edgewasm "$chart" --namespace "$namespace" -f "$values" >"$out"
  for version in "${kube_versions[@]}"; do
    kubernetes-validate --strict --quiet -k "$version" "$out" \
      || die "$(basename "$values"): rendered objects are not valid for Kubernetes $version"
  done
  python3 "$here/check_rendered.py" "$out" "$chart/values.yaml" "$values" "$namespace"
done

step "the agent itself accepts every rendered agent.yaml"
# The agent parses its config before it connects to the API server: a config error shows as
# "agent config", and failing at the Kubernetes client (no cluster here) means the file was accepted.
# Always (re)build: a stale binary would judge the chart against an older config format. After
# `make test-rust` this is a no-op.
agent_bin="${CARGO_TARGET_DIR:-$repo/target}/debug/edgewasm-agent"
(cd "$repo" && cargo build -q -p edgewasm-discovery-agent --bin edgewasm-agent) || die "cannot build edgewasm-agent"
for values in "$here"/values/*.yaml; do
  out="$work/$(basename "$values")"
  python3 - "$out" "$work/agent" <<'PY'
import os, sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["labels"].get("app.kubernetes.io/component") == "agent":
        os.makedirs(sys.argv[2], exist_ok=True)
        for key, text in doc["data"].items():
            open(os.path.join(sys.argv[2], key), "w").write(text)
PY
  [[ -f "$work/agent/agent.yaml" ]] || continue
  set +e
  agent_err="$(cd "$work" && NODE_NAME=test-node KUBECONFIG="$work/no-kubeconfig" HOME="$work" \
    timeout 20 "$agent_bin" --config "$work/agent/agent.yaml" --metrics-addr 127.0.0.1:0 2>&1 >/dev/null)"
  set -e
  if grep -q "agent config" <<<"$agent_err"; then
    die "$(basename "$values"): edgewasm-agent rejects the rendered agent.yaml: $agent_err"
  fi
  grep -q "Kubernetes client" <<<"$agent_err" \
    || die "$(basename "$values"): edgewasm-agent stopped before reaching the API client: $agent_err"
  rm -rf "$work/agent"
done
echo "ok   edgewasm-agent parses the agent.yaml of every value set"

step "the operator itself accepts the arguments of every value set"
operator_bin="${CARGO_TARGET_DIR:-$repo/target}/debug/edgewasm-operator"
if [[ ! -x "$operator_bin" ]]; then
  (cd "$repo" && cargo build -q -p edgewasm-operator --bin edgewasm-operator) || die "cannot build edgewasm-operator"
fi
for values in "$here"/values/*.yaml; do
  mapfile -t operator_args < <(python3 - "$work/$(basename "$values")" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc["kind"] == "Deployment" and doc["metadata"]["labels"].get("app.kubernetes.io/component") == "operator":
        print("\n".join(doc["spec"]["template"]["spec"]["containers"][0]["args"]))
PY
)
  set +e
  operator_err="$(cd "$work" && KUBECONFIG="$work/no-kubeconfig" HOME="$work" POD_NAMESPACE=edgewasm-system \
    timeout 20 "$operator_bin" "${operator_args[@]}" 2>&1 >/dev/null)"
  set -e
  grep -q "Kubernetes API" <<<"$operator_err" \
    || die "$(basename "$values"): edgewasm-operator ${operator_args[*]} stopped before the API client: $operator_err"
done
echo "ok   edgewasm-operator parses the arguments of every value set"

step "the checker catches a widened agent role and a writable /dev"
python3 - "$work/default.yaml" "$work/broken.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    component = d["metadata"].get("labels", {}).get("app.kubernetes.io/component")
    if d["kind"] == "ClusterRole" and component == "agent":
        d["rules"].append({"apiGroups": [""], "resources": ["pods", "secrets"], "verbs": ["list"]})
    if d["kind"] == "DaemonSet" and component == "agent":
        for mount in d["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]:
            if mount["mountPath"] == "/dev":
                mount["readOnly"] = False
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
PY
if python3 "$here/check_rendered.py" "$work/broken.yaml" "$chart/values.yaml" "$here/values/default.yaml" \
  "$namespace" 2>"$work/broken.err"; then
  die "check_rendered.py accepted a broken rendering"
fi
for expected in "may list Secrets" "the agent may list pods" "the agent mounts /dev writable"; do
  grep -q "$expected" "$work/broken.err" || die "check_rendered.py did not report: $expected"
done

step "values.schema.json rejects typos and bad values"
for values in "$here"/invalid/*.yaml; do
  if helm template edgewasm "$chart" --namespace "$namespace" -f "$values" >/dev/null 2>"$work/err"; then
    die "$(basename "$values") was accepted"
  fi
  grep -q "don't meet the specifications of the schema" "$work/err" \
    || die "$(basename "$values") failed for another reason than the schema: $(cat "$work/err")"
done

step "deploy/ is rendered from the chart"
render_deploy "$work/edgewasm.yaml"
cmp -s "$work/edgewasm.yaml" "$repo/deploy/edgewasm.yaml" \
  || die "deploy/edgewasm.yaml is stale; run: bash charts/tests/run.sh --update"
for version in "${kube_versions[@]}"; do
  kubernetes-validate --strict --quiet -k "$version" "$repo/deploy/edgewasm.yaml" || die "deploy/edgewasm.yaml invalid"
done
python3 - "$repo/deploy/gitops" "$chart/Chart.yaml" <<'PY'
import glob, sys, yaml
chart = yaml.safe_load(open(sys.argv[2]))
files = sorted(glob.glob(sys.argv[1] + "/*.yaml"))
assert files, "no GitOps examples in deploy/gitops"
for path in files:
    for doc in yaml.safe_load_all(open(path)):
        if doc and doc["kind"] in ("HelmRelease", "Application"):
            text = yaml.safe_dump(doc)
            assert "charts/edgewasm" in text, f"{path}: {doc['kind']} does not point at charts/edgewasm"
print(f"ok   {len(files)} GitOps examples point at charts/edgewasm")
PY

step "OCI image layouts"
bash "$here/images.sh"

echo "charts/tests: all passed"
