"""Real Prometheus, promtool and Grafana-dashboard helpers for the metrics tests.

- `Service` runs one ``python -m conclave ...`` process (or Prometheus itself) with an
  explicit environment and a log file, and stops it by its PID whatever happens: SIGTERM,
  then SIGKILL after a bounded wait.
- `Prometheus` is Debian's ``prometheus`` binary on a free loopback port with a generated
  configuration (JSON, which is YAML), its data in a temporary directory; `Prometheus.query`
  asks ``/api/v1/query`` and `Prometheus.wait_for` polls it for a bounded time.
- `promtool_check_metrics` lints a ``/metrics`` body with ``promtool check metrics``;
  `promtool_check_exprs` parses PromQL expressions with ``promtool check rules``.
- The dashboard helpers read ``deploy/grafana/conclave.json``: its panels, their queries,
  the queries with Grafana's variables replaced (`to_promql`), and the metric names a query
  refers to (`metric_names`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "conclave.json"
#: Environment passed through to the children; everything else is set explicitly.
PASS_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")
#: Series Prometheus makes itself for every target (no service exports them).
PROMETHEUS_SYNTHETIC = frozenset(
    {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added",
     "scrape_samples_post_metric_relabeling"}
)  # fmt: skip
#: Grafana's built-in interval variables, as the test's Prometheus (1 s scrapes, a few
#: minutes of data at most) should see them.
GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}


def binaries_present() -> bool:
    return shutil.which("prometheus") is not None and shutil.which("promtool") is not None


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free right now (bound together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def child_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """A child's environment built explicitly: quiet logs, its own data directory, no
    REDIS_URL or DATABASE_URL (so SQLite under ``data_dir`` and the in-process cache)."""
    env = {k: os.environ[k] for k in PASS_THROUGH if k in os.environ}
    return env | {
        "CONCLAVE_DATA_DIR": str(data_dir),
        "CONCLAVE_LOGS_DIR": str(data_dir / "logs"),
        "CONCLAVE_LOG_LEVEL": "WARNING",
        "CONCLAVE_MARKET__SOURCE": "sim",
    } | extra  # fmt: skip


def conclave(*args: str) -> list[str]:
    return [sys.executable, "-m", "conclave", *args]


@dataclass
class Service:
    """One child process with its log; `stop` ends it by PID within ``stop_s`` seconds."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, stop_s: float = 5.0) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=stop_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL, as a crashed service would die, and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@contextlib.contextmanager
def service(
    name: str, cmd: list[str], env: Mapping[str, str], cwd: Path, url: str = ""
) -> Iterator[Service]:
    """Start ``cmd``; on exit (even after a failure) stop it by its PID."""
    log = cwd / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=dict(env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    svc = Service(name, proc, log, url)
    try:
        yield svc
    finally:
        svc.stop()


def wait_http(svc: Service, path: str, timeout_s: float = 40.0) -> None:
    """Wait until ``svc`` answers 200 at ``path``; fail early when it exits."""
    deadline = time.monotonic() + timeout_s
    with httpx2.Client(timeout=1.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if svc.proc.poll() is not None:
                raise RuntimeError(f"{svc.name} exited ({svc.proc.returncode}):\n{svc.tail()}")
            with contextlib.suppress(httpx2.HTTPError):
                if client.get(f"{svc.url}{path}").status_code == 200:
                    return
            time.sleep(0.1)
    raise TimeoutError(f"{svc.name} not answering {path} within {timeout_s} s:\n{svc.tail()}")


def scrape(url: str) -> str:
    """The text of ``GET {url}/metrics``."""
    with httpx2.Client(timeout=5.0, trust_env=False) as client:
        resp = client.get(f"{url}/metrics")
        resp.raise_for_status()
        return resp.text


def exported_names(text: str) -> dict[str, str]:
    """Metric family name -> type, from the ``# TYPE`` lines of an exposition."""
    out = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            out[name] = kind
    return out


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    """``promtool check metrics`` over ``text`` (stdin): exit 0 and no output when clean."""
    return subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )


def promtool_check_exprs(
    exprs: Mapping[str, str], workdir: Path
) -> subprocess.CompletedProcess[str]:
    """Parse every expression with ``promtool check rules`` (each a recording rule)."""
    rules = [{"record": f"dashboard:{key}", "expr": expr} for key, expr in exprs.items()]
    path = workdir / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    return subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=30
    )


# -- Prometheus --------------------------------------------------------------------------------


def prometheus_config(jobs: Mapping[str, list[str]], interval_s: float = 1.0) -> str:
    """A ``prometheus.yml`` (as JSON) scraping ``host:port`` targets by job name."""
    interval = f"{int(interval_s * 1000)}ms"
    return json.dumps(
        {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {
                    "job_name": job,
                    "scrape_interval": interval,
                    "scrape_timeout": interval,
                    "static_configs": [{"targets": targets}],
                }
                for job, targets in jobs.items()
            ],
        },
        indent=2,
    )


@dataclass
class Prometheus:
    """A running Prometheus server and a client for its HTTP API."""

    svc: Service
    client: httpx2.Client = field(
        default_factory=lambda: httpx2.Client(timeout=5.0, trust_env=False)
    )

    @property
    def url(self) -> str:
        return self.svc.url

    def query(self, expr: str) -> dict[str, Any]:
        """The whole answer of an instant query (``status`` is "success" or "error")."""
        resp = self.client.get(f"{self.url}/api/v1/query", params={"query": expr})
        body: dict[str, Any] = resp.json()
        return body

    def vector(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """The instant vector of ``expr``: sorted label pairs -> value; raises on an error."""
        body = self.query(expr)
        if body.get("status") != "success":
            raise AssertionError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return {(): float(data["result"][1])}
        return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in data["result"]}

    def wait_for(
        self,
        expr: str,
        holds: Callable[[dict[tuple[tuple[str, str], ...], float]], bool],
        timeout_s: float = 30.0,
    ) -> dict[tuple[tuple[str, str], ...], float]:
        """Poll ``expr`` until ``holds(vector)``; fail with the last answer after the timeout."""
        deadline = time.monotonic() + timeout_s
        last: dict[tuple[tuple[str, str], ...], float] = {}
        while True:
            last = self.vector(expr)
            if holds(last):
                return last
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr} after {timeout_s} s: {last}")
            time.sleep(0.25)

    def value(self, expr: str, timeout_s: float = 30.0, *, equals: float | None = None) -> float:
        """The single value of ``expr`` once there is one (and it equals ``equals``)."""

        def ok(v: dict[tuple[tuple[str, str], ...], float]) -> bool:
            return len(v) == 1 and (equals is None or next(iter(v.values())) == equals)

        return next(iter(self.wait_for(expr, ok, timeout_s).values()))


@contextlib.contextmanager
def prometheus(workdir: Path, jobs: Mapping[str, list[str]]) -> Iterator[Prometheus]:
    """``prometheus`` on a free loopback port scraping ``jobs`` every second."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(prometheus_config(jobs))
    (port,) = free_ports(1)
    cmd = [
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    env = {k: os.environ[k] for k in PASS_THROUGH if k in os.environ}
    with service("prometheus", cmd, env, workdir, f"http://127.0.0.1:{port}") as svc:
        wait_http(svc, "/-/ready", timeout_s=30)
        prom = Prometheus(svc)
        try:
            yield prom
        finally:
            prom.client.close()


# -- the Grafana dashboard ---------------------------------------------------------------------


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels (collapsed rows) included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_queries(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """``"<panel id>/<refId>"`` -> the raw expression of every query target."""
    out = {}
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            out[f"{panel['id']}/{target['refId']}"] = target["expr"]
    return out


def variable_queries(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """Variable name -> the PromQL inside its ``label_values(...)`` / ``query_result(...)``."""
    out = {}
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]
        text = query["query"] if isinstance(query, dict) else query
        m = re.fullmatch(r"\s*(?:label_values|query_result)\((.*?)(?:,\s*\w+)?\)\s*", text)
        if m:
            out[var["name"]] = m.group(1)
    return out


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def variables_used(expr: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in _VARIABLE.finditer(expr)}


def to_promql(expr: str, values: Mapping[str, str] | None = None) -> str:
    """``expr`` as Grafana would send it: its built-in intervals as in `GRAFANA_BUILTINS`,
    every other variable (used with ``=~``) as ``values`` says, else ``.*`` (All)."""
    subs = GRAFANA_BUILTINS | dict(values or {})
    return _VARIABLE.sub(lambda m: subs.get(next(g for g in m.groups() if g), ".*"), expr)


#: PromQL words that are not metric names (keywords, operators, literals).
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
     "unless", "offset", "inf", "nan", "atan2", "start", "end"}
)  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` (PromQL) selects: identifiers outside strings, label
    matchers, ranges and grouping clauses that are neither functions nor keywords."""
    text = _STRING.sub('""', to_promql(expr))
    text = re.sub(r"\{[^}]*\}", "{}", text)
    text = re.sub(r"\[[^\]]*\]", "[]", text)
    text = _GROUPING.sub(" ", text)
    return {m.group(1) for m in _IDENT.finditer(text) if m.group(1).lower() not in _KEYWORDS}


def is_exported(name: str, exported: Mapping[str, str]) -> bool:
    """Whether ``name`` is a series of the families in ``exported`` (name -> type): the
    family itself, or a histogram's (summary's) ``_bucket``, ``_count`` or ``_sum``."""
    if name in exported:
        return True
    for suffix in ("_bucket", "_count", "_sum"):
        base = name.removesuffix(suffix)
        if base != name and exported.get(base) in {"histogram", "summary"}:
            return suffix != "_bucket" or exported[base] == "histogram"
    return False
