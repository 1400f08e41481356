"""RELIABILITY A4's rig: orchestrator replicas on one exchange budget, a driver, the judge.

Shared by ``tests/reliability/test_a4_weight_budget.py`` and ``benchmarks/a4_weight.py``.

- `fleet` starts ``conclave serve`` replicas (monolithic: the nine agents in process), each
  on an SQLite file of its own (or one PostgreSQL URL), all on one Redis for the rate
  limiter and the candle cache (one key prefix), with the Binance source pointed at
  Stub-BX. Each is stopped by its PID when the block ends, also on failure.
- `drive` posts ``POST /pipeline/run`` for every (symbol, timeframe) in turn, spread over
  the replicas round robin, ``per_replica`` at a time each, as fast as they answer, for
  ``seconds``, and records each answer's status and decision.
- `exchange_figures` reads what Stub-BX counted (the exchange is the judge, not our
  client): requests, weight per window (peak; p99 of the ``X-MBX-USED-WEIGHT-1M`` values
  it sent), the most weight in any sliding window, 429s and 418s, the largest ``limit``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import numpy as np

from tests.fakes import FakeBinance
from tests.security.procs import clean_env, conclave, free_port, started, wait_live

#: 20 symbol names; Stub-BX serves each from the same recorded BTCUSDT rows (`serve_live`).
SYMBOLS = (
    "BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "LTCUSDT",
    "LINKUSDT", "DOTUSDT", "AVAXUSDT", "TRXUSDT", "ETHBTC", "ATOMUSDT", "UNIUSDT", "ETCUSDT",
    "XLMUSDT", "FILUSDT", "NEARUSDT", "APTUSDT",
)  # fmt: skip
#: Every timeframe the orchestrator's allowlist holds (its default).
TIMEFRAMES = ("1m", "5m", "15m", "30m", "1h", "4h", "1d")


@dataclass
class Replica:
    """One ``conclave serve`` process."""

    url: str
    pid: int


@contextlib.contextmanager
def fleet(
    tmp: Path,
    exchange_url: str,
    redis_url: str,
    *,
    replicas: int = 3,
    weight_limit: int = 6000,
    budget_share: float = 0.8,
    cache_ttl_s: float = 0.001,
    database_url: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[list[Replica]]:
    """Start ``replicas`` orchestrators on Stub-BX and one Redis; stop them by PID after."""
    prefix = f"conclave-a4:{time.time_ns()}"
    common = {
        "REDIS_URL": redis_url,
        "CONCLAVE_MARKET__SOURCE": "binance",
        "CONCLAVE_MARKET__SYMBOLS": json.dumps(SYMBOLS),
        "CONCLAVE_MARKET__TIMEFRAMES": json.dumps(TIMEFRAMES),
        "CONCLAVE_MARKET__BINANCE__BASE_URL": exchange_url,
        "CONCLAVE_MARKET__BINANCE__WEIGHT_LIMIT_PER_MINUTE": str(weight_limit),
        "CONCLAVE_MARKET__BINANCE__BUDGET_SHARE": str(budget_share),
        "CONCLAVE_MARKET__CACHE__TTL_S": str(cache_ttl_s),
        "CONCLAVE_MARKET__CACHE__KEY_PREFIX": prefix,
    }
    if database_url:
        common["DATABASE_URL"] = database_url
    common |= extra_env or {}
    with contextlib.ExitStack() as stack:
        out = []
        for i in range(replicas):
            home = tmp / f"replica-{i}"
            home.mkdir(parents=True, exist_ok=True)
            port = free_port()
            cmd = conclave("serve", "--port", str(port))
            proc = stack.enter_context(
                started(cmd, clean_env(home, **common), home, home / "serve.log")
            )
            out.append(Replica(f"http://127.0.0.1:{port}", proc.pid))
            wait_live(out[-1].url, proc, timeout_s=90.0)
        try:
            yield out
        finally:
            _delete_keys(redis_url, prefix)


def _delete_keys(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@dataclass(frozen=True)
class Answer:
    """One ``POST /pipeline/run`` as the driver saw it."""

    replica: int
    status: int
    decision: str
    reason: str
    seconds: float
    #: when it was sent, wall clock (s): which exchange window it started in
    at: float = 0.0


def drive(replicas: Sequence[Replica], seconds: float, *, per_replica: int = 3) -> list[Answer]:
    """Post runs over every (symbol, timeframe), round robin over ``replicas``, for ``seconds``."""
    markets = itertools.cycle(itertools.product(SYMBOLS, TIMEFRAMES))
    lock = threading.Lock()
    answers: list[Answer] = []
    end = time.monotonic() + seconds

    def worker(index: int) -> None:
        url = replicas[index].url
        with httpx2.Client(timeout=60, trust_env=False) as client:
            while time.monotonic() < end:
                with lock:
                    symbol, tf = next(markets)
                at, started_at = time.time(), time.monotonic()
                try:
                    resp = client.post(
                        f"{url}/pipeline/run", json={"symbol": symbol, "timeframe": tf}
                    )
                except httpx2.HTTPError as exc:
                    answer = Answer(index, 0, "transport", type(exc).__name__, 0.0, at)
                else:
                    answer = _answer(index, resp, time.monotonic() - started_at, at)
                with lock:
                    answers.append(answer)

    threads = [
        threading.Thread(target=worker, args=(i,), daemon=True)
        for i in range(len(replicas))
        for _ in range(per_replica)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    return answers


def _answer(index: int, resp: httpx2.Response, took: float, at: float) -> Answer:
    decision, reason = "", ""
    with contextlib.suppress(ValueError):
        body = resp.json()
        if isinstance(body, dict) and isinstance(body.get("decision"), dict):
            decision = str(body["decision"].get("status", ""))
            reason = str(body["decision"].get("reason", ""))
        elif isinstance(body, dict):
            reason = str(body.get("code") or body.get("error") or "")
    return Answer(index, resp.status_code, decision, reason, took, at)


def outcomes(answers: Sequence[Answer]) -> Counter[str]:
    """Answers by ``status decision[: reason code]`` (the reason's first word)."""
    out: Counter[str] = Counter()
    for a in answers:
        code = a.reason.split(":", 1)[0].split(" ", 1)[0] if a.decision != "ok" else ""
        out[" ".join(x for x in (str(a.status), a.decision, code) if x)] += 1
    return out


@dataclass
class ExchangeFigures:
    """What Stub-BX counted."""

    requests: int
    by_path: dict[str, int]
    weight_by_window: dict[int, int]
    peak_window: int
    p99_reported: float
    peak_sliding: int
    status: Counter[int] = field(default_factory=Counter)
    max_limit: int = 0

    @property
    def throttled(self) -> int:
        """429 and 418 answers."""
        return self.status[429] + self.status[418]


def exchange_figures(fake: FakeBinance, window_s: float = 60.0) -> ExchangeFigures:
    """Stub-BX's own counts: weight per window and the values its header reported."""
    hits = list(fake.hits)  # call when the load has stopped
    by_window = dict(fake.book.by_window)
    running: dict[int, int] = {}
    reported = []
    for h in hits:  # the header of each answer: the window's running total (no extra weight)
        key = int(h.t // window_s)
        running[key] = running.get(key, 0) + h.weight
        reported.append(running[key])
    ordered = sorted(hits, key=lambda h: h.t)  # stamped before the lock: nearly in order
    times = np.array([h.t for h in ordered])
    weights = np.cumsum([0] + [h.weight for h in ordered])
    starts = np.searchsorted(times, times - window_s, side="right")
    sliding = max((int(weights[i + 1] - weights[s]) for i, s in enumerate(starts)), default=0)
    limits = [int(h.params["limit"]) for h in hits if h.params.get("limit", "").isdigit()]
    return ExchangeFigures(
        requests=len(hits),
        by_path=dict(Counter(h.path for h in hits)),
        weight_by_window=by_window,
        peak_window=max(by_window.values(), default=0),
        p99_reported=float(np.percentile(reported, 99)) if reported else 0.0,
        peak_sliding=sliding,
        status=Counter(h.status for h in hits),
        max_limit=max(limits, default=0),
    )
