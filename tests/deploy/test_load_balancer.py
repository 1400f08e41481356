"""Replicas behind a real load balancer (issue 13, item 4; RELIABILITY C7).

nginx (Debian's package, as in production) listens on loopback in front of three replicas
of the momentum agent service (``conclave agent serve momentum --port P``, signed calls);
the orchestrator (``conclave serve``) calls momentum through nginx, the other eight agents
in process. Shown:

- round robin: nine runs, and each replica's own counter (``/health`` ``runs.served``) says
  it served exactly three;
- a rolling restart: while runs go at 2 per second for at least 30 s, each replica in turn
  gets SIGTERM (uvicorn finishes its in-flight calls, then exits), is started again on its
  port and waited for; every run answers 201 with momentum's step ok: 0 failed runs.
  nginx passes a call that found a replica gone to the next one (``proxy_next_upstream``
  with ``non_idempotent``: ``POST /run`` is a pure computation, safe to send again).

Every process (replicas, nginx, orchestrator) is stopped by its PID, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2

from tests.conftest import need
from tests.security.procs import clean_env, conclave, free_port, started, wait_live

AGENT = "momentum"
REPLICAS = 3
RUN = {"symbol": "BTCUSDT", "timeframe": "1h"}
#: The roll: runs per second and the least time they go on for.
RATE_PER_S, ROLL_MIN_S = 2.0, 30.0


def nginx_conf(workdir: Path, front: int, ports: list[int]) -> Path:
    """One server on ``front``, round robin over ``ports``, keep-alive to them, and a call
    that finds a replica gone (connection refused or reset, 502/503) sent to the next."""
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n" for p in ports)
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"worker_processes 1;\npid {workdir}/nginx.pid;\nerror_log {workdir}/nginx-error.log;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n  access_log {workdir}/nginx-access.log;\n"
        f"  client_body_temp_path {workdir}/nginx-body;\n"
        # bodies and answers held in memory: nginx's workers (user nobody) write no temp file
        "  client_max_body_size 2m;\n  client_body_buffer_size 2m;\n"
        "  proxy_buffer_size 64k;\n  proxy_buffers 16 64k;\n"
        f"  upstream {AGENT.replace('-', '_')} {{\n{servers}    keepalive 16;\n  }}\n"
        f"  server {{\n    listen 127.0.0.1:{front};\n    location / {{\n"
        f"      proxy_pass http://{AGENT.replace('-', '_')};\n      proxy_http_version 1.1;\n"
        '      proxy_set_header Connection "";\n'
        "      proxy_next_upstream error timeout http_502 http_503 non_idempotent;\n"
        "      proxy_next_upstream_tries 3;\n    }\n  }\n}\n"
    )
    return conf


class Fleet:
    """The replicas, each restartable on its own port; stopped by PID on exit."""

    def __init__(self, tmp_path: Path, env: dict[str, str], stack: contextlib.ExitStack) -> None:
        self.tmp_path, self.env, self.stack = tmp_path, env, stack
        self.ports = [free_port() for _ in range(REPLICAS)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.starts = 0
        self.logs: dict[int, int] = {}

    def start(self, i: int) -> subprocess.Popen[bytes]:
        self.starts += 1
        self.logs[i] = self.starts
        cmd = conclave("agent", "serve", AGENT, "--port", str(self.ports[i]))
        log = self.tmp_path / f"replica-{i}-{self.starts}.log"
        proc = self.stack.enter_context(started(cmd, self.env, self.tmp_path, log))
        wait_live(f"http://127.0.0.1:{self.ports[i]}", proc)
        return proc

    def up(self) -> None:
        self.procs = [self.start(i) for i in range(REPLICAS)]

    def served(self) -> list[int]:
        with httpx2.Client(timeout=5, trust_env=False) as client:
            return [client.get(f"http://127.0.0.1:{p}/health").json()["runs"]["served"]
                    for p in self.ports]  # fmt: skip

    def roll(self, i: int) -> bool:
        """SIGTERM replica ``i``, wait for its exit, start it again: whether it drained
        (uvicorn's graceful shutdown ran to its end, then re-raised the signal)."""
        proc, log = self.procs[i], self.tmp_path / f"replica-{i}-{self.logs[i]}.log"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        text = log.read_text()
        drained = code in (0, -signal.SIGTERM) and "Finished server process" in text
        self.procs[i] = self.start(i)
        return drained


@contextlib.contextmanager
def stack_up(tmp_path: Path) -> Iterator[tuple[Fleet, str]]:
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    need(nginx is not None, "nginx is not installed (Debian package nginx; .ci/run installs it)")
    assert nginx is not None
    secret = secrets.token_urlsafe(48)
    with contextlib.ExitStack() as stack:
        fleet = Fleet(tmp_path, clean_env(tmp_path, CONCLAVE_AGENTS__SECRET=secret), stack)
        fleet.up()
        front = free_port()
        conf = nginx_conf(tmp_path, front, fleet.ports)
        lb = stack.enter_context(started([nginx, "-p", str(tmp_path), "-c", str(conf), "-g",
                                          "daemon off;"], fleet.env, tmp_path,
                                         tmp_path / "nginx.log"))  # fmt: skip
        port = free_port()
        env = clean_env(tmp_path, CONCLAVE_AGENTS__SECRET=secret,
                        CONCLAVE_AGENTS__URLS=json.dumps({AGENT: f"http://127.0.0.1:{front}"}),
                        CONCLAVE_AGENTS__HTTP=json.dumps({AGENT: True}))  # fmt: skip
        api = f"http://127.0.0.1:{port}"
        proc = stack.enter_context(started(conclave("serve", "--port", str(port)), env, tmp_path,
                                           tmp_path / "serve.log"))  # fmt: skip
        wait_live(api, proc)
        assert lb.poll() is None, (tmp_path / "nginx-error.log").read_text()
        yield fleet, api


def _ok(answer: httpx2.Response) -> bool:
    return answer.status_code == 201 and answer.json()["steps"][AGENT]["meta"]["status"] == "ok"


def test_round_robin_then_a_rolling_restart_loses_no_run(tmp_path: Path) -> None:
    with stack_up(tmp_path) as (fleet, api), httpx2.Client(timeout=30, trust_env=False) as client:
        first = [client.post(f"{api}/pipeline/run", json=RUN) for _ in range(3 * REPLICAS)]
        assert all(_ok(a) for a in first), [a.text[:300] for a in first if not _ok(a)]
        assert fleet.served() == [3] * REPLICAS  # each replica's own count: round robin

        results: list[tuple[float, int, bool]] = []
        stop = threading.Event()

        def one(t0: float) -> None:
            with httpx2.Client(timeout=30, trust_env=False) as c:
                try:
                    answer = c.post(f"{api}/pipeline/run", json=RUN)
                    results.append((t0, answer.status_code, _ok(answer)))
                except httpx2.HTTPError:
                    results.append((t0, 0, False))

        def pace() -> None:  # 2 runs per second, each in its own thread: no back-pressure
            threads: list[threading.Thread] = []
            t_start = time.monotonic()
            while not stop.is_set():
                due = t_start + len(threads) / RATE_PER_S
                time.sleep(max(0.0, due - time.monotonic()))
                th = threading.Thread(target=one, args=(time.monotonic(),))
                th.start()
                threads.append(th)
            for th in threads:
                th.join(timeout=60)

        pacer = threading.Thread(target=pace)
        t_start = time.monotonic()
        pacer.start()
        try:
            time.sleep(2.0)
            drained = []
            for i in range(REPLICAS):
                drained.append(fleet.roll(i))
                time.sleep(2.0)
            time.sleep(max(0.0, ROLL_MIN_S - (time.monotonic() - t_start)))
            # nginx sends calls to a restarted replica again once it answers: on a loaded
            # machine the last one can take a few seconds more (bounded: 30 s)
            back_by = time.monotonic() + 30.0
            while not all(n > 0 for n in fleet.served()) and time.monotonic() < back_by:
                time.sleep(0.5)
        finally:
            stop.set()
            pacer.join(timeout=90)
        took = time.monotonic() - t_start
        served_after = fleet.served()
    failed = [(round(t - t_start, 1), code) for t, code, ok in results if not ok]
    print(f"roll: {len(results)} runs in {took:.1f} s, {len(failed)} failed; served {served_after}")
    assert took >= ROLL_MIN_S
    assert len(results) >= RATE_PER_S * ROLL_MIN_S * 0.9, len(results)  # the pace held (10 %)
    assert failed == [], f"{len(failed)} of {len(results)} runs failed: {failed}"
    assert drained == [True] * REPLICAS  # each replica shut down gracefully on SIGTERM
    assert all(n > 0 for n in served_after)  # every restarted replica took calls again
