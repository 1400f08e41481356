"""Loopback helpers for the agent service tests: free ports, served apps, real contexts."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import uvicorn

from conclave.market.gateway import MarketGateway
from conclave.market.sources.files import FileSource
from conclave.market.sources.sim import SimSource
from conclave.pipeline import Pipeline, PipelineContext

SIM_NOW = 1_700_000_000_000
NOW_ISO = "2023-11-14T22:13:20.000Z"
BTC_1H = "binance_BTCUSDT_1h_20170817-20221011.csv"
#: Points in time inside the shared BTC 1h file: its end, the May 2021 crash, March 2020.
FILE_AS_OF = (1_665_486_060_000, 1_621_429_260_000, 1_584_018_060_000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_health(url: str, name: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx2.Client(timeout=0.5, trust_env=False) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx2.HTTPError):
                r = client.get(f"{url}/health")
                if r.status_code == 200 and r.json().get("agent") == name:
                    return
            time.sleep(0.1)
    raise TimeoutError(f"{name} at {url} not healthy within {timeout_s} s")


@contextlib.contextmanager
def agent_process(name: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``python -m conclave agent serve NAME`` on a free loopback port, killed at the end."""
    port = free_port()
    cmd = [sys.executable, "-m", "conclave", "agent", "serve", name, "--port", str(port),
           "--host", "127.0.0.1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_health(url, name)
        yield proc, url
    finally:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def served(app: Any, port: int | None = None, *, lifespan: str = "off") -> Iterator[str]:
    """``app`` served by uvicorn in a thread on ``port`` (default: a free loopback port)."""
    port = free_port() if port is None else port
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan=lifespan)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def sim_gateway() -> MarketGateway:
    return MarketGateway(SimSource(now_ms=lambda: SIM_NOW))


def file_gateway(shared_data: Path) -> MarketGateway:
    return MarketGateway(FileSource(shared_data / "candles" / BTC_1H), resample="resample")


async def context_at(
    pipe: Pipeline, as_of_ms: int, account_id: str | None = None
) -> PipelineContext:
    """The run context ``pipe`` would build for BTCUSDT 1h at ``as_of_ms``."""
    limit, higher = pipe.plan("1h")
    snap = await pipe.gateway.snapshot("BTCUSDT", "1h", higher=higher, limit=limit,
                                       as_of_ms=as_of_ms)  # fmt: skip
    return await pipe.context(snap, account_id)
