#!/usr/bin/env python3
"""Checks the Kubernetes kit (deploy/kubernetes) offline; exits 1 naming every problem.

1. Every overlay renders with `kubectl kustomize`.
2. Every built-in object validates with `kubernetes-validate --strict` (unknown fields fail), every custom resource
   against its schema in deploy/kubernetes/schemas/ (strict too); a kind with neither fails.
3. The rules a relay deployment must keep, read from the rendered objects and the relay config they carry:
   non-root, read-only root filesystem, every capability dropped, seccomp RuntimeDefault, no privilege escalation;
   /readyz readiness, /healthz liveness and a startup probe on the admin port; a termination grace that covers the
   preStop pause and the drain, and a drain that covers the longest answer (the routes' total_timeout_ms); a memory
   request that covers max_streams at the measured cost per stream; an autoscaler on open streams per pod, a metric
   the relay exports; the Service exposing only the public port; a NetworkPolicy with egress rules; the
   PrometheusRule's groups equal to deploy/prometheus/ssegate-rules.yml; an overlay's relay.toml equal to the base's
   but for [store].

Usage: check-kubernetes.py KIT_DIR RULES_YML METRICS_RS
Needs kubectl, and kubernetes-validate (PyPI; it brings jsonschema and PyYAML) in the running Python.
"""

import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import jsonschema
import yaml

# Memory per open stream over TLS, measured (docs/performance.md: 24-25 KiB at 1000 streams), and an idle relay.
KIB_PER_STREAM = 25
IDLE_MIB = 15
BUILT_IN_GROUPS = {"v1", "apps/v1", "policy/v1", "networking.k8s.io/v1", "autoscaling/v2"}


def quantity_mib(q):
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for suffix, factor in units.items():
        if q.endswith(suffix):
            return float(q[: -len(suffix)]) * factor
    raise ValueError(f"memory quantity {q!r}: use Ki, Mi or Gi")


def render(overlay):
    out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay}: {out.stderr.strip()}")
    return out.stdout


def validate(objects, rendered_text, schemas, problems, where):
    built_in = [o for o in objects if o["apiVersion"] in BUILT_IN_GROUPS]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(yaml.safe_dump_all(built_in))
        f.flush()
        out = subprocess.run(
            [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", f.name],
            capture_output=True,
            text=True,
        )
    if out.returncode != 0 or "ERROR" in out.stdout or "WARN" in out.stdout:
        problems.append(f"{where}: kubernetes-validate --strict: {(out.stdout + out.stderr).strip()}")
    for o in objects:
        if o["apiVersion"] in BUILT_IN_GROUPS:
            continue
        group = o["apiVersion"].split("/")[0]
        version = o["apiVersion"].split("/")[-1]
        schema_path = schemas / f"{o['kind'].lower()}.{group}.{version}.json"
        if not schema_path.is_file():
            problems.append(f"{where}: {o['kind']} ({o['apiVersion']}): no schema at {schema_path}")
            continue
        try:
            jsonschema.validate(o, json.loads(schema_path.read_text()))
        except jsonschema.ValidationError as e:
            path = "/".join(str(p) for p in e.absolute_path)
            problems.append(f"{where}: {o['kind']}/{o['metadata']['name']}: {path}: {e.message}")


def relay_config(objects, deployment):
    volumes = deployment["spec"]["template"]["spec"].get("volumes", [])
    names = [v["configMap"]["name"] for v in volumes if "configMap" in v]
    for o in objects:
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] in names and "relay.toml" in o.get("data", {}):
            return tomllib.loads(o["data"]["relay.toml"])
    raise RuntimeError("no ConfigMap with relay.toml mounted by the Deployment")


def check_deployment(objects, problems, where):
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    if len(deployments) != 1:
        problems.append(f"{where}: want one Deployment, found {len(deployments)}")
        return None
    d = deployments[0]
    pod = d["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        problems.append(f"{where}: pod securityContext.runAsNonRoot must be true")
    if psc.get("runAsUser", 0) == 0:
        problems.append(f"{where}: pod securityContext.runAsUser must be a non-root uid")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: pod seccompProfile must be RuntimeDefault")
    relays = [c for c in pod["containers"] if c["name"] == "relay"]
    if len(relays) != 1:
        problems.append(f"{where}: no container named relay")
        return d
    c = relays[0]
    sc = c.get("securityContext", {})
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{where}: relay readOnlyRootFilesystem must be true")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}: relay allowPrivilegeEscalation must be false")
    if sc.get("runAsUser", psc.get("runAsUser", 0)) == 0:
        problems.append(f"{where}: relay runs as root")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
        problems.append(f"{where}: relay must drop ALL capabilities")
    if sc.get("capabilities", {}).get("add"):
        problems.append(f"{where}: relay adds capabilities {sc['capabilities']['add']}")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    config = relay_config(objects, d)
    admin_port = int(config.get("admin_listen", "127.0.0.1:9464").rsplit(":", 1)[1])
    public_port = int(config.get("listen", "127.0.0.1:8080").rsplit(":", 1)[1])
    if ports.get("admin") != admin_port or ports.get("http") != public_port:
        problems.append(f"{where}: container ports {ports} do not match the config's listeners")
    if not config.get("admin_listen", "").startswith("0.0.0.0:"):
        problems.append(f"{where}: admin_listen must listen on 0.0.0.0 for the kubelet's probes")
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")]:
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("admin", admin_port):
            problems.append(f"{where}: {probe} must GET {path} on the admin port, has {get}")
    # The drain: the preStop pause, then SIGTERM, then shutdown_grace_ms; the kubelet kills after the grace.
    pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    if pause <= 0:
        problems.append(f"{where}: a preStop sleep must let endpoint removal spread before SIGTERM")
    drain_s = config.get("shutdown_grace_ms", 30000) / 1000
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < pause + drain_s:
        problems.append(f"{where}: terminationGracePeriodSeconds {grace} < preStop {pause} + drain {drain_s}")
    longest = max((r.get("total_timeout_ms", 1800000) for r in config.get("routes", [])), default=0) / 1000
    if drain_s < longest:
        problems.append(f"{where}: shutdown_grace_ms ({drain_s} s) is shorter than the longest answer ({longest} s)")
    streams = config.get("max_streams", 10000)
    need = IDLE_MIB + streams * KIB_PER_STREAM / 1024
    req = c.get("resources", {}).get("requests", {}).get("memory")
    lim = c.get("resources", {}).get("limits", {}).get("memory")
    if req is None or quantity_mib(req) < need:
        problems.append(f"{where}: memory request {req} < {need:.0f} MiB for max_streams = {streams}")
    if lim is None or quantity_mib(lim) < quantity_mib(req or "0Mi"):
        problems.append(f"{where}: memory limit {lim} below the request")
    if d["spec"].get("strategy", {}).get("rollingUpdate", {}).get("maxUnavailable") != 0:
        problems.append(f"{where}: rolling updates must keep maxUnavailable 0")
    return d


def check_rest(objects, metrics_rs, rules, problems, where):
    for s in (o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "ssegate"):
        if any(p.get("targetPort") in ("admin", 9464) for p in s["spec"]["ports"]):
            problems.append(f"{where}: the public Service exposes the admin port")
    if not any(o["kind"] == "PodDisruptionBudget" for o in objects):
        problems.append(f"{where}: no PodDisruptionBudget")
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    if not policies or not all("Egress" in p["spec"].get("policyTypes", []) for p in policies):
        problems.append(f"{where}: a NetworkPolicy must restrict egress")
    for h in (o for o in objects if o["kind"] == "HorizontalPodAutoscaler"):
        for m in h["spec"].get("metrics", []):
            if m["type"] != "Pods":
                problems.append(f"{where}: the autoscaler must scale on open streams per pod, not {m['type']}")
                continue
            name = m["pods"]["metric"]["name"]
            if f'"{name}"' not in metrics_rs:
                problems.append(f"{where}: the autoscaler's metric {name} is not one the relay exports")
    for r in (o for o in objects if o["kind"] == "PrometheusRule"):
        if r["spec"].get("groups") != rules["groups"]:
            problems.append(f"{where}: PrometheusRule {r['metadata']['name']} differs from deploy/prometheus")


def main():
    kit, rules_path, metrics_path = (Path(a) for a in sys.argv[1:4])
    rules = yaml.safe_load(rules_path.read_text())
    metrics_rs = metrics_path.read_text()
    problems = []
    overlays = sorted(p for p in (kit / "overlays").iterdir() if p.is_dir())
    if not overlays:
        problems.append(f"{kit}: no overlays")
    # An overlay's own relay.toml differs from the base's only in what the overlay is for (the Redis store).
    base = tomllib.loads((kit / "base" / "relay.toml").read_text())
    for own in sorted(kit.glob("overlays/*/relay.toml")):
        config = tomllib.loads(own.read_text())
        config.pop("store", None)
        if config != base:
            problems.append(f"{own.relative_to(kit)}: differs from base/relay.toml beyond [store]")
    for overlay in overlays:
        where = f"overlays/{overlay.name}"
        try:
            text = render(overlay)
            objects = [o for o in yaml.safe_load_all(text) if o]
            validate(objects, text, kit / "schemas", problems, where)
            check_deployment(objects, problems, where)
            check_rest(objects, metrics_rs, rules, problems, where)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            problems.append(f"{where}: {type(e).__name__}: {e}")
        else:
            print(f"check-kubernetes: {where}: {len(objects)} objects rendered and checked")
    for p in problems:
        print(f"check-kubernetes: {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
