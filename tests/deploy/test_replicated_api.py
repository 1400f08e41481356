"""Two orchestrators behind nginx and two schedulers on one PostgreSQL and Redis (issue 13,
item 4, second part): what replicas of the stateful-looking parts must keep.

- Two ``conclave serve`` processes share a fresh database and Redis, behind nginx (round
  robin). The same ``Idempotency-Key`` sent eight times through nginx, four at once, gives
  one run: every answer names the same run id (201 once, replays 200, or 409 while the
  first is still running), and the database holds exactly one run for it. Both replicas
  served requests (their own ``/metrics`` request counters).
- Two ``conclave scheduler --once`` processes race on the same due slot: exactly one runs
  it (``ok``), the other finds the slot claimed (``claimed_elsewhere``) or done
  (``not_due``), and one run is recorded.

- The exchange budget is one for the fleet: both orchestrators on the fake Binance (Stub-BX)
  with a budget that fits one run's fetches a minute; four runs sent to both replicas at
  once reach the exchange once (with a budget per replica each would fetch: checked by
  hand, 2 fetches).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import need
from tests.security.procs import clean_env, conclave, free_port, started, wait_live

RUN = {"symbol": "BTCUSDT", "timeframe": "1h"}


def _nginx(tmp_path: Path, front: int, ports: list[int]) -> list[str]:
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    need(nginx is not None, "nginx is not installed (Debian package nginx; .ci/run installs it)")
    assert nginx is not None
    servers = "".join(f"    server 127.0.0.1:{p};\n" for p in ports)
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"worker_processes 1;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/nginx-error.log;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path}/nginx-body;\n"
        "  client_max_body_size 1m;\n  client_body_buffer_size 1m;\n"
        "  proxy_buffer_size 64k;\n  proxy_buffers 16 64k;\n"
        f"  upstream api {{\n{servers}  }}\n"
        f"  server {{\n    listen 127.0.0.1:{front};\n    location / {{\n"
        "      proxy_pass http://api;\n      proxy_http_version 1.1;\n"
        '      proxy_set_header Connection "";\n    }\n  }\n}\n'
    )
    return [nginx, "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"]


@contextlib.contextmanager
def fleet(tmp_path: Path, env: dict[str, str]) -> Iterator[tuple[str, list[str]]]:
    """Two orchestrators on the shared stores and nginx in front: (nginx URL, their URLs)."""
    ports = [free_port(), free_port()]
    with contextlib.ExitStack() as stack:
        urls = []
        for i, port in enumerate(ports):
            cmd = conclave("serve", "--port", str(port))
            proc = stack.enter_context(started(cmd, env, tmp_path, tmp_path / f"serve-{i}.log"))
            urls.append(f"http://127.0.0.1:{port}")
            wait_live(urls[-1], proc)
        front = free_port()
        proxy = stack.enter_context(started(_nginx(tmp_path, front, ports), env, tmp_path,
                                            tmp_path / "nginx.log"))  # fmt: skip
        lb = f"http://127.0.0.1:{front}"
        wait_live(lb, proxy)  # through nginx to an orchestrator's live probe
        yield lb, urls


def _runs_requests(url: str) -> float:
    """``POST /pipeline/run`` requests this process answered (its own /metrics)."""
    text = httpx2.get(f"{url}/metrics", timeout=5, trust_env=False).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("conclave_http_request_duration_seconds_count") and (
            'route="/pipeline/run"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.postgres
@pytest.mark.redis
def test_two_orchestrators_one_run_per_key_and_two_schedulers_one_run_per_slot(
    tmp_path: Path, own_database: str, redis_url: str
) -> None:
    env = clean_env(tmp_path, DATABASE_URL=own_database, REDIS_URL=redis_url)
    key = "issue13-" + secrets.token_hex(8)
    with fleet(tmp_path, env) as (lb, urls):

        def post(_: int) -> httpx2.Response:
            with httpx2.Client(timeout=60, trust_env=False) as client:
                return client.post(f"{lb}/pipeline/run", json=RUN, headers={"Idempotency-Key": key})

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(post, range(8)))
        settled = [a for a in answers if a.status_code in (200, 201)]
        ids = {a.json()["runId"] for a in settled}
        statuses = sorted(a.status_code for a in answers)
        with httpx2.Client(timeout=30, trust_env=False) as client:
            listed = client.get(f"{lb}/pipeline/runs", params={"symbol": "BTCUSDT", "limit": 100})
        served = [_runs_requests(u) for u in urls]

        jobs = json.dumps([{"symbol": "ETHUSDT", "timeframe": "1h"}])
        sched_env = env | {"CONCLAVE_SCHEDULER__JOBS": jobs}
        cmd = conclave("scheduler", "--once", "--json")
        procs = [subprocess.Popen(cmd, env=sched_env, cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for _ in range(2)]  # fmt: skip
        try:
            outs = [p.communicate(timeout=120) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=5)
        with httpx2.Client(timeout=30, trust_env=False) as client:
            eth = client.get(f"{lb}/pipeline/runs", params={"symbol": "ETHUSDT"}).json()
    assert statuses.count(201) == 1, statuses
    assert set(statuses) <= {200, 201, 409}, statuses
    assert len(ids) == 1, ids
    assert listed.status_code == 200
    assert [r["runId"] for r in listed.json()["items"]] == list(ids)  # one run recorded
    assert all(n > 0 for n in served), served  # nginx spread the calls over both replicas
    outcomes = sorted(json.loads(out)["outcomes"][0]["status"] for out, _ in outs)
    # the loser finds the slot claimed (still running) or already done (not due any more)
    assert outcomes[1] == "ok", outs
    assert outcomes[0] in ("claimed_elsewhere", "not_due"), outs
    assert eth["total"] == 1, eth


def test_two_orchestrators_share_one_exchange_budget(
    tmp_path: Path, own_database: str, redis_url: str, shared_data: Path
) -> None:
    """Two orchestrators on one Redis spend one Binance budget: with room for one run's
    fetches (weight 7 of 10 a minute: 1h, 4h, 1d), four runs sent to both replicas at once
    reach the exchange once, within the 10 of the minute; budgets of their own would let
    each replica fetch for itself."""
    from tests.fakes import FakeBinance

    budget = 10
    with FakeBinance(shared_data).running() as stub:
        env = clean_env(
            tmp_path, DATABASE_URL=own_database, REDIS_URL=redis_url,
            CONCLAVE_MARKET__SOURCE="binance", CONCLAVE_MARKET__BINANCE__BASE_URL=stub.base_url,
            CONCLAVE_MARKET__BINANCE__WEIGHT_LIMIT_PER_MINUTE=str(budget),
            CONCLAVE_MARKET__BINANCE__BUDGET_SHARE="1", CONCLAVE_MARKET__BINANCE__DEADLINE_S="3",
            CONCLAVE_MARKET__CACHE__TTL_S="0.001",
            CONCLAVE_MARKET__CACHE__KEY_PREFIX="issue13-" + secrets.token_hex(6),
        )  # fmt: skip
        with fleet(tmp_path, env) as (lb, urls):
            while time.time() % 60 > 30:  # the runs inside one minute window of the budget
                time.sleep(1)
            start = time.time()

            def post(_: int) -> int:
                with httpx2.Client(timeout=60, trust_env=False) as client:
                    return client.post(f"{lb}/pipeline/run", json=RUN).status_code

            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                codes = list(pool.map(post, range(4)))
            served = [_runs_requests(u) for u in urls]
            hits = stub.requests()  # klines
            same_minute = int(start // 60) == int(time.time() // 60)
    assert served == [2.0, 2.0], served  # round robin: both replicas asked for data
    assert all(c < 500 or c == 503 for c in codes), codes
    spent = sum(h.weight for h in hits)
    assert hits, "no request reached the exchange"
    assert same_minute, "the runs outlasted their minute (30 s of margin): too loaded to tell"
    assert spent <= budget, f"{spent} weight in one minute, budget {budget}: {hits}"
    # one fetch of the run's bars in all: a replica with a budget of its own would have made
    # its own (each got two runs; within a replica concurrent runs share one fetch)
    base = [h for h in hits if h.params.get("interval") == "1h"]
    assert len(base) == 1, hits
