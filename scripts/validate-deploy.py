#!/usr/bin/env python3
"""Static checks of the deployment files, run by scripts/validate-deploy.sh (which installs the
tools first). Nothing here needs a Docker engine or a cluster.

- compose.yaml: the Compose spec's JSON schema (check-jsonschema's vendored copy), then the
  wiring: dependencies, health checks, commands, settings, mounts, ports.
- Dockerfile: parsed with BuildKit's own parser; stages, the packages built, a non-root user;
  the binaries it copies against `cargo metadata`.
- deploy/prometheus: `promtool check config`, and its targets against compose.yaml.
- deploy/grafana: the dashboard's JSON, its PromQL (`promtool check rules`), its metric names
  against common/src/metrics.rs, the provisioning files against compose.yaml.
- k8s/: every manifest against the Kubernetes schemas (kubernetes-validate, strict: unknown
  fields fail) or, for the operators' kinds, against deploy/schemas/crds; every kustomization
  rendered (`kubectl kustomize`) and each rendering checked as a whole: references between
  objects, probes, resources, security context, the autoscaler, the queue name.
- Self-test: broken copies of real files must fail each validator, so a check that passes
  everything is caught.

Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import base64
import copy
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import yaml
from referencing import Registry, Resource

import kubernetes_validate.utils as kv

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSIONS = ["1.30", "1.37"]  # the oldest the manifests need (preStop sleep), the newest known
SWITCHYARD_BINS = {"switchyard-ingress", "switchyard-worker", "switchyard-notifier"}
SUBCOMMANDS = {"serve", "migrate"}
# Secrets that the operators create, named after their custom resources.
GENERATED_SECRETS = {"Cluster": ["{name}-app", "{name}-superuser"], "RabbitmqCluster": ["{name}-default-user"]}
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.yaml",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_v1alpha1_triggerauthentication.yaml",
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): "rabbitmq.com_v1beta1_rabbitmqcluster.yaml",
    ("postgresql.cnpg.io/v1", "Cluster"): "postgresql.cnpg.io_v1_cluster.yaml",
}
KUSTOMIZE_KINDS = {"Kustomization", "Component"}


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failures: list[str] = []

    def ok(self, what: str) -> None:
        self.passed += 1
        print(f"[deploy] ok    {what}")

    def fail(self, what: str, why: str) -> None:
        self.failures.append(f"{what}: {why}")
        print(f"[deploy] FAIL  {what}: {why}")

    def check(self, what: str, problems: list[str]) -> None:
        if problems:
            for p in problems:
                self.fail(what, p)
        else:
            self.ok(what)


def rel(p: Path) -> str:
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def load_yaml_docs(path: Path) -> list:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def duration_seconds(text: str) -> float:
    """`25s`, `1m30s`, `300ms`, `2h` (Compose and Switchyard durations)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    total, pos = 0.0, 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text):
        if m.start() != pos:
            raise ValueError(f"bad duration {text!r}")
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"bad duration {text!r}")
    return total


# --- Compose ----------------------------------------------------------------------------------


def interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, $$ with `env`."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1) or m.group(4), m.group(2), m.group(3)
        cur = env.get(name)
        if op in (":-", "-"):
            if cur is None or (op == ":-" and cur == ""):
                return interpolate(arg, env)
            return cur
        if op in (":?", "?"):
            if cur is None or (op == ":?" and cur == ""):
                raise ValueError(f"${{{name}}} is required: {arg}")
            return cur
        return cur or ""

    return re.sub(r"\$\$|\$\{(\w+)(?:(:?[-?])((?:[^{}]|\{[^{}]*\})*))?\}|\$(\w+)", sub, value)


def run_check_jsonschema(venv_bin: Path, args: list[str], target: Path) -> tuple[bool, str]:
    exe = venv_bin / "check-jsonschema"
    proc = subprocess.run([str(exe), *args, str(target)], capture_output=True, text=True)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def check_compose_schema(report: Report, venv_bin: Path, path: Path, label: str | None = None) -> bool:
    ok, out = run_check_jsonschema(venv_bin, ["--builtin-schema", "vendor.compose-spec"], path)
    if label is None:
        if ok:
            report.ok(f"{rel(path)}: Compose spec JSON schema")
        else:
            report.fail(f"{rel(path)}: Compose spec JSON schema", out)
    return ok


def compose_problems(compose: dict, dockerfile_bins: set[str]) -> list[str]:
    problems: list[str] = []
    if "version" in compose:
        problems.append("top-level `version` is obsolete in the Compose spec; remove it")
    c = interpolate(compose, {})
    services = c.get("services") or {}
    needed = ["postgres", "rabbitmq", "jaeger", "migrate", "ingress", "worker", "notifier", "prometheus", "grafana"]
    for name in needed:
        if name not in services:
            problems.append(f"service `{name}` is missing")
    ours = {n: s for n, s in services.items() if isinstance(s.get("command"), list) and s["command"] and s["command"][0] in SWITCHYARD_BINS}
    for n in ("migrate", "ingress", "worker", "notifier"):
        if n in services and n not in ours:
            problems.append(f"`{n}` must run a Switchyard binary as an exec-form command")
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            if dep not in services:
                problems.append(f"`{name}` depends on unknown service `{dep}`")
                continue
            cond = (spec or {}).get("condition", "service_started")
            if cond == "service_healthy" and "healthcheck" not in services[dep]:
                problems.append(f"`{name}` waits for `{dep}` to be healthy, but `{dep}` has no healthcheck")
            if cond == "service_completed_successfully" and services[dep].get("restart", "no") not in ("no", None):
                problems.append(f"`{name}` waits for `{dep}` to complete, but `{dep}` restarts")
    for name, svc in ours.items():
        binary, *rest = svc["command"]
        if binary not in dockerfile_bins:
            problems.append(f"`{name}` runs {binary}, which the Dockerfile does not install")
        if not rest or rest[0] not in SUBCOMMANDS:
            problems.append(f"`{name}`: the subcommand must be one of {sorted(SUBCOMMANDS)}")
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        for key in ("SWITCHYARD_DATABASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            if key not in env:
                problems.append(f"`{name}` lacks {key}")
        if rest and rest[0] == "serve":
            for key in ("SWITCHYARD_AMQP_URL", "SWITCHYARD_MASTER_KEY"):
                if key not in env:
                    problems.append(f"`{name}` lacks {key}")
            deps = svc.get("depends_on") or {}
            if (deps.get("migrate") or {}).get("condition") != "service_completed_successfully":
                problems.append(f"`{name}` must start after `migrate` completed successfully")
            if (deps.get("rabbitmq") or {}).get("condition") != "service_healthy":
                problems.append(f"`{name}` must wait for a healthy `rabbitmq`")
        key = env.get("SWITCHYARD_MASTER_KEY")
        if key is not None:
            try:
                if len(base64.b64decode(key, validate=True)) != 32:
                    raise ValueError
            except ValueError:
                problems.append(f"`{name}`: SWITCHYARD_MASTER_KEY's default is not 32 bytes of base64")
        secret = env.get("SWITCHYARD_WEBHOOK_SECRET")
        if secret is not None:
            try:
                if not secret.startswith("whsec_") or not 24 <= len(base64.b64decode(secret[6:], validate=True)) <= 64:
                    raise ValueError
            except ValueError:
                problems.append(f"`{name}`: SWITCHYARD_WEBHOOK_SECRET's default is not whsec_ and 24 to 64 bytes of base64")
        token = env.get("SWITCHYARD_ADMIN_TOKEN")
        if token is not None and len(token) < 16:
            problems.append(f"`{name}`: SWITCHYARD_ADMIN_TOKEN's default is shorter than 16 characters")
        amqp = env.get("SWITCHYARD_AMQP_URL", "")
        m = re.match(r"amqp://([^:@/]+):([^@/]+)@([^:/]+)", amqp)
        rmq_env = (services.get("rabbitmq") or {}).get("environment") or {}
        if amqp and not m:
            problems.append(f"`{name}`: SWITCHYARD_AMQP_URL has no user and password")
        elif m:
            if m.group(1) == "guest":
                problems.append(f"`{name}`: RabbitMQ 4 refuses `guest` from other hosts")
            if (m.group(1), m.group(2)) != (rmq_env.get("RABBITMQ_DEFAULT_USER"), rmq_env.get("RABBITMQ_DEFAULT_PASS")):
                problems.append(f"`{name}`: SWITCHYARD_AMQP_URL's credentials are not rabbitmq's RABBITMQ_DEFAULT_USER/PASS")
            if m.group(3) not in services:
                problems.append(f"`{name}`: SWITCHYARD_AMQP_URL names unknown host {m.group(3)}")
        db = env.get("SWITCHYARD_DATABASE_URL", "")
        m = re.match(r"postgres(?:ql)?://([^:@/]+):([^@/]+)@([^:/]+)(?::\d+)?/(\w+)", db)
        pg_env = (services.get("postgres") or {}).get("environment") or {}
        if not m:
            problems.append(f"`{name}`: SWITCHYARD_DATABASE_URL is not postgres://user:password@host/db")
        elif (m.group(1), m.group(2), m.group(4)) != (pg_env.get("POSTGRES_USER"), pg_env.get("POSTGRES_PASSWORD"), pg_env.get("POSTGRES_DB")):
            problems.append(f"`{name}`: SWITCHYARD_DATABASE_URL does not match postgres's POSTGRES_USER/PASSWORD/DB")
        if binary in ("switchyard-worker", "switchyard-notifier") and rest[:1] == ["serve"]:
            if env.get("SWITCHYARD_OPS_LISTEN") != "0.0.0.0:9100":
                problems.append(f"`{name}`: SWITCHYARD_OPS_LISTEN must be 0.0.0.0:9100 (Prometheus scrapes it)")
        if binary == "switchyard-ingress" and rest[:1] == ["serve"]:
            if not str(env.get("SWITCHYARD_INGRESS_LISTEN", "")).startswith("0.0.0.0:"):
                problems.append(f"`{name}`: SWITCHYARD_INGRESS_LISTEN must listen on 0.0.0.0 in a container")
        if binary == "switchyard-worker" and rest[:1] == ["serve"]:
            grace = duration_seconds(str(env.get("SWITCHYARD_SHUTDOWN_GRACE", "10s")))
            stop = duration_seconds(str(svc.get("stop_grace_period", "10s")))
            if stop < grace + 3:
                problems.append(f"`{name}`: stop_grace_period ({stop:g}s) must exceed SWITCHYARD_SHUTDOWN_GRACE ({grace:g}s) by a few seconds")
            replicas = str((svc.get("deploy") or {}).get("replicas", 1))
            if not replicas.isdigit() or int(replicas) < 2:
                problems.append(f"`{name}`: run at least 2 workers (deploy.replicas is {replicas})")
    published: dict[str, str] = {}
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            spec = str(port) if not isinstance(port, dict) else f"{port.get('host_ip', '')}:{port.get('published')}:{port.get('target')}"
            host = spec.rsplit(":", 1)[0]
            if host in published:
                problems.append(f"host port {host} published by both `{published[host]}` and `{name}`")
            published[host] = name
        for vol in svc.get("volumes") or []:
            src = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith("./") and not (ROOT / src).exists():
                problems.append(f"`{name}` mounts {src}, which does not exist")
            if not src.startswith((".", "/")) and src and src not in (c.get("volumes") or {}):
                problems.append(f"`{name}` uses volume `{src}`, not declared under `volumes`")
    return problems


# --- Dockerfile -------------------------------------------------------------------------------


def dockerfile_info(path: Path) -> tuple[list[str], set[str]]:
    """Problems, and the binaries copied into the final image."""
    import dockerfile  # BuildKit's parser, from PyPI

    problems: list[str] = []
    cmds = dockerfile.parse_file(str(path))
    stages = [c for c in cmds if c.cmd == "FROM"]
    if len(stages) < 2:
        problems.append("expected a build stage and a runtime stage")
    if stages and not stages[0].value[0].startswith("rust:"):
        problems.append(f"the build stage should start FROM rust:…, not {stages[0].value[0]}")
    build = " ".join(" ".join(c.value) for c in cmds if c.cmd == "RUN")
    if "cargo build" not in build or "--release" not in build or "--locked" not in build:
        problems.append("the build must run `cargo build --release --locked`")
    cargo_cmd = build[build.find("cargo build"):].split("&&")[0] if "cargo build" in build else ""
    packages = set(re.findall(r"(?:-p|--package)\s+(\S+)", cargo_cmd))
    copied = set(re.findall(r"target/release/(switchyard-[a-z]+)", build))
    final = cmds[cmds.index(stages[-1]):] if stages else []
    users = [c.value[0] for c in final if c.cmd == "USER"]
    if not users or users[-1].split(":")[0] in ("0", "root"):
        problems.append("the final stage must switch to a non-root USER")
    if not any(c.cmd == "COPY" and any(f.startswith("--from=") for f in c.flags) for c in final):
        problems.append("the final stage copies nothing from the build stage")
    # Against the workspace: every binary copied is a bin target of a package built with -p.
    cargo = shutil.which("cargo")
    if cargo:
        proc = subprocess.run([cargo, "metadata", "--no-deps", "--format-version", "1", "--offline"],
                              capture_output=True, text=True, cwd=ROOT)
        if proc.returncode == 0:
            meta = json.loads(proc.stdout)
            bins = {t["name"]: p["name"] for p in meta["packages"] for t in p["targets"] if "bin" in t["kind"]}
            for b in sorted(copied):
                if b not in bins:
                    problems.append(f"copies {b}, which is no bin target of the workspace")
                elif bins[b] not in packages:
                    problems.append(f"copies {b} but does not build its package {bins[b]} (-p)")
            for p in sorted(packages):
                if p not in {v for v in bins.values()}:
                    problems.append(f"builds -p {p}, which is no package of the workspace")
        else:
            problems.append(f"cargo metadata failed: {proc.stderr.strip()[:300]}")
    else:
        print("[deploy] note  cargo not found: the Dockerfile's binaries are not checked against the workspace")
    for b in SWITCHYARD_BINS - copied:
        problems.append(f"the image lacks {b}")
    ignore = (ROOT / ".dockerignore").read_text() if (ROOT / ".dockerignore").exists() else ""
    if not re.search(r"^/?target/?$", ignore, re.M):
        problems.append(".dockerignore must exclude target/")
    return problems, copied


# --- Prometheus and Grafana -------------------------------------------------------------------


def promtool_run(promtool: str | None, args: list[str]) -> tuple[bool, str]:
    proc = subprocess.run([promtool, *args], capture_output=True, text=True)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def prometheus_problems(config: dict, compose: dict) -> list[str]:
    problems: list[str] = []
    services = compose.get("services") or {}
    expected = {"switchyard-ingress": ("ingress", 8080), "switchyard-worker": ("worker", 9100),
                "switchyard-notifier": ("notifier", 9100)}
    jobs = {j.get("job_name"): j for j in config.get("scrape_configs") or []}
    for job, (svc, port) in expected.items():
        j = jobs.get(job)
        if not j:
            problems.append(f"no scrape job `{job}`")
            continue
        targets = [t for sc in j.get("static_configs") or [] for t in sc.get("targets") or []]
        targets += [f"{n}:{d.get('port')}" for d in j.get("dns_sd_configs") or [] for n in d.get("names") or []]
        if f"{svc}:{port}" not in targets:
            problems.append(f"job `{job}` does not scrape {svc}:{port} (has {targets})")
        if j.get("metrics_path", "/metrics") != "/metrics":
            problems.append(f"job `{job}` scrapes {j['metrics_path']}, not /metrics")
    for job in jobs.values():
        for sc in job.get("static_configs") or []:
            for t in sc.get("targets") or []:
                if t.split(":")[0] not in services:
                    problems.append(f"job `{job['job_name']}` targets {t}, no compose service of that name")
    return problems


def metric_names_from_source() -> tuple[set[str], set[str]] | None:
    """The metric names common/src/metrics.rs declares, and which of them are histograms."""
    src = ROOT / "common" / "src" / "metrics.rs"
    if not src.exists():
        return None
    consts = dict(re.findall(r'pub const (\w+): &str = "(switchyard_[a-z_]+)"', src.read_text()))
    names = set(consts.values())
    # Histograms: recorded with histogram!, or named *_seconds and never set as a gauge.
    recorded: dict[str, set[str]] = {"histogram": set(), "gauge": set()}
    for crate in ("common", "ingress", "worker", "notifier"):
        for f in (ROOT / crate).rglob("*.rs"):
            for kind, const in re.findall(r"\b(histogram|gauge)!\(\s*(?:[\w:]*::)?([A-Z_]+)\b", f.read_text()):
                if const in consts:
                    recorded[kind].add(consts[const])
    histograms = recorded["histogram"] | {n for n in names if n.endswith("_seconds") and n not in recorded["gauge"]}
    return names, histograms


def exprs_of(dashboard: dict) -> list[tuple[str, str]]:
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets") or []:
                if t.get("expr"):
                    out.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels") or [])

    walk(dashboard.get("panels") or [])
    for v in (dashboard.get("templating") or {}).get("list") or []:
        q = v.get("query")
        if isinstance(q, dict) and q.get("query"):
            out.append((f"variable {v.get('name')}", q["query"]))
    return out


def dashboard_problems(dashboard: dict, known: tuple[set[str], set[str]] | None) -> list[str]:
    problems: list[str] = []
    for key in ("uid", "title", "panels", "schemaVersion"):
        if key not in dashboard:
            problems.append(f"no `{key}`")
    if not 36 <= int(dashboard.get("schemaVersion", 0)) <= 41:
        problems.append(f"schemaVersion {dashboard.get('schemaVersion')} is outside 36..41")
    variables = {v.get("name"): v for v in (dashboard.get("templating") or {}).get("list") or []}
    ids = set()

    def walk(panels):
        for p in panels:
            if p.get("id") in ids:
                problems.append(f"panel id {p.get('id')} is used twice")
            ids.add(p.get("id"))
            g = p.get("gridPos") or {}
            if not g or g.get("x", 0) + g.get("w", 0) > 24:
                problems.append(f"panel {p.get('title')!r}: gridPos missing or wider than 24")
            if p.get("type") != "row":
                ds = p.get("datasource") or {}
                if ds.get("type") != "prometheus" or ds.get("uid") != "${datasource}":
                    problems.append(f"panel {p.get('title')!r}: datasource must be the ${{datasource}} variable")
                if not p.get("targets"):
                    problems.append(f"panel {p.get('title')!r} has no query")
            walk(p.get("panels") or [])

    walk(dashboard.get("panels") or [])
    if "datasource" not in variables:
        problems.append("no `datasource` variable")
    used = set()
    for title, expr in exprs_of(dashboard):
        for var in re.findall(r"\$(\w+)", expr):
            if not var.startswith("__") and var not in variables:
                problems.append(f"{title!r} uses ${var}, which is not a dashboard variable")
        for name in re.findall(r"\b(switchyard_[a-z_]+)\b", expr):
            used.add(name)
    if known:
        names, histograms = known
        for name in sorted(used):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name in names or (base in histograms and base != name):
                continue
            problems.append(f"{name} is not a metric of common/src/metrics.rs (histograms: _bucket, _sum, _count)")
        used_bases = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
        for name in sorted(names - used_bases):
            problems.append(f"{name} (common/src/metrics.rs) has no panel")
    return problems


def promql_rules_file(dashboard: dict) -> str:
    """Each query as a recording rule, so that `promtool check rules` parses its PromQL."""
    rules = []
    for i, (title, expr) in enumerate(exprs_of(dashboard)):
        if expr.startswith("label_values("):
            continue
        e = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
        e = re.sub(r"\$\w+", ".*", e)
        rules.append({"record": f"dashboard:check_{i}", "expr": e})
    return yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})


def grafana_provisioning_problems(compose: dict, dashboard: dict) -> list[str]:
    problems: list[str] = []
    prov = ROOT / "deploy" / "grafana" / "provisioning"
    ds_files = sorted((prov / "datasources").glob("*.y*ml"))
    db_files = sorted((prov / "dashboards").glob("*.y*ml"))
    if not ds_files or not db_files:
        return ["deploy/grafana/provisioning needs datasources/ and dashboards/ files"]
    datasources = [d for f in ds_files for doc in load_yaml_docs(f) for d in doc.get("datasources") or []]
    uids = {d.get("uid"): d for d in datasources}
    default = ((next((v for v in dashboard.get("templating", {}).get("list", []) if v.get("name") == "datasource"), {})
                .get("current") or {}).get("value"))
    if default not in uids or uids[default].get("type") != "prometheus":
        problems.append(f"the dashboard's default data source `{default}` is no provisioned Prometheus uid")
    services = (compose.get("services") or {})
    for d in datasources:
        host = re.sub(r"^https?://([^:/]+).*", r"\1", d.get("url", ""))
        if host not in services:
            problems.append(f"data source {d.get('name')} points at {host}, no compose service")
    grafana = services.get("grafana") or {}
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana.get("volumes") or [] if isinstance(v, str) and v.count(":") >= 1}
    for f in db_files:
        for doc in load_yaml_docs(f):
            for p in doc.get("providers") or []:
                path = (p.get("options") or {}).get("path")
                if mounts.get(path) != "./deploy/grafana/dashboards":
                    problems.append(f"provider {p.get('name')} reads {path}, where compose does not mount deploy/grafana/dashboards")
    if mounts.get("/etc/grafana/provisioning") != "./deploy/grafana/provisioning":
        problems.append("compose does not mount deploy/grafana/provisioning at /etc/grafana/provisioning")
    return problems


# --- Kubernetes -------------------------------------------------------------------------------


def k8s_definitions_registry(version: str) -> tuple[Registry, str]:
    base = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    dirs = sorted((d.name for d in base.iterdir() if d.name.startswith(f"v{version}.") and d.name.endswith("-local-strict")))
    if not dirs:
        raise SystemExit(f"kubernetes-validate has no schemas for {version}")
    defs = json.loads((base / dirs[-1] / "_definitions.json").read_text())
    resource = Resource.from_contents(defs)
    return Registry().with_resource(defs["$id"], resource), defs["$id"]


def openapi_to_jsonschema(node, defs_id: str):
    """A CRD's structural schema as JSON Schema, as the API server applies it: unknown fields
    are refused (strict field validation) unless preserved; int-or-string; nullable."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(n, defs_id) for n in node]
    if not isinstance(node, dict):
        return node
    if "x-k8s-ref" in node:
        return {"$ref": f"{defs_id}#/$defs/{node['x-k8s-ref']}"}
    out = {}
    for k, v in node.items():
        if k in ("description", "default", "format", "x-kubernetes-validations", "x-kubernetes-list-type",
                 "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "x-kubernetes-embedded-resource"):
            continue
        if k in ("properties",):
            out[k] = {pk: openapi_to_jsonschema(pv, defs_id) for pk, pv in v.items()}
        elif k in ("items", "additionalProperties", "anyOf", "allOf", "oneOf", "not"):
            out[k] = openapi_to_jsonschema(v, defs_id)
        elif k in ("x-pruned", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string", "nullable"):
            continue
        else:
            out[k] = v
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields") and not node.get("x-pruned"):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


class K8sValidator:
    def __init__(self, versions: list[str]) -> None:
        self.versions = versions
        self.crds: dict[tuple[str, str], dict] = {}
        self.registry, defs_id = k8s_definitions_registry(versions[-1])
        for key, fname in CRD_SCHEMAS.items():
            raw = yaml.safe_load((ROOT / "deploy" / "schemas" / "crds" / fname).read_text())
            schema = openapi_to_jsonschema(raw, defs_id)
            schema["properties"]["metadata"] = {"$ref": f"{defs_id}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
            schema["properties"]["apiVersion"] = {"const": key[0]}
            schema["properties"]["kind"] = {"const": key[1]}
            schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
            schema["additionalProperties"] = False
            jsonschema.Draft202012Validator.check_schema(schema)
            self.crds[key] = schema

    def errors(self, doc: dict) -> list[str]:
        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            return ["not a Kubernetes object (apiVersion and kind)"]
        key = (doc["apiVersion"], doc["kind"])
        if key in self.crds:
            v = jsonschema.Draft202012Validator(self.crds[key], registry=self.registry)
            return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in
                    sorted(v.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))][:10]
        out = []
        for version in self.versions:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as e:
                out.append(f"k8s {version}: {'.'.join(map(str, e.path)) or '(root)'}: {e.message}")
            except kv.SchemaNotFoundError:
                out.append(f"no schema for {doc['apiVersion']} {doc['kind']} (neither Kubernetes {version} nor deploy/schemas/crds)")
                break
        return out


def kustomization_files(k8s: Path) -> list[Path]:
    return sorted(p for p in k8s.rglob("kustomization.y*ml"))


def kustomize_structure_problems(k8s: Path) -> list[str]:
    """Every path a kustomization names exists, and every manifest is named by one."""
    problems: list[str] = []
    referenced: set[Path] = set()
    for kfile in kustomization_files(k8s):
        doc = yaml.safe_load(kfile.read_text())
        if doc.get("kind") not in KUSTOMIZE_KINDS:
            problems.append(f"{rel(kfile)}: kind must be Kustomization or Component")
        for key in ("resources", "components"):
            for entry in doc.get(key) or []:
                target = (kfile.parent / entry).resolve()
                if not target.exists():
                    problems.append(f"{rel(kfile)}: {key} entry {entry} does not exist")
                elif target.is_dir() and not any(target.glob("kustomization.y*ml")):
                    problems.append(f"{rel(kfile)}: {entry} is a directory without a kustomization")
                elif key == "components" and target.is_dir():
                    kind = yaml.safe_load(next(target.glob("kustomization.y*ml")).read_text()).get("kind")
                    if kind != "Component":
                        problems.append(f"{rel(kfile)}: {entry} is listed as a component but is a {kind}")
                referenced.add(target)
        for gen in doc.get("configMapGenerator") or []:
            for f in gen.get("files") or []:
                target = (kfile.parent / f.split("=", 1)[-1]).resolve()
                if not target.exists():
                    problems.append(f"{rel(kfile)}: configMapGenerator file {f} does not exist")
                referenced.add(target)
    for manifest in sorted(k8s.rglob("*.y*ml")):
        if manifest.name.startswith("kustomization."):
            continue
        if manifest.resolve() not in referenced:
            problems.append(f"{rel(manifest)} is in no kustomization")
    return problems


def render(kdir: Path) -> tuple[list[dict] | None, str]:
    kubectl = shutil.which("kubectl")
    if kubectl:
        proc = subprocess.run([kubectl, "kustomize", str(kdir)], capture_output=True, text=True)
        if proc.returncode != 0:
            return None, proc.stderr.strip()
        return [d for d in yaml.safe_load_all(proc.stdout) if d], "kubectl kustomize"
    return emulate_kustomize(kdir), "built-in assembly (kubectl not found)"


def emulate_kustomize(kdir: Path) -> list[dict]:
    """What these kustomizations use of kustomize (resources, components, namespace, labels,
    images, configMapGenerator), for machines without kubectl."""
    kfile = next(kdir.glob("kustomization.y*ml"))
    k = yaml.safe_load(kfile.read_text())
    docs: list[dict] = []
    for entry in (k.get("resources") or []) + (k.get("components") or []):
        target = kdir / entry
        docs += emulate_kustomize(target) if target.is_dir() else load_yaml_docs(target)
    for gen in k.get("configMapGenerator") or []:
        data = {}
        for f in gen.get("files") or []:
            key, _, path = f.rpartition("=")
            data[key or Path(path).name] = (kdir / path).read_text()
        opts = gen.get("options") or {}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": gen["name"], "labels": opts.get("labels") or {}}, "data": data})
    for d in docs:
        if k.get("namespace") and d["kind"] != "Namespace":
            d["metadata"]["namespace"] = k["namespace"]
        for lab in k.get("labels") or []:
            d["metadata"].setdefault("labels", {}).update(lab.get("pairs") or {})
        for img in k.get("images") or []:
            for c in pod_containers(d):
                if c.get("image", "").split(":")[0] == img["name"]:
                    c["image"] = f"{img.get('newName', img['name'])}:{img.get('newTag', 'latest')}"
    return docs


def pod_spec(doc: dict) -> dict | None:
    if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return ((doc.get("spec") or {}).get("template") or {}).get("spec")
    return None


def pod_containers(doc: dict, init: bool = True) -> list[dict]:
    spec = pod_spec(doc) or {}
    return (spec.get("initContainers") or [] if init else []) + (spec.get("containers") or [])


def selector_matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def rendered_problems(docs: list[dict], name: str) -> list[str]:
    problems: list[str] = []
    by_kind: dict[str, dict[str, dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    secrets = set(by_kind.get("Secret", {}))
    for kind, patterns in GENERATED_SECRETS.items():
        for n in by_kind.get(kind, {}):
            secrets |= {p.format(name=n) for p in patterns}
    configmaps = set(by_kind.get("ConfigMap", {}))
    deployments = by_kind.get("Deployment", {})
    for d in docs:
        if d["kind"] != "Namespace" and not d["metadata"].get("namespace"):
            problems.append(f"{d['kind']}/{d['metadata']['name']} has no namespace")
    for dname, dep in deployments.items():
        spec = dep["spec"]
        tmpl_labels = spec["template"]["metadata"].get("labels") or {}
        if not selector_matches(spec["selector"].get("matchLabels") or {}, tmpl_labels):
            problems.append(f"Deployment/{dname}: selector does not match its pod labels")
    for d in docs:
        ps = pod_spec(d)
        if ps is None:
            continue
        where = f"{d['kind']}/{d['metadata']['name']}"
        psc = ps.get("securityContext") or {}
        if not psc.get("runAsNonRoot"):
            problems.append(f"{where}: pod securityContext.runAsNonRoot must be true")
        if ps.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: set automountServiceAccountToken: false (no API access is needed)")
        volumes = {v["name"]: v for v in ps.get("volumes") or []}
        for v in volumes.values():
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                problems.append(f"{where}: volume {v['name']} mounts unknown ConfigMap {v['configMap']['name']}")
        for c in pod_containers(d):
            cw = f"{where} container {c['name']}"
            sc = c.get("securityContext") or {}
            if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation") is not False \
                    or "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{cw}: needs readOnlyRootFilesystem, allowPrivilegeEscalation: false, drop ALL")
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                if "memory" not in (res.get(part) or {}):
                    problems.append(f"{cw}: no memory {part}")
            if "cpu" not in (res.get("requests") or {}):
                problems.append(f"{cw}: no cpu request")
            if str(c.get("image", "")).split(":")[0] == "switchyard":
                problems.append(f"{cw}: image `switchyard` was not replaced (kustomization `images`)")
            for m in c.get("volumeMounts") or []:
                if m["name"] not in volumes:
                    problems.append(f"{cw}: mounts unknown volume {m['name']}")
            for ef in c.get("envFrom") or []:
                if "configMapRef" in ef and ef["configMapRef"]["name"] not in configmaps:
                    problems.append(f"{cw}: envFrom unknown ConfigMap {ef['configMapRef']['name']}")
                if "secretRef" in ef and ef["secretRef"]["name"] not in secrets:
                    problems.append(f"{cw}: envFrom unknown Secret {ef['secretRef']['name']}")
            seen = set()
            for cm in c.get("envFrom") or []:
                if "configMapRef" in cm and cm["configMapRef"]["name"] in configmaps:
                    seen |= set((by_kind["ConfigMap"][cm["configMapRef"]["name"]].get("data") or {}))
            for e in c.get("env") or []:
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    if ref["name"] not in secrets:
                        problems.append(f"{cw}: {e['name']} reads unknown Secret {ref['name']}")
                    elif ref["name"] in by_kind.get("Secret", {}):
                        s = by_kind["Secret"][ref["name"]]
                        if ref["key"] not in {**(s.get("data") or {}), **(s.get("stringData") or {})}:
                            problems.append(f"{cw}: {e['name']} reads key {ref['key']}, not in Secret {ref['name']}")
                for var in re.findall(r"\$\((\w+)\)", str(e.get("value", ""))):
                    if var not in seen:
                        problems.append(f"{cw}: {e['name']} uses $({var}) before it is defined")
                seen.add(e["name"])
            cmd = c.get("command") or []
            if cmd and cmd[0].startswith("switchyard-"):
                if cmd[0] not in SWITCHYARD_BINS or cmd[1:2] not in ([s] for s in SUBCOMMANDS):
                    problems.append(f"{cw}: runs {' '.join(cmd)}: not a Switchyard binary and subcommand")
                env = {e["name"]: e.get("value") for e in c.get("env") or []}
                if cmd[1:2] == ["serve"]:
                    ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
                    for probe in ("livenessProbe", "readinessProbe"):
                        pr = c.get(probe) or {}
                        get = pr.get("httpGet") or {}
                        want = "/healthz" if probe == "livenessProbe" else "/readyz"
                        if get.get("path") != want:
                            problems.append(f"{cw}: {probe} must GET {want}")
                        port = get.get("port")
                        if isinstance(port, str) and port not in ports:
                            problems.append(f"{cw}: {probe} uses port {port}, not a container port name")
                    if cmd[0] == "switchyard-ingress":
                        if env.get("SWITCHYARD_INGRESS_LISTEN") != "0.0.0.0:8080" or 8080 not in ports.values():
                            problems.append(f"{cw}: the ingress must listen on 0.0.0.0:8080 and expose 8080")
                    else:
                        if env.get("SWITCHYARD_OPS_LISTEN") != "0.0.0.0:9100" or 9100 not in ports.values():
                            problems.append(f"{cw}: SWITCHYARD_OPS_LISTEN must be 0.0.0.0:9100, exposed")
                    if cmd[0] == "switchyard-worker":
                        grace = duration_seconds(env.get("SWITCHYARD_SHUTDOWN_GRACE") or "10s")
                        tgp = ps.get("terminationGracePeriodSeconds", 30)
                        if tgp < grace + 10:
                            problems.append(f"{where}: terminationGracePeriodSeconds ({tgp}) must exceed SWITCHYARD_SHUTDOWN_GRACE ({grace:g}s) by 10 s or more")
                    for key in ("SWITCHYARD_DATABASE_URL", "SWITCHYARD_AMQP_URL"):
                        if key not in env:
                            problems.append(f"{cw}: {key} is not set")
    for sname, svc in by_kind.get("Service", {}).items():
        sel = svc["spec"].get("selector") or {}
        targets = [d for d in deployments.values() if selector_matches(sel, d["spec"]["template"]["metadata"].get("labels") or {})]
        if not targets:
            problems.append(f"Service/{sname} selects no Deployment")
            continue
        names = {p.get("name") for d in targets for c in pod_containers(d, init=False) for p in c.get("ports") or []}
        for p in svc["spec"].get("ports") or []:
            tp = p.get("targetPort")
            if isinstance(tp, str) and tp not in names:
                problems.append(f"Service/{sname}: targetPort {tp} is no container port of {targets[0]['metadata']['name']}")
    for pname, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        sel = pdb["spec"]["selector"].get("matchLabels") or {}
        if not any(selector_matches(sel, d["spec"]["template"]["metadata"].get("labels") or {}) for d in deployments.values()):
            problems.append(f"PodDisruptionBudget/{pname} selects no Deployment")
    for iname, ing in by_kind.get("Ingress", {}).items():
        for r in ing["spec"].get("rules") or []:
            for p in (r.get("http") or {}).get("paths") or []:
                svc = p["backend"]["service"]
                s = by_kind.get("Service", {}).get(svc["name"])
                if not s:
                    problems.append(f"Ingress/{iname} routes to unknown Service {svc['name']}")
                elif svc["port"].get("name") and svc["port"]["name"] not in {q.get("name") for q in s["spec"]["ports"]}:
                    problems.append(f"Ingress/{iname} routes to port {svc['port']['name']}, not on Service {svc['name']}")
    # The workers' autoscaler: exactly one of HPA and ScaledObject.
    hpas = [h for h in by_kind.get("HorizontalPodAutoscaler", {}).values() if h["spec"]["scaleTargetRef"]["name"] == "switchyard-worker"]
    sos = [s for s in by_kind.get("ScaledObject", {}).values() if s["spec"]["scaleTargetRef"]["name"] == "switchyard-worker"]
    if len(hpas) + len(sos) != 1:
        problems.append(f"the worker needs exactly one autoscaler, HPA or KEDA ScaledObject (has {len(hpas)} + {len(sos)})")
    for h in by_kind.get("HorizontalPodAutoscaler", {}).values():
        if h["spec"]["scaleTargetRef"]["name"] not in deployments:
            problems.append(f"HorizontalPodAutoscaler/{h['metadata']['name']} targets no Deployment")
        if h["spec"].get("minReplicas", 1) < 1:
            problems.append("the worker HPA must keep at least one worker (the reaper and sweepers run there)")
    if "switchyard-worker" in deployments and (hpas or sos) and "replicas" in deployments["switchyard-worker"]["spec"]:
        problems.append("Deployment/switchyard-worker sets replicas; its autoscaler owns them")
    config = (by_kind.get("ConfigMap", {}).get("switchyard-config") or {}).get("data") or {}
    prefix = config.get("SWITCHYARD_AMQP_PREFIX", "switchyard.")
    for so in by_kind.get("ScaledObject", {}).values():
        spec = so["spec"]
        if spec["scaleTargetRef"]["name"] not in deployments:
            problems.append(f"ScaledObject/{so['metadata']['name']} targets no Deployment")
        lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if lo > hi:
            problems.append(f"ScaledObject/{so['metadata']['name']}: minReplicaCount must be <= maxReplicaCount")
        if lo < 1:
            problems.append(f"ScaledObject/{so['metadata']['name']}: minReplicaCount must be >= 1 (the reaper and sweepers run in workers)")
        auths = by_kind.get("TriggerAuthentication", {})
        for t in spec["triggers"]:
            if t["type"] == "rabbitmq":
                if t["metadata"].get("queueName") != f"{prefix}runs":
                    problems.append(f"ScaledObject: queueName {t['metadata'].get('queueName')} is not {prefix}runs (SWITCHYARD_AMQP_PREFIX + runs)")
                ns = so["metadata"].get("namespace")
                host = t["metadata"].get("host", "")
                rmq = next(iter(by_kind.get("RabbitmqCluster", {})), None)
                if rmq and f"{rmq}.{ns}.svc" not in host:
                    problems.append(f"ScaledObject: host {host} should name {rmq}.{ns}.svc (KEDA runs in another namespace)")
            ref = (t.get("authenticationRef") or {}).get("name")
            if ref and ref not in auths:
                problems.append(f"ScaledObject: authenticationRef {ref} is no TriggerAuthentication")
        for a in auths.values():
            for r in a["spec"].get("secretTargetRef") or []:
                if r["name"] not in secrets:
                    problems.append(f"TriggerAuthentication/{a['metadata']['name']} reads unknown Secret {r['name']}")
    return problems


def collector_problems(docs: list[dict]) -> list[str]:
    problems = []
    for d in docs:
        if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == "otel-collector-config":
            conf = yaml.safe_load(d["data"]["config.yaml"])
            for pname, pipe in ((conf.get("service") or {}).get("pipelines") or {}).items():
                for section in ("receivers", "processors", "exporters"):
                    for comp in pipe.get(section) or []:
                        if comp not in (conf.get(section) or {}):
                            problems.append(f"pipeline {pname} uses {section[:-1]} {comp}, which is not configured")
            for ext in (conf.get("service") or {}).get("extensions") or []:
                if ext not in (conf.get("extensions") or {}):
                    problems.append(f"extension {ext} is not configured")
    return problems


# --- Self-test --------------------------------------------------------------------------------


def self_test(report: Report, validator: K8sValidator, venv_bin: Path, compose_text: str, known) -> None:
    """Each validator must refuse a broken copy of a real file."""
    base = {(d["kind"], d["metadata"]["name"]): d for f in sorted((ROOT / "k8s").rglob("*.yaml"))
            if not f.name.startswith("kustomization.") for d in load_yaml_docs(f)}

    def mutant(kind, name, mutate):
        d = copy.deepcopy(base[(kind, name)])
        mutate(d)
        return d

    cases = [
        ("Deployment with a port that is not a number",
         mutant("Deployment", "switchyard-ingress", lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(containerPort="eighty"))),
        ("Deployment with an unknown field",
         mutant("Deployment", "switchyard-worker", lambda d: d["spec"].update(replica=3))),
        ("Service with a bad port",
         mutant("Service", "switchyard-ingress", lambda d: d["spec"]["ports"][0].update(port="http"))),
        ("ScaledObject without triggers",
         mutant("ScaledObject", "switchyard-worker", lambda d: d["spec"].pop("triggers"))),
        ("ScaledObject with an unknown field",
         mutant("ScaledObject", "switchyard-worker", lambda d: d["spec"].update(minReplicas=1))),
        ("TriggerAuthentication ref without key",
         mutant("TriggerAuthentication", "switchyard-rabbitmq", lambda d: d["spec"]["secretTargetRef"][0].pop("key"))),
        ("CNPG Cluster with 0 instances",
         mutant("Cluster", "switchyard-pg", lambda d: d["spec"].update(instances=0))),
        ("CNPG Cluster with a misspelt storage field",
         mutant("Cluster", "switchyard-pg", lambda d: d["spec"]["storage"].update(sizee="1Gi"))),
        ("CNPG Cluster with bad resources",
         mutant("Cluster", "switchyard-pg", lambda d: d["spec"]["resources"].update(limitz={}))),
        ("RabbitmqCluster with an unknown service type",
         mutant("RabbitmqCluster", "switchyard-rabbitmq", lambda d: d["spec"].update(service={"type": "Cluster"}))),
        ("RabbitmqCluster with a bad affinity",
         mutant("RabbitmqCluster", "switchyard-rabbitmq", lambda d: d["spec"]["affinity"].update(podAntiAffinity="yes"))),
    ]
    problems = [f"accepted: {what}" for what, doc in cases if not validator.errors(doc)]
    # The rendering checks, on the default rendering with the worker's autoscaler doubled.
    docs, _ = render(ROOT / "k8s")
    if docs is not None:
        extra = copy.deepcopy(docs)
        so = yaml.safe_load((ROOT / "k8s/components/worker-keda/scaledobject.yaml").read_text().split("---")[-1])
        so["metadata"]["namespace"] = "switchyard"
        extra.append(so)
        if not any("exactly one autoscaler" in p for p in rendered_problems(extra, "mutant")):
            problems.append("accepted: an HPA and a ScaledObject on the worker together")
        short = copy.deepcopy(docs)
        for d in short:
            if d["kind"] == "Deployment" and d["metadata"]["name"] == "switchyard-worker":
                d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30
        if not any("terminationGracePeriodSeconds" in p for p in rendered_problems(short, "mutant")):
            problems.append("accepted: a worker grace period shorter than SWITCHYARD_SHUTDOWN_GRACE")
    # Compose: an unknown key must fail the schema; a guest AMQP user the wiring check.
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "compose.yaml"
        bad.write_text(compose_text.replace("    stop_grace_period: 15s\n", "    stop_grace_period: 15s\n    restart_policy: always\n", 1))
        if compose_text == bad.read_text() or check_compose_schema(report, venv_bin, bad, label="mutant"):
            problems.append("accepted: a compose service with an unknown key")
    guest = yaml.safe_load(compose_text.replace("amqp://switchyard:switchyard@", "amqp://guest:guest@"))
    if not any("guest" in p for p in compose_problems(guest, SWITCHYARD_BINS)):
        problems.append("accepted: compose services connecting as guest")
    # The dashboard: a metric that does not exist.
    if known:
        dash = json.loads((ROOT / "deploy/grafana/dashboards/switchyard.json").read_text())
        dash["panels"][1]["targets"][0]["expr"] = "rate(switchyard_no_such_metric_total[5m])"
        if not dashboard_problems(dash, known):
            problems.append("accepted: a dashboard query of an unknown metric")
    report.check(f"self-test: {len(cases) + 5} broken inputs are refused", problems)


# --- Main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", required=True, help="the venv of scripts/py-tools.sh")
    parser.add_argument("--promtool", help="path to promtool (skipped with a note if absent)")
    args = parser.parse_args()
    venv_bin = Path(args.venv) / "bin"
    report = Report()

    # Dockerfile
    docker_problems, bins = dockerfile_info(ROOT / "Dockerfile")
    report.check("Dockerfile: stages, packages built, non-root user, binaries", docker_problems)

    # compose.yaml
    compose_path = ROOT / "compose.yaml"
    compose_text = compose_path.read_text()
    compose = yaml.safe_load(compose_text)
    check_compose_schema(report, venv_bin, compose_path)
    report.check("compose.yaml: services, dependencies, settings, mounts, ports", compose_problems(compose, bins or SWITCHYARD_BINS))

    # Prometheus
    prom_path = ROOT / "deploy/prometheus/prometheus.yml"
    prom = yaml.safe_load(prom_path.read_text())
    if args.promtool:
        ok, out = promtool_run(args.promtool, ["check", "config", str(prom_path)])
        if ok:
            report.ok(f"{rel(prom_path)}: promtool check config")
        else:
            report.fail(f"{rel(prom_path)}: promtool check config", out)
    else:
        print("[deploy] note  promtool not available: prometheus.yml checked by the wiring check only")
    report.check(f"{rel(prom_path)}: scrape jobs reach the compose services", prometheus_problems(prom, compose))

    # Grafana
    dash_path = ROOT / "deploy/grafana/dashboards/switchyard.json"
    try:
        dashboard = json.loads(dash_path.read_text())
    except json.JSONDecodeError as e:
        report.fail(rel(dash_path), f"not JSON: {e}")
        dashboard = None
    known = metric_names_from_source()
    if dashboard is not None:
        if known is None:
            print("[deploy] note  common/src/metrics.rs not found: metric names not cross-checked")
        report.check(f"{rel(dash_path)}: panels, data source, metric names", dashboard_problems(dashboard, known))
        if args.promtool:
            with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
                f.write(promql_rules_file(dashboard))
            ok, out = promtool_run(args.promtool, ["check", "rules", f.name])
            os.unlink(f.name)
            if ok:
                report.ok(f"{rel(dash_path)}: every query parses as PromQL (promtool)")
            else:
                report.fail(f"{rel(dash_path)}: PromQL", out)
        report.check("deploy/grafana/provisioning: data sources and dashboard provider", grafana_provisioning_problems(compose, dashboard))
        copy_path = ROOT / "k8s/base/grafana-dashboard.json"
        report.check(f"{rel(copy_path)} is identical to {rel(dash_path)}",
                     [] if copy_path.exists() and copy_path.read_bytes() == dash_path.read_bytes()
                     else [f"cp {rel(dash_path)} {rel(copy_path)}"])

    # Kubernetes: every file, then every rendering.
    validator = K8sValidator(K8S_VERSIONS)
    k8s = ROOT / "k8s"
    print(f"[deploy] note  Kubernetes kinds are checked against the schemas of Kubernetes {' and '.join(K8S_VERSIONS)}"
          ", the operators' kinds against deploy/schemas/crds")
    report.check("k8s/: kustomizations name existing files, and every manifest is in one", kustomize_structure_problems(k8s))
    for manifest in sorted(k8s.rglob("*.y*ml")):
        if manifest.name.startswith("kustomization."):
            continue
        problems = []
        kinds = []
        for doc in load_yaml_docs(manifest):
            kinds.append(doc.get("kind", "?"))
            problems += [f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}: {e}" for e in validator.errors(doc)]
        report.check(f"{rel(manifest)} ({', '.join(kinds)}): valid", problems)
    roots = [k.parent for k in kustomization_files(k8s)
             if yaml.safe_load(k.read_text()).get("kind") == "Kustomization" and k.parent.name != "base"]
    for kdir in roots:
        docs, how = render(kdir)
        what = f"{rel(kdir)}/ rendered ({how})"
        if docs is None:
            report.fail(what, how)
            continue
        problems = [f"{d.get('kind')}/{d['metadata'].get('name')}: {e}" for d in docs for e in validator.errors(d)]
        problems += rendered_problems(docs, rel(kdir))
        problems += collector_problems(docs)
        report.check(f"{what}: {len(docs)} objects valid and consistent", problems)

    self_test(report, validator, venv_bin, compose_text, known)

    if report.failures:
        print(f"[deploy] {len(report.failures)} problem(s) in the deployment files; see FAIL above", file=sys.stderr)
        return 1
    print(f"[deploy] all {report.passed} deployment checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
