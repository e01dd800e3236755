#!/usr/bin/env python3
"""Consistency checks of deploy/ that no schema expresses; run by scripts/validate-deploy.sh.

    validate-deploy.py ROOT PLAIN DEFAULT_RENDER OVERRIDE_RENDER

Needs PyYAML and jsonschema (both come with kubernetes-validate's venv). Prints one line per check
and exits 1 if any failed.
"""

import copy
import json
import re
import sys
import tomllib
from pathlib import Path

import jsonschema
import yaml

CAPS = ["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH", "NET_ADMIN"]
RBAC_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get"]},
]
CONFIG_PATH = "/etc/gotel/gotel.yaml"
# What Helm adds that the plain manifest has no use for.
HELM_ONLY_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by"}
HELM_ONLY_ANNOTATIONS = re.compile(r"^checksum/")

failures = 0


def check(ok, what, detail=""):
    global failures
    if ok:
        print(f"  ok    {what}")
    else:
        failures += 1
        print(f"  FAIL  {what}" + (f"\n        {detail}" if detail else ""))
    return ok


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def by_key(docs):
    return {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d for d in docs}


def one(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    if len(found) != 1:
        raise SystemExit(f"expected one {kind}, found {len(found)}")
    return found[0]


def container(docs):
    return one(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]


def daemon_config(docs):
    return yaml.safe_load(one(docs, "ConfigMap")["data"]["gotel.yaml"])


def normalize(doc):
    """The object as the cluster would get it, less what only Helm adds; configs parsed."""
    doc = copy.deepcopy(doc)

    def strip(meta):
        labels = {k: v for k, v in meta.get("labels", {}).items() if k not in HELM_ONLY_LABELS}
        annotations = {
            k: v for k, v in meta.get("annotations", {}).items() if not HELM_ONLY_ANNOTATIONS.match(k)
        }
        meta.pop("labels", None)
        meta.pop("annotations", None)
        if labels:
            meta["labels"] = labels
        if annotations:
            meta["annotations"] = annotations

    strip(doc["metadata"])
    if doc["kind"] == "DaemonSet":
        strip(doc["spec"]["template"]["metadata"])
    if doc["kind"] == "ConfigMap":
        doc["data"] = {k: yaml.safe_load(v) for k, v in doc["data"].items()}
    return doc


def diff(a, b, path=""):
    """Paths where a and b differ (at most a few)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                out.append(f"{path}.{k}: only in the chart")
            elif k not in b:
                out.append(f"{path}.{k}: only in the plain manifest")
            else:
                out += diff(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} (plain) != {b!r} (chart)"]


def config_schema(root):
    """The daemon config file's schema (crates/discovery/src/config.rs FileConfig): the chart's
    `config`, plus the keys the DaemonSet sets otherwise (metrics_addr, node_name)."""
    chart = json.loads((root / "deploy/helm/gotel/values.schema.json").read_text())
    schema = copy.deepcopy(chart["properties"]["config"])
    schema["properties"]["metrics_addr"] = {"type": "string", "pattern": r"^(off|(\[[0-9a-fA-F:.]+\]|[0-9.]+):[0-9]{1,5})$"}
    schema["properties"]["node_name"] = {"type": "string", "minLength": 1}
    schema["definitions"] = chart["definitions"]
    return schema


def check_render(name, docs, schema):
    """What must hold of any render, the plain manifest included."""
    print(f"{name}:")
    c = container(docs)
    ds = one(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    sc = c["securityContext"]
    check(sc.get("capabilities", {}).get("add") == CAPS, f"capabilities add exactly {CAPS}", sc.get("capabilities"))
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities drop ALL")
    check(sc.get("privileged") is False and sc.get("allowPrivilegeEscalation") is False,
          "not privileged, no privilege escalation")
    check(sc.get("readOnlyRootFilesystem") is True, "read-only root file system")
    check(sc.get("seccompProfile") == {"type": "Unconfined"} and sc.get("appArmorProfile") == {"type": "Unconfined"},
          "seccomp and AppArmor Unconfined")
    check(pod.get("hostPID") is True and not pod.get("hostNetwork"), "hostPID, pod network")
    check(ds["spec"].get("updateStrategy", {}).get("type") == "RollingUpdate", "RollingUpdate")

    args = c.get("args", [])
    check(args[:3] == ["daemon", "--config", CONFIG_PATH], f"args start daemon --config {CONFIG_PATH}", args)
    addr = args[args.index("--metrics-addr") + 1] if "--metrics-addr" in args else ""
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    check(addr == f"0.0.0.0:{ports.get('metrics')}", "--metrics-addr binds 0.0.0.0 on containerPort 'metrics'",
          f"{addr} vs {ports}")
    for probe in ("livenessProbe", "readinessProbe"):
        check(c.get(probe, {}).get("httpGet") == {"path": "/healthz", "port": "metrics"}, f"{probe} GET /healthz on 'metrics'")
    ann = ds["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/scrape" in ann:
        check(ann.get("prometheus.io/port") == str(ports.get("metrics")), "prometheus.io/port is the metrics port")

    env = {e["name"]: e for e in c.get("env", [])}
    check(env.get("GOTEL_NODE_NAME", {}).get("valueFrom") == {"fieldRef": {"fieldPath": "spec.nodeName"}},
          "GOTEL_NODE_NAME from spec.nodeName")
    check(len(env) == len(c.get("env", [])), "no env variable set twice")

    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    cm = one(docs, "ConfigMap")
    check(mounts.get("config", {}).get("mountPath") == str(Path(CONFIG_PATH).parent)
          and volumes.get("config", {}).get("configMap", {}).get("name") == cm["metadata"]["name"]
          and "gotel.yaml" in cm["data"], f"ConfigMap {cm['metadata']['name']} mounted at {CONFIG_PATH}")
    check(mounts.get("cgroup", {}).get("mountPath") == "/sys/fs/cgroup" and mounts["cgroup"].get("readOnly") is True
          and volumes.get("cgroup", {}).get("hostPath", {}).get("path") == "/sys/fs/cgroup",
          "host /sys/fs/cgroup mounted read-only")
    check(set(mounts) <= set(volumes), "every mount has a volume")

    ns = ds["metadata"]["namespace"]
    sa = pod.get("serviceAccountName")
    objs = by_key(docs)
    if ("ServiceAccount", ns, sa) in objs or any(d["kind"] == "ServiceAccount" for d in docs):
        check(("ServiceAccount", ns, sa) in objs, f"ServiceAccount {ns}/{sa} rendered")
    role = [d for d in docs if d["kind"] == "ClusterRole"]
    binding = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    if role:
        check(role[0]["rules"] == RBAC_RULES, "ClusterRole: get/list/watch pods, get replicasets, nothing more",
              role[0]["rules"])
        b = binding[0]
        check(b["roleRef"]["name"] == role[0]["metadata"]["name"]
              and b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
              "ClusterRoleBinding binds that role to the DaemonSet's ServiceAccount")
    if any(d["kind"] == "Namespace" for d in docs):
        check({d["metadata"].get("namespace") for d in docs if d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding")}
              == {one(docs, "Namespace")["metadata"]["name"]}, "everything namespaced is in the rendered Namespace")

    config = daemon_config(docs)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(config), key=str)
    check(not errors, "daemon config matches the config schema", "; ".join(e.message for e in errors[:3]))
    check("metrics_addr" not in config and "node_name" not in config,
          "daemon config leaves metrics_addr to --metrics-addr, node_name to GOTEL_NODE_NAME")
    return c


def main():
    root, plain_path, default_path, override_path = Path(sys.argv[1]), *sys.argv[2:5]
    schema = config_schema(root)
    plain, default, override = load(plain_path), load(default_path), load(override_path)

    c = check_render("plain manifest (deploy/kubernetes/gotel.yaml)", plain, schema)
    check(c["image"] == "ghcr.io/gotel-dev/gotel:0.1.0", "image ghcr.io/gotel-dev/gotel:0.1.0")
    check_render("chart, default values", default, schema)
    check_render("chart, ci/override-values.yaml", override, schema)

    print("plain manifest vs chart default render:")
    kinds_p = sorted(d["kind"] for d in plain)
    kinds_d = sorted(d["kind"] for d in default)
    check(kinds_p == kinds_d, f"same kinds: {', '.join(kinds_p)}", f"chart: {kinds_d}")
    check(container(plain)["securityContext"]["capabilities"] == container(default)["securityContext"]["capabilities"],
          "same container capabilities")
    p, d = by_key(plain), by_key(default)
    check(set(p) == set(d), "same objects (kind, namespace, name)", f"{sorted(set(p) ^ set(d))}")
    for key in sorted(set(p) & set(d)):
        delta = diff(normalize(p[key]), normalize(d[key]))
        check(not delta, f"{key[0]} {key[2]} identical but for Helm's labels and checksum",
              "\n        ".join(delta[:8]))

    print("chart, ci/override-values.yaml took effect:")
    oc = container(override)
    o_env = {e["name"]: e.get("value") for e in oc["env"]}
    check(not any(x["kind"] == "Namespace" for x in override), "no Namespace object with namespace.create=false")
    check(oc["image"].startswith("ghcr.io/gotel-dev/gotel@sha256:"), "image by digest")
    check("--metrics-addr" in oc["args"] and oc["args"][-1] == "0.0.0.0:9100", "metrics port 9100")
    check(o_env.get("OTEL_EXPORTER_OTLP_PROTOCOL") == "grpc" and o_env.get("GOTEL_LOG") == "debug",
          "otlp.protocol and extraEnv")
    check(daemon_config(override).get("inject_traceparent") == "off"
          and daemon_config(override).get("kubernetes") == "auto", "config values are strings, not YAML booleans")
    check("priorityClassName" not in one(override, "DaemonSet")["spec"]["template"]["spec"], "empty priorityClassName omitted")

    print("deploy/systemd:")
    unit = (root / "deploy/systemd/gotel.service").read_text()
    directives = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            directives.setdefault(k.strip(), []).append(v.strip())
    want_caps = sorted("CAP_" + x for x in CAPS)
    for k in ("AmbientCapabilities", "CapabilityBoundingSet"):
        got = sorted(" ".join(directives.get(k, [])).split())
        check(got == want_caps, f"{k} = the DaemonSet's capabilities", f"{got}")
    expected = {
        "ExecStart": f"/usr/local/bin/gotel daemon --config {CONFIG_PATH}",
        "EnvironmentFile": "-/etc/gotel/gotel.env",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "read-only",
        "Restart": "on-failure",
    }
    for k, v in expected.items():
        check(directives.get(k) == [v], f"{k}={v}", f"{directives.get(k)}")
    host_config = yaml.safe_load((root / "deploy/systemd/gotel.yaml").read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(host_config), key=str)
    check(not errors, "deploy/systemd/gotel.yaml matches the config schema", "; ".join(e.message for e in errors[:3]))
    check(host_config.get("metrics_addr", "").startswith("127.0.0.1:"), "host metrics on loopback")

    print("deploy/Dockerfile:")
    dockerfile = (root / "deploy/Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    check(cmd is not None and json.loads(cmd.group(1)) == ["daemon", "--config", CONFIG_PATH],
          "CMD is the DaemonSet's daemon --config")
    check(re.search(r"^ENTRYPOINT \[\"/usr/local/bin/gotel\"\]$", dockerfile, re.M) is not None,
          "ENTRYPOINT /usr/local/bin/gotel (as ExecStart)")
    check("cargo build --release --locked -p gotel" in dockerfile, "builds -p gotel, release, locked")
    ignored = [
        line.strip().strip("/") for line in (root / "deploy/Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    members = tomllib.loads((root / "Cargo.toml").read_text())["workspace"]["members"]
    needed = ["Cargo.toml", "Cargo.lock", *members]
    hidden = [m for m in needed if m.split("/")[0] in ignored]
    check(not hidden, "build context keeps Cargo.toml, Cargo.lock and every workspace member", f"{hidden}")

    print(f"{failures} check(s) failed" if failures else "all consistency checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
