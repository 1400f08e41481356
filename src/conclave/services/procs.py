"""Start, check and stop the agent services as background processes.

`start_agents` spawns ``python -m conclave.services.agent_main NAME --port P`` per agent (its own
session, so a Ctrl-C of the parent does not reach it; output to ``<logs_dir>/<agent>.log``),
records every PID with its creation time in ``<data_dir>/run/agents.json`` and waits until
each answers ``GET /health`` as itself. `stop_recorded` stops exactly the recorded
processes: a recorded PID whose creation time differs belongs to another process now (the
PID was reused) and is left alone; the others get SIGTERM, then SIGKILL after
``stop_timeout_s``. Nothing is ever stopped by name or by port. `health_table` asks every
service for ``/health``. ``conclave agents ...`` and ``conclave up`` are built on these.

The agents, their default ports and order come from a `Registry` (default
`conclave.agents.REGISTRY`); a spawned service looks its agent up in `REGISTRY`, so only
agents of the default registry can run as processes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import httpx2
import orjson
import psutil

from conclave.agents import REGISTRY
from conclave.agents.registry import Registry
from conclave.settings import Settings, check_agent_settings

StartStatus = Literal["started", "already_running", "failed"]
StopOutcome = Literal["stopped", "killed", "not_running", "pid_reused", "survived"]
_POLL_S = 0.1
#: Popen handles of the services this process started, so a stopped one is reaped.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True, slots=True)
class Proc:
    """One recorded agent service process; ``create_time`` guards against PID reuse."""

    name: str
    pid: int
    create_time: float
    port: int
    url: str
    log: str


@dataclass(frozen=True, slots=True)
class StartResult:
    """What `start_agents` did for one agent; ``error`` says why it failed."""

    name: str
    url: str
    status: StartStatus
    pid: int | None = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class StopResult:
    """What `stop_recorded` did with one recorded process."""

    name: str
    pid: int
    outcome: StopOutcome


@dataclass(frozen=True, slots=True)
class HealthRow:
    """One line of `health_table`: ``status`` is ``ok`` or ``down``; ``pid`` when recorded."""

    name: str
    url: str
    status: str
    latency_ms: float | None
    pid: int | None
    error: str = ""


def pidfile_path(settings: Settings) -> Path:
    """Where the running services are recorded."""
    return settings.data_dir / "run" / "agents.json"


def read_pidfile(settings: Settings) -> dict[str, Proc]:
    """The recorded processes by agent (empty when nothing is recorded or unreadable)."""
    path = pidfile_path(settings)
    try:
        data = orjson.loads(path.read_bytes())
        return {name: Proc(**rec) for name, rec in data["agents"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def write_pidfile(settings: Settings, procs: dict[str, Proc]) -> None:
    """Record ``procs`` atomically (the file is removed when nothing is left)."""
    path = pidfile_path(settings)
    if not procs:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    body = {"agents": {n: asdict(p) for n, p in procs.items()}}
    tmp.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def _process(proc: Proc) -> psutil.Process | None:
    """The live process behind ``proc``, or None when it is gone or the PID was reused."""
    try:
        p = psutil.Process(proc.pid)
        if abs(p.create_time() - proc.create_time) > 1e-3:
            return None
        if p.status() == psutil.STATUS_ZOMBIE:
            _reap(proc.pid)
            return None
        return p
    except psutil.Error:
        return None


def is_alive(proc: Proc) -> bool:
    """True when the recorded process still runs (same PID and creation time)."""
    return _process(proc) is not None


def _reap(pid: int) -> None:
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1.0)


def serve_command(name: str, port: int, host: str) -> list[str]:
    """The command line of one agent service (this interpreter, the lean entry point)."""
    return [sys.executable, "-m", "conclave.services.agent_main", name,
            "--port", str(port), "--host", host]  # fmt: skip


def child_env(settings: Settings) -> dict[str, str] | None:
    """The environment of an agent process: this one's, plus the agent secret in effect
    here (it may come from another env file than the child would read), never in argv."""
    secret = settings.agents.secret
    if secret is None:
        return None  # inherit as is
    return {**os.environ, "CONCLAVE_AGENTS__SECRET": secret.get_secret_value()}


def spawn(settings: Settings, name: str, registry: Registry) -> Proc:
    """Start agent ``name``'s service in its own session, output appended to its log."""
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.logs_dir / f"{name}.log"
    port = settings.agent_port(name, registry)
    with log_path.open("ab") as log:
        child = subprocess.Popen(
            serve_command(name, port, settings.agents.host),
            env=child_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _CHILDREN[child.pid] = child
    create_time = psutil.Process(child.pid).create_time()
    url = settings.agent_url(name, registry)
    return Proc(name, child.pid, create_time, port, url, str(log_path))


def probe(client: httpx2.Client, name: str, url: str) -> tuple[bool, float, str]:
    """``GET url/health``: (healthy as ``name``, latency in ms, why not)."""
    t0 = time.perf_counter()
    try:
        resp = client.get(f"{url}/health")
        body = resp.json() if resp.status_code == 200 else {}
    except (httpx2.HTTPError, ValueError) as exc:
        return False, (time.perf_counter() - t0) * 1000.0, f"{type(exc).__name__}: {exc}"[:120]
    took = (time.perf_counter() - t0) * 1000.0
    said = body.get("status") if isinstance(body, dict) else None
    # "degraded" (its own exchange or Redis failing) still serves inline-data runs
    if not (said in ("ok", "degraded") and body.get("agent") == name):
        return False, took, f"unexpected answer: HTTP {resp.status_code}"
    return True, took, ""


def _wait_healthy(procs: Sequence[Proc], timeout_s: float) -> dict[str, str]:
    """Poll until every process is healthy; why each one that is not failed."""
    pending = {p.name: p for p in procs}
    errors: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    with httpx2.Client(timeout=1.0, trust_env=False) as client:
        while pending:
            for name, proc in list(pending.items()):
                if not is_alive(proc):
                    errors[name] = f"exited during start-up; see {proc.log}"
                    del pending[name]
                elif probe(client, name, proc.url)[0]:
                    del pending[name]
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(_POLL_S)
    for name in pending:
        errors[name] = f"not healthy within {timeout_s:g} s; see {pending[name].log}"
    return errors


def start_agents(
    settings: Settings, names: Iterable[str] | None = None, *, registry: Registry = REGISTRY
) -> list[StartResult]:
    """Start the named services (default every agent of ``registry``) not already running;
    wait for health.

    Services that fail to become healthy within ``agents.start_timeout_s`` are stopped and
    reported with the reason.
    """
    check_agent_settings(settings, registry)
    wanted = list(names) if names is not None else list(registry)
    unknown = [n for n in wanted if n not in registry]
    if unknown:
        raise ValueError(f"unknown agent(s): {', '.join(unknown)}")
    records = {n: p for n, p in read_pidfile(settings).items() if is_alive(p)}
    results: dict[str, StartResult] = {}
    started: list[Proc] = []
    for name in wanted:
        if name in records:
            proc = records[name]
            results[name] = StartResult(name, proc.url, "already_running", proc.pid)
            continue
        proc = spawn(settings, name, registry)
        records[name] = proc
        started.append(proc)
    write_pidfile(settings, records)
    errors = _wait_healthy(started, settings.agents.start_timeout_s)
    failed = [p for p in started if p.name in errors]
    if failed:
        _stop(failed, settings.agents.stop_timeout_s)
        write_pidfile(settings, {n: p for n, p in records.items() if n not in errors})
    for proc in started:
        err = errors.get(proc.name, "")
        results[proc.name] = StartResult(proc.name, proc.url, "failed" if err else "started",
                                         proc.pid, err)  # fmt: skip
    return [results[n] for n in wanted]


def _stop(procs: Sequence[Proc], timeout_s: float) -> list[StopResult]:
    out: dict[str, StopResult] = {}
    live: dict[int, tuple[Proc, psutil.Process]] = {}
    for proc in procs:
        try:
            p = psutil.Process(proc.pid)
            same = abs(p.create_time() - proc.create_time) <= 1e-3
        except psutil.Error:
            out[proc.name] = StopResult(proc.name, proc.pid, "not_running")
            continue
        if not same:
            out[proc.name] = StopResult(proc.name, proc.pid, "pid_reused")
            continue
        with contextlib.suppress(psutil.Error):
            p.terminate()
        live[proc.pid] = (proc, p)
    _, alive = psutil.wait_procs([p for _, p in live.values()], timeout=timeout_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    _, survivors = psutil.wait_procs(alive, timeout=2.0)
    killed = {p.pid for p in alive}
    stuck = {p.pid for p in survivors}
    for pid, (proc, _) in live.items():
        _reap(pid)
        outcome: StopOutcome = (
            "survived" if pid in stuck else "killed" if pid in killed else "stopped"
        )
        out[proc.name] = StopResult(proc.name, pid, outcome)
    return [out[p.name] for p in procs]


def stop_recorded(settings: Settings, names: Iterable[str] | None = None) -> list[StopResult]:
    """Stop exactly the recorded processes (of ``names``, default all): SIGTERM, wait
    ``agents.stop_timeout_s``, then SIGKILL. A reused PID is reported, never signalled."""
    records = read_pidfile(settings)
    chosen = [p for n, p in records.items() if names is None or n in set(names)]
    results = _stop(chosen, settings.agents.stop_timeout_s)
    keep = {r.name for r in results if r.outcome == "survived"}
    done = {p.name for p in chosen} - keep
    write_pidfile(settings, {n: p for n, p in records.items() if n not in done})
    return results


def health_table(
    settings: Settings, names: Iterable[str] | None = None, *, registry: Registry = REGISTRY
) -> list[HealthRow]:
    """``/health`` of every service (default every agent of ``registry``), asked
    concurrently, 1 s each."""
    check_agent_settings(settings, registry)
    wanted = list(names) if names is not None else list(registry)
    records = read_pidfile(settings)

    def row(name: str) -> HealthRow:
        url = settings.agent_url(name, registry)
        rec = records.get(name)
        pid = rec.pid if rec is not None and is_alive(rec) else None
        ok, took, err = probe(client, name, url)
        return HealthRow(name, url, "ok" if ok else "down", round(took, 2) if ok else None,
                         pid, err)  # fmt: skip

    with (
        httpx2.Client(timeout=1.0, trust_env=False) as client,
        ThreadPoolExecutor(max_workers=len(wanted) or 1) as pool,
    ):
        return list(pool.map(row, wanted))
