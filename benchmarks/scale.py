"""Scale: runs/s and latency with 1, 2 and 3 replicas of every agent behind nginx, and what
each service costs per run (CPU time, resident memory): the figures behind docs/SCALING.md
and the requests and limits in deploy/k8s.

For each replica count R it starts, as real processes on loopback: R replicas of each of
the nine agent services (``conclave agent serve NAME --port P``, signed calls), one nginx
(Debian's package) with an upstream of the R replicas per agent (round robin, keep-alive),
and one orchestrator (``conclave serve``) whose ``CONCLAVE_AGENTS__URLS`` point at nginx;
then it posts ``POST /pipeline/run`` (BTCUSDT 1h on the simulated market, data cached
after the first run, as at a candle close where many runs share a market) with
``--inflight`` requests in flight for ``--seconds`` seconds and prints runs/s, p50/p99 of a
run, and per service kind the CPU ms per run and the resident memory (largest process).
The database is SQLite in a temporary directory unless ``DATABASE_URL`` is set. Every
process it starts is stopped by its PID at the end, also on failure.

    .venv/bin/python benchmarks/scale.py [--replicas 1 2 3] [--seconds 20] [--inflight 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2
import psutil

from conclave.agents import REGISTRY

RUN = {"symbol": "BTCUSDT", "timeframe": "1h"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_live(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: exited with {proc.returncode}: {log.read_text()[-600:]}")
        with contextlib.suppress(httpx2.HTTPError):
            if httpx2.get(f"{url}/health/live", timeout=0.5, trust_env=False).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(url)


class Procs:
    """Started processes by kind; all stopped by PID on exit."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir, self.env = workdir, env
        self.kinds: dict[str, list[subprocess.Popen[bytes]]] = {}
        self.logs: dict[int, Path] = {}

    def start(
        self, kind: str, cmd: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{kind}-{len(self.kinds.get(kind, []))}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, env=env or self.env, cwd=self.workdir, stdout=out,
                                    stderr=subprocess.STDOUT)  # fmt: skip
        self.kinds.setdefault(kind, []).append(proc)
        self.logs[proc.pid] = log
        return proc

    def stop(self) -> None:
        procs = [p for ps in self.kinds.values() for p in ps if p.poll() is None]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)

    def usage(self) -> dict[str, tuple[float, float]]:
        """CPU seconds (the process tree's) and the largest RSS in MB, per kind."""
        out: dict[str, tuple[float, float]] = {}
        for kind, procs in self.kinds.items():
            cpu, rss = 0.0, 0.0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    tree = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
                    for q in tree:
                        t = q.cpu_times()
                        cpu += t.user + t.system
                    rss = max(rss, sum(q.memory_info().rss for q in tree) / 2**20)
            out[kind] = (cpu, rss)
        return out


def nginx_conf(workdir: Path, upstreams: dict[str, tuple[int, list[int]]]) -> Path:
    """One server per agent on its front port, round robin over its replicas."""
    blocks = []
    for name, (front, ports) in upstreams.items():
        servers = "".join(f"    server 127.0.0.1:{p} max_fails=0;\n" for p in ports)
        blocks.append(
            f"  upstream {name} {{\n{servers}    keepalive 32;\n  }}\n"
            f"  server {{\n    listen 127.0.0.1:{front};\n    location / {{\n"
            f"      proxy_pass http://{name};\n      proxy_http_version 1.1;\n"
            f'      proxy_set_header Connection "";\n'
            f"      proxy_next_upstream error timeout http_502 http_503;\n    }}\n  }}\n"
        )
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"worker_processes 1;\npid {workdir}/nginx.pid;\nerror_log {workdir}/nginx-error.log;\n"
        "events { worker_connections 1024; }\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {workdir}/nginx-body;\n"
        "  client_max_body_size 2m;\n  client_body_buffer_size 2m;\n"
        "  proxy_buffer_size 64k;\n  proxy_buffers 16 64k;\n" + "".join(blocks) + "}\n"
    )
    return conf


async def load(api: str, seconds: float, inflight: int) -> list[float]:
    """Latencies (s) of the runs that answered 201 while ``inflight`` go at once."""
    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds
    async with httpx2.AsyncClient(timeout=60, trust_env=False) as client:

        async def worker() -> None:
            nonlocal failures
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                answer = await client.post(f"{api}/pipeline/run", json=RUN)
                if answer.status_code == 201:
                    latencies.append(time.perf_counter() - t0)
                else:
                    failures += 1

        await asyncio.gather(*(worker() for _ in range(inflight)))
    if failures:
        print(f"  {failures} runs failed", file=sys.stderr)
    return latencies


def measure(replicas: int, seconds: float, inflight: int) -> dict[str, Any]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    secret = secrets.token_urlsafe(48)
    with tempfile.TemporaryDirectory(prefix="conclave-scale-") as tmp:
        workdir = Path(tmp)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("CONCLAVE_") and k != "REDIS_URL"
        }
        env |= {"CONCLAVE_AGENTS__SECRET": secret, "CONCLAVE_DATA_DIR": str(workdir / "data"),
                "CONCLAVE_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}  # fmt: skip
        procs = Procs(workdir, env)
        exe = [sys.executable, "-m", "conclave"]
        try:
            upstreams: dict[str, tuple[int, list[int]]] = {}
            started = []
            for name in REGISTRY:
                ports = [free_port() for _ in range(replicas)]
                upstreams[name] = (free_port(), ports)
                for p in ports:
                    proc = procs.start("agents", [*exe, "agent", "serve", name, "--port", str(p)])
                    started.append((f"http://127.0.0.1:{p}", proc))
            for url, proc in started:
                wait_live(url, proc, procs.logs[proc.pid])
            conf = nginx_conf(workdir, upstreams)
            procs.start("nginx", [nginx, "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"])
            urls = {n: f"http://127.0.0.1:{front}" for n, (front, _) in upstreams.items()}
            port = free_port()
            api_env = env | {"USE_HTTP_AGENTS": "true", "CONCLAVE_AGENTS__URLS": json.dumps(urls)}
            api_proc = procs.start("orchestrator", [*exe, "serve", "--port", str(port)], api_env)
            api = f"http://127.0.0.1:{port}"
            wait_live(api, api_proc, procs.logs[api_proc.pid])
            asyncio.run(load(api, 3.0, inflight))  # warm-up: caches, connections, JIT-free paths
            before = procs.usage()
            t0 = time.perf_counter()
            latencies = asyncio.run(load(api, seconds, inflight))
            took = time.perf_counter() - t0
            after = procs.usage()
        finally:
            procs.stop()
    runs = len(latencies)
    per_run = {k: (after[k][0] - before[k][0]) * 1000 / max(runs, 1) for k in after}
    qs = statistics.quantiles(latencies, n=100) if runs > 1 else [float("nan")] * 99
    return {"replicas": replicas, "runs": runs, "runs_per_s": runs / took, "p50_ms": qs[49] * 1000,
            "p99_ms": qs[98] * 1000, "cpu_ms_per_run": per_run,
            "rss_mb": {k: v[1] for k, v in after.items()}}  # fmt: skip


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every process started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--inflight", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="one JSON line per measurement")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; {args.inflight} runs in flight for {args.seconds:g} s; "
          "CPU ms per run: orchestrator / nine agents together / nginx")  # fmt: skip
    for r in args.replicas:
        m = measure(r, args.seconds, args.inflight)
        if args.json:
            print(json.dumps(m))
            continue
        cpu, rss = m["cpu_ms_per_run"], m["rss_mb"]
        print(f"replicas {r}: {m['runs_per_s']:6.1f} runs/s  p50 {m['p50_ms']:6.1f} ms  "
              f"p99 {m['p99_ms']:6.1f} ms  cpu/run {cpu['orchestrator']:5.1f} / "
              f"{cpu['agents']:5.1f} / {cpu['nginx']:4.1f} ms  RSS orchestrator "
              f"{rss['orchestrator']:5.1f} MB, largest agent {rss['agents']:5.1f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
