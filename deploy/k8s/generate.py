"""Writes deploy/k8s/base: the nine agents' files are alike by design, so they are generated.

    .venv/bin/python deploy/k8s/generate.py          # rewrite the files
    .venv/bin/python deploy/k8s/generate.py --check  # exit 1 when a file differs

Requests and limits come from measurements (benchmarks/scale.py on a 2-core machine, one
replica each, 8 runs in flight): resident memory after load, orchestrator 209 MB, largest
agent service 160 MB; CPU per run 6.5 ms in the orchestrator and 2.7 ms in the nine agents
together. Requests sit at the measured resident size (rounded up), limits with headroom.
tests/deploy/test_k8s.py checks that the committed files are what this script writes.
"""

import pathlib
import sys
from typing import Any

import yaml

Obj = dict[str, Any]

OUT = pathlib.Path(__file__).resolve().parent / "base"
#: The one-shot key bootstrap: the same command line as the compose files' api-key service.
BOOTSTRAP_KEY = (
    'conclave keys list --json | grep -q \'"state": "active"\' || '
    "conclave keys create --name bootstrap-admin --scope admin --json"
)
AGENTS = {
    "market-structure": 5001,
    "order-flow": 5002,
    "momentum": 5003,
    "volatility-regime": 5004,
    "news-sentiment": 5005,
    "multi-timeframe": 5006,
    "pattern-recognition": 5007,
    "statistical-edge": 5008,
    "risk-manager": 5009,
}
IMAGE = "conclave"


class Dumper(yaml.SafeDumper):
    pass


def _str(d: yaml.SafeDumper, s: str) -> yaml.ScalarNode:
    return d.represent_scalar(
        "tag:yaml.org,2002:str", s, style='"' if s in ("true", "false") or s.isdigit() else None
    )


Dumper.add_representer(str, _str)


def dump(docs: list[Obj]) -> str:
    return "\n---\n".join(yaml.dump(d, Dumper=Dumper, sort_keys=False, width=100) for d in docs)


def secret_env(*keys: str) -> list[Obj]:
    return [
        {"name": k, "valueFrom": {"secretKeyRef": {"name": "conclave-secrets", "key": k}}}
        for k in keys
    ]


POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}
VOLUMES = [
    {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    {"name": "data", "emptyDir": {"sizeLimit": "256Mi"}},
]
MOUNTS = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "data", "mountPath": "/app/data"}]


def labels(name: str, component: str, caller: bool = False) -> dict[str, str]:
    out = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component}
    if caller:
        out["conclave.io/agent-caller"] = "true"
    return out


def deployment(
    name: str,
    component: str,
    command: list[str],
    port: int,
    env: list[Obj],
    probes: Obj,
    resources: Obj,
    replicas: int = 2,
    caller: bool = False,
    grace: int = 20,
) -> Obj:
    container = {
        "name": component,
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "ports": [
            {"name": "http" if component != "scheduler" else "metrics", "containerPort": port}
        ],
        "envFrom": [{"configMapRef": {"name": "conclave-config"}}],
        "env": env,
        **probes,
        "resources": resources,
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": MOUNTS,
    }
    if not env:
        del container["env"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels(name, component)},
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": labels(name, component, caller)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": grace,
                    "securityContext": POD_SECURITY,
                    "containers": [container],
                    "volumes": VOLUMES,
                },
            },
        },
    }


def http_probes(port_name: str, ready: str, live: str) -> Obj:
    return {
        "startupProbe": {
            "httpGet": {"path": live, "port": port_name},
            "periodSeconds": 2,
            "failureThreshold": 30,
        },
        "readinessProbe": {
            "httpGet": {"path": ready, "port": port_name},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": live, "port": port_name},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
    }


def service(name: str, component: str, port: int, port_name: str = "http") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels(name, component)},
        "spec": {
            "selector": {"app.kubernetes.io/name": name},
            "ports": [{"name": port_name, "port": port, "targetPort": port_name}],
        },
    }


def hpa(name: str, component: str, lo: int, hi: int, cpu: int = 70) -> Obj:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "labels": labels(name, component)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": lo,
            "maxReplicas": hi,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": cpu},
                    },
                }
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def pdb(name: str, component: str, **spec: int) -> Obj:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "labels": labels(name, component)},
        "spec": {**spec, "selector": {"matchLabels": {"app.kubernetes.io/name": name}}},
    }


RES = {
    "agent": {
        "requests": {"cpu": "50m", "memory": "192Mi"},
        "limits": {"cpu": "1", "memory": "320Mi"},
    },
    "orchestrator": {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"cpu": "2", "memory": "512Mi"},
    },
    "scheduler": {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    },
    "dashboard": {
        "requests": {"cpu": "20m", "memory": "128Mi"},
        "limits": {"cpu": "500m", "memory": "256Mi"},
    },
    "job": {
        "requests": {"cpu": "50m", "memory": "192Mi"},
        "limits": {"cpu": "500m", "memory": "320Mi"},
    },
}

files = {}
for a, p in AGENTS.items():
    files[f"agents/{a}.yaml"] = [
        deployment(
            a,
            "agent",
            ["conclave", "agent", "serve", a, "--port", str(p)],
            p,
            secret_env("CONCLAVE_AGENTS__SECRET", "REDIS_URL"),
            http_probes("http", "/health/ready", "/health/live"),
            RES["agent"],
        ),
        service(a, "agent", p),
        hpa(a, "agent", 2, 10),
        pdb(a, "agent", minAvailable=1),
    ]
CALLER_SECRETS = secret_env(
    "CONCLAVE_AGENTS__SECRET", "CONCLAVE_SECURITY__KEY_SECRET", "DATABASE_URL", "REDIS_URL"
)
files["orchestrator.yaml"] = [
    deployment(
        "orchestrator",
        "orchestrator",
        ["conclave", "serve", "--port", "4000"],
        4000,
        CALLER_SECRETS,
        http_probes("http", "/health/ready", "/health/live"),
        RES["orchestrator"],
        caller=True,
    ),
    service("orchestrator", "orchestrator", 4000),
    hpa("orchestrator", "orchestrator", 2, 6),
    pdb("orchestrator", "orchestrator", minAvailable=1),
]
sched = deployment(
    "scheduler",
    "scheduler",
    ["conclave", "scheduler"],
    9464,
    CALLER_SECRETS,
    {
        "livenessProbe": {
            "httpGet": {"path": "/metrics", "port": "metrics"},
            "initialDelaySeconds": 20,
            "periodSeconds": 15,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/metrics", "port": "metrics"},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
        },
    },
    RES["scheduler"],
    replicas=2,
    caller=True,
    grace=30,
)
files["scheduler.yaml"] = [
    sched,
    service("scheduler", "scheduler", 9464, "metrics"),
    pdb("scheduler", "scheduler", maxUnavailable=1),
]
files["dashboard.yaml"] = [
    deployment(
        "dashboard",
        "dashboard",
        ["conclave", "dashboard", "--port", "3001"],
        3001,
        [],
        http_probes("http", "/health/ready", "/health/live"),
        RES["dashboard"],
        replicas=1,
    ),
    service("dashboard", "dashboard", 3001),
]
files["api-key-job.yaml"] = [
    {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "api-key", "labels": labels("api-key", "bootstrap")},
        "spec": {
            "backoffLimit": 10,
            "template": {
                "metadata": {"labels": labels("api-key", "bootstrap")},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "automountServiceAccountToken": False,
                    "securityContext": POD_SECURITY,
                    "containers": [
                        {
                            "name": "api-key",
                            "image": IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": [
                                "sh",
                                "-c",
                                BOOTSTRAP_KEY,
                            ],
                            "envFrom": [{"configMapRef": {"name": "conclave-config"}}],
                            "env": secret_env("CONCLAVE_SECURITY__KEY_SECRET", "DATABASE_URL"),
                            "resources": RES["job"],
                            "securityContext": CONTAINER_SECURITY,
                            "volumeMounts": MOUNTS,
                        }
                    ],
                    "volumes": VOLUMES,
                },
            },
        },
    }
]
urls = "{" + ",".join(f'"{a}":"http://{a}:{p}"' for a, p in AGENTS.items()) + "}"
files["configmap.yaml"] = [
    {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "conclave-config"},
        "data": {
            "USE_HTTP_AGENTS": "true",
            "CONCLAVE_AGENTS__URLS": urls,
            "CONCLAVE_AGENTS__HOST": "0.0.0.0",
            "CONCLAVE_API__HOST": "0.0.0.0",
            "CONCLAVE_SCHEDULER__METRICS_HOST": "0.0.0.0",
            "CONCLAVE_DASHBOARD__HOST": "0.0.0.0",
            "CONCLAVE_DASHBOARD__API_URL": "http://orchestrator:4000",
            "CONCLAVE_LOG_JSON": "true",
            "CONCLAVE_MARKET__SOURCE": "sim",
        },
    }
]
np_agents = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "agents-from-callers-only"},
    "spec": {
        "podSelector": {"matchLabels": {"app.kubernetes.io/component": "agent"}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [{"podSelector": {"matchLabels": {"conclave.io/agent-caller": "true"}}}],
                "ports": [{"protocol": "TCP", "port": 5001, "endPort": 5009}],
            }
        ],
    },
}
files["networkpolicy.yaml"] = [np_agents]

HEAD = {
    "configmap.yaml": (
        "# Settings shared by every Conclave pod (each key a real setting: test_k8s.py).\n"
        "# Agents are found by cluster DNS: the Service named after each agent.\n"
    ),
    "networkpolicy.yaml": (
        "# Only the pods that run pipelines (the orchestrator and the scheduler, labelled\n"
        "# conclave.io/agent-caller) may open a connection to an agent; every /run is signed.\n"
    ),
    "api-key-job.yaml": (
        "# One-shot: the first admin API key when none is active (the API listens beyond\n"
        "# loopback and refuses to start without one). Read it once: kubectl logs job/api-key\n"
    ),
    "scheduler.yaml": (
        "# Two schedulers: each (job, slot) is claimed in PostgreSQL, so every slot runs\n"
        "# exactly once and one replica may be lost at any time. Probes use its metrics.\n"
    ),
    "dashboard.yaml": "# The dashboard reads the orchestrator's API (DASHBOARD__API_URL).\n",
    "orchestrator.yaml": "# The orchestrator API: stateless (runs in PostgreSQL), scaled on CPU.\n",
}
GENERATED = "# Generated by deploy/k8s/generate.py: edit that, then run it.\n"
check = "--check" in sys.argv
differ = []
for path, docs in files.items():
    f = OUT / path
    head = HEAD.get(
        path, f"# Agent service {path.split('/')[-1][:-5]}: alike for the nine agents.\n"
    )
    text = GENERATED + head + dump(docs)
    if check:
        if not f.exists() or f.read_text() != text:
            differ.append(path)
        continue
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(text)
if differ:
    print("differs from generate.py:", ", ".join(differ))
    sys.exit(1)
