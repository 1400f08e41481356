"""The Kubernetes manifests under ``deploy/k8s`` (issue 13, item 3), rendered and checked.

Both overlays are rendered with ``kubectl kustomize`` (the tool users run) and every object
is validated, strictly (no unknown field), by the ``kubernetes-validate`` package against
the newest Kubernetes version it ships. Then the references a cluster would only find at
run time: each Service selects a Deployment and names one of its ports, each autoscaler and
disruption budget a Deployment, each probe a route the role's app really serves on the port
its command binds (routes read from the FastAPI apps), each variable a real setting (the
ConfigMap's values parsed by `conclave.settings`), each agent URL a Service on that port,
each secret key one the Secret holds; the NetworkPolicy lets exactly the pipeline runners
reach the agents; every Conclave container is non-root with a read-only root file system,
requests and limits, and a command that the compose test runs as a process.
"""

from __future__ import annotations

import copy
import importlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from conclave.agents import REGISTRY
from conclave.services.agent_app import create_agent_app
from conclave.services.api import create_app
from conclave.settings import Settings, check_agent_settings, check_unknown_names
from tests.conftest import need
from tests.deploy.compose import raw

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
SEED_NAMES = {"USE_HTTP_AGENTS", "AGENT_SERVICES_BASE_URL", "REDIS_URL", "DATABASE_URL"}
CONCLAVE_IMAGES = ("conclave:", "registry.example.com/conclave:")
SECRET_KEYS = {"CONCLAVE_SECURITY__KEY_SECRET", "CONCLAVE_AGENTS__SECRET", "DATABASE_URL",
               "REDIS_URL"}  # fmt: skip


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """The overlay's objects as ``kubectl kustomize`` renders them."""
    kubectl = shutil.which("kubectl")
    need(kubectl is not None, "kubectl (with its built-in kustomize) is not installed")
    assert kubectl is not None
    done = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def of_kind(objs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def pod_specs(objs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for o in objs:
        if o["kind"] in ("Deployment", "Job"):
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]


def conclave_containers(objs: tuple[dict[str, Any], ...]
                        ) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:  # fmt: skip
    for name, spec in pod_specs(objs):
        for c in spec["containers"]:
            if c["image"].startswith(CONCLAVE_IMAGES):
                yield name, spec, c


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_kubernetes(overlay: str) -> None:
    version = kubernetes_validate.latest_version()
    objs = render(overlay)
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "ConfigMap", "NetworkPolicy", "Job", "Namespace"} <= kinds  # fmt: skip
    for obj in objs:
        kubernetes_validate.validate(obj, version, strict=True)
    # the validation is real: an unknown field and a wrong type are refused
    deployment = copy.deepcopy(of_kind(objs, "Deployment")[0])
    deployment["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, version, strict=True)
    deployment = copy.deepcopy(of_kind(objs, "Deployment")[0])
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_autoscalers_and_budgets_find_their_deployments(overlay: str) -> None:
    objs = render(overlay)
    deployments = {d["metadata"]["name"]: d for d in of_kind(objs, "Deployment")}
    for svc in of_kind(objs, "Service"):
        selector = svc["spec"]["selector"]
        found = [d for d in deployments.values()
                 if matches(selector, d["spec"]["template"]["metadata"]["labels"])]  # fmt: skip
        assert len(found) == 1, f"Service {svc['metadata']['name']} selects {len(found)}"
        names = {p["name"] for c in found[0]["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}  # fmt: skip
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names, (svc["metadata"]["name"], port)
    for d in deployments.values():
        assert matches(
            d["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"]
        )
    for hpa in of_kind(objs, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    scaled = {h["spec"]["scaleTargetRef"]["name"] for h in of_kind(objs, "HorizontalPodAutoscaler")}
    assert {*REGISTRY, "orchestrator"} <= scaled
    budgets = of_kind(objs, "PodDisruptionBudget")
    for pdb in budgets:
        sel = pdb["spec"]["selector"]["matchLabels"]
        assert any(matches(sel, d["spec"]["template"]["metadata"]["labels"])
                   for d in deployments.values()), pdb["metadata"]["name"]  # fmt: skip
    assert {p["metadata"]["name"] for p in budgets} >= {*REGISTRY, "orchestrator", "scheduler"}
    assert deployments["scheduler"]["spec"]["replicas"] == 2  # slot claims: exactly once


@cache
def _routes(role: tuple[str, ...]) -> frozenset[str] | None:
    """The paths the app of the command ``role`` serves (read from the FastAPI app); None
    for the dashboard until its module exists (another issue builds it)."""
    settings = Settings(_env_file=None)
    if role[:2] == ("conclave", "serve"):
        app = create_app(settings)
    elif role[:3] == ("conclave", "agent", "serve"):
        app = create_agent_app(role[3], settings)
    elif role[:2] == ("conclave", "dashboard"):
        try:
            module = importlib.import_module("conclave.dashboard.app")
        except ImportError:
            return None
        app = module.create_dashboard(settings)
    elif role[:2] == ("conclave", "scheduler"):
        return frozenset({"/metrics"})  # prometheus-client's server (cli/scheduler.py)
    else:
        raise AssertionError(f"unknown role {role}")
    return frozenset(getattr(r, "path", "") for r in app.routes)


def _bound_port(command: list[str]) -> int:
    """The port the command binds: its ``--port``, or the scheduler's metrics port."""
    if "--port" in command:
        return int(command[command.index("--port") + 1])
    assert command[:2] == ["conclave", "scheduler"], command
    return Settings(_env_file=None).scheduler.metrics_port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_hit_real_routes_on_the_bound_port(overlay: str) -> None:
    checked = 0
    for name, _, c in conclave_containers(render(overlay)):
        if c["command"][0] == "sh":  # the one-shot key job serves nothing
            continue
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert list(ports.values()) == [_bound_port(c["command"])], name
        assert {"readinessProbe", "livenessProbe"} <= set(c), name
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            if kind not in c:
                continue
            probe = c[kind]["httpGet"]
            assert probe["port"] in ports, (name, kind)
            routes = _routes(tuple(c["command"]))
            if routes is None:
                continue
            assert probe["path"] in routes, (name, kind, probe["path"])
            checked += 1
        if name != "scheduler":
            assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready", name
            assert c["livenessProbe"]["httpGet"]["path"] == "/health/live", name
    assert checked >= 3 * 10


def _config(objs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    (config,) = [
        o for o in of_kind(objs, "ConfigMap") if o["metadata"]["name"].startswith("conclave-config")
    ]
    data: dict[str, str] = config["data"]
    return data


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_is_a_real_setting(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objs = render(overlay)
    config = _config(objs)
    names = set(config)
    for _, _, c in conclave_containers(objs):
        names |= {e["name"] for e in c.get("env", [])}
    unknown = [n for n in names if n not in SEED_NAMES and not n.startswith("CONCLAVE_")]
    assert not unknown, unknown
    check_unknown_names(sorted(names))  # raises naming the first unknown CONCLAVE_ name
    # and the values parse: the ConfigMap as the pods' environment, the agents all known
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    settings = check_agent_settings(Settings(_env_file=None), REGISTRY)
    assert settings.use_http_agents
    assert set(settings.agents.urls) == set(REGISTRY)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_agents_are_found_by_cluster_dns(overlay: str) -> None:
    objs = render(overlay)
    services = {s["metadata"]["name"]: s for s in of_kind(objs, "Service")}
    urls = json.loads(_config(objs)["CONCLAVE_AGENTS__URLS"])
    for agent, url in urls.items():
        host, port = url.removeprefix("http://").split(":")
        assert host in services, f"{agent}: no Service {host}"
        assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}, agent
    dashboard_api = _config(objs)["CONCLAVE_DASHBOARD__API_URL"]
    assert dashboard_api == "http://orchestrator:4000"
    assert "orchestrator" in services


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_pipeline_runners_reach_the_agents(overlay: str) -> None:
    objs = render(overlay)
    (policy,) = of_kind(objs, "NetworkPolicy")
    target = policy["spec"]["podSelector"]["matchLabels"]
    (rule,) = policy["spec"]["ingress"]
    (source,) = rule["from"]
    templates = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
                 for d in of_kind(objs, "Deployment")}  # fmt: skip
    assert {n for n, lb in templates.items() if matches(target, lb)} == set(REGISTRY)
    allowed = {
        n for n, lb in templates.items() if matches(source["podSelector"]["matchLabels"], lb)
    }
    assert allowed == {"orchestrator", "scheduler"}
    (ports,) = rule["ports"]
    assert (ports["port"], ports["endPort"]) == (
        min(REGISTRY.ports.values()),
        max(REGISTRY.ports.values()),
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secret_keys_exist(overlay: str) -> None:
    objs = render(overlay)
    refs = {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for _, spec in pod_specs(objs) for c in spec["containers"] for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})}  # fmt: skip
    secrets = of_kind(objs, "Secret")
    if overlay == "prod":  # created out of band, as deploy/k8s/secret.example.yaml shows
        assert not secrets
        example = yaml.safe_load((K8S / "secret.example.yaml").read_text())
        kubernetes_validate.validate(example, kubernetes_validate.latest_version(), strict=True)
        held = {(example["metadata"]["name"], k) for k in example["stringData"]}
    else:
        held = {(s["metadata"]["name"], k) for s in secrets for k in s["data"]}
    assert {k for _, k in refs} >= SECRET_KEYS
    assert refs <= held, refs - held


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_conclave_pods_are_locked_down_and_run_tested_commands(overlay: str) -> None:
    compose_commands = {tuple(s["command"]) for f in ("docker-compose.microservices.yml",
                        "docker-compose.yml") for s in raw(f)["services"].values()
                        if s.get("image") == "conclave:local"}  # fmt: skip
    seen = 0
    for name, spec, c in conclave_containers(render(overlay)):
        pod, box = spec["securityContext"], c["securityContext"]
        assert pod["runAsNonRoot"], name
        assert pod["runAsUser"] != 0, name
        assert box["readOnlyRootFilesystem"], name
        assert not box["allowPrivilegeEscalation"], name
        assert box["capabilities"]["drop"] == ["ALL"], name
        assert set(c["resources"]) == {"requests", "limits"}, name
        assert tuple(c["command"]) in compose_commands, f"{name}: a command no test runs"
        seen += 1
    assert seen == len(REGISTRY) + 4  # agents, orchestrator, scheduler, dashboard, key job


def test_base_is_what_generate_writes() -> None:
    """The nine agents' files are generated alike: the committed ones are the script's."""
    import sys

    done = subprocess.run([sys.executable, str(K8S / "generate.py"), "--check"],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
