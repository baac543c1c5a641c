#!/usr/bin/env python3
"""Asserts the chart's security and wiring promises on one rendered manifest.

Usage: check_rendered.py RENDERED.yaml CHART_VALUES.yaml OVERRIDES.yaml NAMESPACE

Checks what schema validation cannot: least-privilege RBAC (the agent never touches Pods, nobody
reads Secrets cluster-wide), the RuntimeClass and the installer's node label agree, the agent's
host mounts are read-only, and every container runs as restricted as its job allows.
"""

import copy
import sys

import yaml

FAILURES = []


def check(condition, message):
    if not condition:
        FAILURES.append(message)


def merge(base, override):
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def one(objects, kind, component=None):
    found = [
        o
        for o in objects
        if o["kind"] == kind
        and (component is None or o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component)
    ]
    check(len(found) == 1, f"expected one {kind} for {component or 'the chart'}, found {len(found)}")
    return found[0] if found else None


def rules_grant(rules, group, resource, verb):
    return any(
        (group in r.get("apiGroups", []) or "*" in r.get("apiGroups", []))
        and (resource in r.get("resources", []) or "*" in r.get("resources", []))
        and (verb in r.get("verbs", []) or "*" in r.get("verbs", []))
        for r in rules
    )


def check_rbac(objects, values, namespace):
    for role in (o for o in objects if o["kind"] in ("ClusterRole", "Role")):
        name = f"{role['kind']} {role['metadata']['name']}"
        for rule in role.get("rules", []):
            check("*" not in rule.get("verbs", []), f"{name} grants every verb: {rule}")
            check("*" not in rule.get("resources", []), f"{name} grants every resource: {rule}")
            check("*" not in rule.get("apiGroups", []), f"{name} grants every API group: {rule}")
        for verb in ("get", "list", "watch"):
            check(
                not rules_grant(role.get("rules", []), "", "secrets", verb),
                f"{name} may {verb} Secrets",
            )
        if role["kind"] == "Role":
            check(role["metadata"]["namespace"] == namespace, f"{name} is outside the release namespace")

    if values["agent"]["enabled"]:
        agent = one(objects, "ClusterRole", "agent")
        if agent:
            rules = agent["rules"]
            for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
                check(not rules_grant(rules, "", "pods", verb), f"the agent may {verb} pods")
            check(not rules_grant(rules, "", "nodes", "patch"), "the agent may patch nodes")
            for verb in ("get", "list", "watch", "create", "patch", "update"):
                check(rules_grant(rules, "edgewasm.io", "devices", verb), f"the agent may not {verb} devices")
            check(rules_grant(rules, "edgewasm.io", "devices/status", "patch"), "the agent may not patch devices/status")
            check(not rules_grant(rules, "edgewasm.io", "wasmworkloads", "get"), "the agent may read wasmworkloads")

    if values["operator"]["enabled"]:
        operator = one(objects, "ClusterRole", "operator")
        if operator:
            rules = operator["rules"]
            for verb in ("get", "list", "watch", "create", "delete", "patch"):
                check(rules_grant(rules, "", "pods", verb), f"the operator may not {verb} pods")
            for verb in ("get", "list", "watch"):
                check(rules_grant(rules, "edgewasm.io", "devices", verb), f"the operator may not {verb} devices")
            for verb in ("create", "delete", "update", "patch"):
                check(not rules_grant(rules, "edgewasm.io", "devices", verb), f"the operator may {verb} devices")
            check(rules_grant(rules, "edgewasm.io", "devices/status", "patch"), "the operator may not patch devices/status")
            check(rules_grant(rules, "edgewasm.io", "wasmworkloads/status", "patch"), "no wasmworkloads/status patch")
            check(rules_grant(rules, "edgewasm.io", "wasmworkloads/finalizers", "update"), "no finalizers update")
            check(rules_grant(rules, "", "events", "create"), "the operator may not create core events")
            check(rules_grant(rules, "events.k8s.io", "events", "create"), "no events.k8s.io events")
            check(not rules_grant(rules, "coordination.k8s.io", "leases", "create"), "cluster-wide leases")

    installer_roles = [
        o for o in objects
        if o["kind"] == "ClusterRole"
        and o["metadata"]["labels"].get("app.kubernetes.io/component") == "node-installer"
    ]
    for role in installer_roles:
        check(
            role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}],
            f"the installer's role is more than get/patch nodes: {role['rules']}",
        )
    label_node = values["installer"]["enabled"] and values["installer"]["labelNode"]
    check(bool(installer_roles) == label_node, "installer ClusterRole present iff it labels nodes")
    policies = [o for o in objects if o["kind"] == "ValidatingAdmissionPolicy"]
    check(
        bool(policies) == (label_node and values["installer"]["restrictToOwnNode"]),
        "own-node ValidatingAdmissionPolicy present iff the installer labels nodes and restrictToOwnNode",
    )
    for policy in policies:
        text = yaml.safe_dump(policy)
        check("authentication.kubernetes.io/node-name" in text, "the policy does not compare the token's node")
        check(values["runtimeClass"]["nodeLabel"]["key"] in text, "the policy does not name the runtime label")

    for binding in (o for o in objects if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        for subject in binding["subjects"]:
            check(subject["kind"] == "ServiceAccount", f"{binding['metadata']['name']} binds a {subject['kind']}")
            check(subject.get("namespace") == namespace, f"{binding['metadata']['name']} binds outside the namespace")


def container_args(container):
    return container.get("args", []) + container.get("command", [])


def check_restricted(container, where):
    sc = container.get("securityContext", {})
    check(not sc.get("privileged"), f"{where} is privileged")
    check(sc.get("allowPrivilegeEscalation") is False, f"{where} allows privilege escalation")
    check(sc.get("readOnlyRootFilesystem") is True, f"{where} has a writable root filesystem")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where} keeps capabilities")


def check_operator(objects, values):
    if not values["operator"]["enabled"]:
        check(not [o for o in objects if o["kind"] == "Deployment"], "operator disabled but rendered")
        return
    deployment = one(objects, "Deployment", "operator")
    if not deployment:
        return
    pod = deployment["spec"]["template"]["spec"]
    check(deployment["spec"]["replicas"] == values["operator"]["replicas"], "operator replicas")
    check(pod["securityContext"].get("runAsNonRoot") is True, "the operator may run as root")
    (container,) = pod["containers"]
    check_restricted(container, "the operator container")
    args = container_args(container)
    check(f"--runtime-class={values['runtimeClass']['name']}" in args, f"operator runtime class arg: {args}")
    check(f"--device-grace-period={values['operator']['deviceGracePeriod']}" in args, "grace period arg")
    leader = values["operator"]["replicas"] > 1 or values["operator"]["leaderElection"]["enabled"]
    check(("--leader-elect" in args) == leader, f"--leader-elect should be {leader}: {args}")
    leases = [o for o in objects if o["kind"] == "Role"]
    check(bool(leases) == leader, "leases Role present iff leader election")
    for role in leases:
        check(
            role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                               "verbs": ["get", "list", "watch", "create", "update", "patch"]}],
            f"leader-election Role grants more than leases: {role['rules']}",
        )
    check(container["livenessProbe"]["httpGet"]["path"] == "/healthz", "operator liveness probe")
    check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "operator readiness probe")
    check("limits" in container["resources"], "the operator has no resource limits")


def check_agent(objects, values, namespace):
    if not values["agent"]["enabled"]:
        return
    ds = one(objects, "DaemonSet", "agent")
    if not ds:
        return
    pod = ds["spec"]["template"]["spec"]
    check(bool(pod.get("hostNetwork")) == values["agent"]["hostNetwork"], "agent hostNetwork")
    if values["agent"]["hostNetwork"]:
        check(pod.get("dnsPolicy") == "ClusterFirstWithHostNet", "host-network agent cannot resolve services")
    check(not pod.get("hostPID"), "the agent shares the host PID namespace")
    check({"operator": "Exists"} in pod.get("tolerations", []), "the agent does not tolerate every taint")
    check(pod["securityContext"].get("runAsNonRoot") is True, "the agent may run as root")
    (container,) = pod["containers"]
    check_restricted(container, "the agent container")
    env = {e["name"]: e for e in container["env"]}
    check(env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
          "NODE_NAME does not come from spec.nodeName")
    check("--config=/etc/edgewasm/agent.yaml" in container_args(container), "agent --config")

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for path in ("/sys", "/dev"):
        mount = mounts.get(path)
        check(mount is not None, f"the agent does not mount {path}")
        if mount:
            check(mount.get("readOnly") is True, f"the agent mounts {path} writable")
            check(volumes[mount["name"]].get("hostPath", {}).get("path") == path, f"{path} is not the host's")
    for mount in container["volumeMounts"]:
        if "hostPath" in volumes[mount["name"]]:
            check(mount.get("readOnly") is True, f"the agent mounts host {mount['mountPath']} writable")

    config_map = one(objects, "ConfigMap", "agent")
    if config_map:
        config = yaml.safe_load(config_map["data"]["agent.yaml"])
        handlers = values["agent"]["handlers"]
        rendered = config["handlers"]
        # The agent rejects unknown keys: chart-only settings must not leak into its file.
        chart_only = {"onvif": {"credentialsSecret", "credentialsKey"}, "static": {"devices"}}
        for name in ("udev", "onvif", "opcua"):
            expected = {k: v for k, v in handlers[name].items() if k not in chart_only.get(name, set())}
            got = {k: v for k, v in rendered[name].items() if k != "credentialsFile"}
            check(got == expected, f"agent config {name} is {got}, values say {expected}")
        check(("static" in rendered) == handlers["static"]["enabled"],
              "the static handler (whose file is required) is rendered iff enabled")
        secret = handlers["onvif"]["credentialsSecret"]
        secret_volumes = [v for v in pod["volumes"] if "secret" in v]
        if secret:
            path = f"/etc/edgewasm/onvif/{handlers['onvif']['credentialsKey']}"
            check(rendered["onvif"].get("credentialsFile") == path, "onvif credentialsFile")
            check([v["secret"]["secretName"] for v in secret_volumes] == [secret], "onvif secret volume")
            check(mounts.get("/etc/edgewasm/onvif", {}).get("readOnly") is True, "onvif secret mount")
        else:
            check(not secret_volumes, "a Secret is mounted without credentialsSecret")
        if handlers["static"]["enabled"]:
            check(rendered["static"]["file"] == "/etc/edgewasm/static-devices.yaml", "static file")
            static = yaml.safe_load(config_map["data"]["static-devices.yaml"])
            check(static["devices"] == handlers["static"]["devices"], "static devices")
    check(not [o for o in objects if o["kind"] == "Secret"], "the chart renders a Secret")


def check_runtime_class_and_installer(objects, values):
    rc_values = values["runtimeClass"]
    label = rc_values["nodeLabel"]
    if rc_values["create"]:
        rc = one(objects, "RuntimeClass")
        if rc:
            check(rc["metadata"]["name"] == rc_values["name"], "RuntimeClass name")
            check(rc["handler"] == rc_values["handler"], "RuntimeClass handler")
            check(rc["scheduling"]["nodeSelector"] == {label["key"]: label["value"]},
                  f"RuntimeClass selects {rc['scheduling']['nodeSelector']}")
            check(rc["scheduling"].get("tolerations", []) == rc_values["tolerations"], "RuntimeClass tolerations")
            if rc_values["overhead"]:
                check(rc["overhead"]["podFixed"] == rc_values["overhead"], "RuntimeClass overhead")

    inst = values["installer"]
    if not inst["enabled"]:
        return
    ds = one(objects, "DaemonSet", "node-installer")
    if not ds:
        return
    pod = ds["spec"]["template"]["spec"]
    (install,) = pod["initContainers"]
    args = container_args(install)
    check(args[0] == "install", f"installer init container runs {args}")
    check(f"--runtime-name={rc_values['handler']}" in args, "installer registers another handler than the RuntimeClass")
    check((f"--label={label['key']}={label['value']}" in args) == inst["labelNode"], "installer label arg")
    check(("--label-node" in args) == inst["labelNode"], "installer --label-node")
    check(f"--restart={str(inst['restart']).lower()}" in args, "installer --restart")
    if inst["flavor"] != "auto":
        check(f"--flavor={inst['flavor']}" in args, "installer --flavor")
    if inst["restartUnit"]:
        check(f"--restart-unit={inst['restartUnit']}" in args, "installer --restart-unit")
    check(bool(pod.get("hostPID")) == inst["restart"], "hostPID only when the installer restarts containerd")
    check(not pod.get("hostNetwork"), "the installer uses the host network")
    check(pod.get("automountServiceAccountToken") == inst["labelNode"], "installer token only when labelling")
    env = {e["name"]: e for e in install["env"]}
    check("NODE_NAME" in env, "the installer does not know its node")
    (ready,) = pod["containers"]
    check(container_args(ready) == ["wait"], "installer main container")
    check_restricted(ready, "the installer's waiting container")
    check(ready["securityContext"].get("runAsNonRoot") is True, "the installer's waiting container runs as root")
    check({"operator": "Exists"} in pod.get("tolerations", []), "the installer does not tolerate every taint")


def main():
    rendered, chart_values, overrides, namespace = sys.argv[1:5]
    with open(rendered) as f:
        objects = [o for o in yaml.safe_load_all(f) if o]
    with open(chart_values) as f:
        values = yaml.safe_load(f)
    with open(overrides) as f:
        values = merge(values, yaml.safe_load(f))

    for obj in objects:
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding", "RuntimeClass", "CustomResourceDefinition",
                               "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
            check(obj["metadata"].get("namespace") == namespace,
                  f"{obj['kind']} {obj['metadata']['name']} is not in namespace {namespace}")

    check_rbac(objects, values, namespace)
    check_operator(objects, values)
    check_agent(objects, values, namespace)
    check_runtime_class_and_installer(objects, values)

    if FAILURES:
        for failure in FAILURES:
            print(f"FAIL {overrides}: {failure}", file=sys.stderr)
        sys.exit(1)
    print(f"ok   {overrides}: {len(objects)} objects")


if __name__ == "__main__":
    main()
