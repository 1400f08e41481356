"""RELIABILITY B3: k random candles missing are filled as flat candles with volume 0 and
flagged; more than 1 % of a window missing makes the run degraded.

Pass figure of the row: **every output step equals exactly tf; the flag is set whenever
k > 0**. Held here on real data (the shared BTC 1h, 4h, 1d and 1M files) with k bars taken
out at random:

- the fill itself (`fill_window`), 10,000 hypothesis examples: every step is one bar (a
  calendar month for 1M), each made-up bar is flat at the previous close with volume 0, the
  real bars are untouched, the count is k, the flag is set exactly when k > 0 and the window
  is degraded exactly when k / M > 1 %;
- a live run through ``POST /pipeline/run`` over Stub-BX (in process), at k = 0, 1, the
  largest k at or under 1 % and one more: the run's ``gaps`` names the window with k and M,
  ``degraded`` and the reason ``gaps: ...`` exactly above 1 %, as stored;
- the agents' own view: every input the nine agents get in process, and the JSON context
  two agent services get over HTTP (multi-timeframe reads 4h and 1d, a whole 4h bucket
  missing), has exact steps on every timeframe;
- the scheduler and ``conclave run`` record the same;
- the backtest over a gapped history agrees with the live pipeline at every bar of the
  period and shows no lookahead (the fill reads only bars before the missing one).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conclave import cli
from conclave.agents import AgentInput
from conclave.backtest.checks import check_lookahead, check_parity
from conclave.backtest.engine import run_backtest
from conclave.backtest.history import load_history
from conclave.backtest.settings import BacktestSettings
from conclave.market.cache import MemoryCache
from conclave.market.candles import Candles
from conclave.market.gateway import MarketGateway
from conclave.market.sources.binance import BinanceSource
from conclave.market.sources.files import FileSource, read_candles
from conclave.market.validation import fill_window, find_gaps
from conclave.pipeline import LocalRunner, Pipeline, StepResult
from conclave.pipeline.context import fetch_plan
from conclave.pipeline.orchestrator import default_agents
from conclave.pipeline.wire import decode_context
from conclave.scheduler import Job
from conclave.services.agent_app import create_agent_app
from conclave.services.api import create_app
from conclave.services.execute import build_scheduler
from conclave.services.runtime import Runtime
from conclave.timeframes import DAY_MS, HOUR_MS, MINUTE_MS, iso_ms
from tests.fakes import FakeBinance
from tests.market.test_exchange_time import Wall
from tests.services.helpers import free_port, served, sim_gateway
from tests.services.test_api import make_settings

pytestmark = pytest.mark.shared_data

BTC_1H = "binance_BTCUSDT_1h_20170817-20221011.csv"
FILES = {
    "1h": BTC_1H,
    "4h": "binance_BTCUSDT_4h_20170817-20221011.csv",
    "1d": "binance_BTCUSDT_1d_20170817-20221010.csv",
    "1M": "misc_BTCUSD_1M_20120101-20240601.csv",
}
#: Open time of the BTC 1h file's last bar (2022-10-11 10:00 UTC); no gap in its last year.
LAST_OPEN = 1_665_482_400_000
#: Stub-BX's and the orchestrator's wall clock: one second after that bar closed.
NOW = LAST_OPEN + HOUR_MS + 1_000
RUN = {"symbol": "BTCUSDT", "timeframe": "1h"}
#: The 1h window a run reads: the longest lookback of the nine agents.
LIMIT, _ = fetch_plan(default_agents().values(), "1h")
#: The most bars of that window that may be missing without degrading it (k / M <= 1 %).
K_OK = LIMIT // 99
#: Loose agent timeouts: this row is about data, not latency, on a loaded machine.
SLOW_OK = {"agents": {"timeout_s": 20.0}, "pipeline": {"agent_timeout_s": 20.0,
                                                      "run_deadline_s": 60.0}}  # fmt: skip


def steps_are_exact(candles: Candles) -> bool:
    """True when every bar opens exactly one bar after the one before (calendar months
    for 1M)."""
    t = candles.open_time
    if candles.timeframe.is_monthly:
        months = t.astype("datetime64[ms]").astype("datetime64[M]").astype(np.int64)
        return bool(np.all(np.diff(months) == candles.timeframe.count))
    return bool(np.all(np.diff(t) == candles.timeframe.ms))


def scattered(rng: np.random.Generator, lo: int, hi: int, k: int) -> list[int]:
    """``k`` distinct indices in [lo, hi), no two adjacent (so no higher bucket vanishes)."""
    while True:
        got = sorted(rng.choice(np.arange(lo, hi), size=k, replace=False).tolist())
        if all(b - a > 1 for a, b in itertools.pairwise(got)):
            return [int(i) for i in got]


# -- the fill, pure ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def windows(candles_dir: Path) -> dict[str, Candles]:
    """The newest complete 400 bars (150 for 1M) of each real file, the last one closed."""
    out = {}
    for name, file in FILES.items():
        candles = read_candles(candles_dir / file)
        n = 150 if name == "1M" else 400
        window = candles.tail(n)
        assert len(window) == n
        assert steps_are_exact(window)  # the reference itself has no gap
        out[name] = window
    return out


PROPS = settings(
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@PROPS
@given(data=st.data())
def test_b3_k_missing_bars_filled_flat_counted_and_degraded_above_1_percent(
    windows: dict[str, Candles], data: st.DataObject
) -> None:
    """k random bars (the newest included) taken out of a real window: the filled window
    steps exactly one bar everywhere, each filled bar is flat at the previous close with
    volume 0 and the real bars are untouched; the report counts k of M, flags k > 0 and
    is degraded exactly when k / M > 1 %."""
    name = data.draw(st.sampled_from(sorted(windows)))
    full = windows[name]
    tf, n = full.timeframe, len(full)
    k_max = data.draw(st.sampled_from([2, n // 100, n // 50, n // 10]))
    gone = data.draw(st.sets(st.integers(1, n - 1), max_size=k_max))
    keep = np.ones(n, dtype=bool)
    keep[sorted(gone)] = False
    holed = full.take(keep)
    as_of = int(full.close_time[-1]) + data.draw(st.integers(0, MINUTE_MS))

    out, report = fill_window(holed, as_of)

    assert steps_are_exact(out)
    made = ~np.isin(out.open_time, holed.open_time)
    assert out.take(~made).equals(holed)  # real bars as they were
    prev = np.flatnonzero(made) - 1
    for col in (out.open, out.high, out.low, out.close):
        assert np.array_equal(col[made], out.close[prev])  # flat at the previous close
    assert np.all(out.volume[made] == 0)
    # fresh data is filled through the newest closed bar; stale data only up to its end
    newest = int(holed.open_time[-1])
    fresh = newest >= as_of - 2 * tf.ms - 5 * MINUTE_MS
    assert int(out.open_time[-1]) == (int(full.open_time[-1]) if fresh else newest)
    k = int(made.sum())
    after = int(np.count_nonzero(full.open_time > newest))  # all of these were taken out
    assert k == len(gone) - (0 if fresh else after)
    assert (report.timeframe, report.bars, report.filled) == (name, len(out), k)
    assert (report.filled > 0) == (k > 0)  # the flag whenever k > 0
    assert report.degraded == (k / len(out) > 0.01)


def test_b3_exactly_1_percent_is_not_degraded_and_one_bar_more_is(
    windows: dict[str, Candles],
) -> None:
    """The threshold is strict: 4 of 400 bars (1 %) flags without degrading, 5 of 400
    degrades."""
    full = windows["1h"]
    as_of = int(full.close_time[-1])
    for k, degraded in ((4, False), (5, True)):
        keep = np.ones(len(full), dtype=bool)
        keep[np.arange(1, 2 * k, 2)] = False
        out, report = fill_window(full.take(keep), as_of)
        assert (report.bars, report.filled, report.degraded) == (400, k, degraded)
        assert report.describe() == f"1h {k} of 400 bars missing ({100 * k / 400:.2f} %)"
        assert steps_are_exact(out)


# -- live runs over Stub-BX --------------------------------------------------------------------


def serve_without(stub: FakeBinance, drop: list[int]) -> None:
    """Stub-BX serves BTCUSDT 1h without the bars opening at the times in ``drop`` (ms)."""
    key = ("BTCUSDT", "1h")
    full = stub.series[key]
    keep = np.flatnonzero(~np.isin(full.open_time, drop))

    def rows(i: int, j: int) -> list[list[Any]]:
        return [row for k in keep[i:j] for row in full.rows(int(k), int(k) + 1)]

    stub.series[key] = replace(full, open_time=full.open_time[keep], rows=rows)


def random_drop(k: int, seed: int) -> list[int]:
    """Open times of ``k`` random, non-adjacent 1h bars inside the run's window (not its
    first 20 bars, not its newest)."""
    rng = np.random.default_rng(seed)
    back = scattered(rng, 1, LIMIT - 20, k)
    return [LAST_OPEN - b * HOUR_MS for b in back]


@pytest.fixture
def stub(shared_data: Path) -> Iterator[FakeBinance]:
    """Stub-BX with its clock one second after the BTC 1h file's last bar closed."""
    with FakeBinance(shared_data, wall_ms=Wall(NOW)).running() as fake:
        yield fake
    assert fake.server_errors == []


async def _api(
    tmp_path: Path, stub: FakeBinance, **extra: Any
) -> AsyncIterator[httpx2.AsyncClient]:
    market = {"source": "binance", "binance": {"base_url": stub.base_url}}
    settings = make_settings(tmp_path, market=market, **(SLOW_OK | extra))
    wall = stub.wall_ms
    source = BinanceSource(settings.market.binance, wall_ms=wall)
    app = create_app(settings, now_ms=wall, source=source)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            yield c


def check_recorded(run: dict[str, Any], k: int, bars: int) -> None:
    """The run names the 1h window with k of ``bars`` missing, degraded exactly above 1 %."""
    over = k / bars > 0.01
    if k == 0:
        assert run["gaps"] == {}
    else:
        assert run["gaps"] == {"1h": {"bars": bars, "missing": k,
                                      "missingPct": round(100 * k / bars, 4),
                                      "degraded": over}}  # fmt: skip
    assert run["missingAgents"] == []  # every agent answered
    assert run["degraded"] is over
    assert run["decision"]["degraded"] is over
    said = f"gaps: 1h {k} of {bars} bars missing ({100 * k / bars:.2f} %)"
    assert (said in run["decision"]["reason"]) is over, run["decision"]["reason"]


@pytest.mark.parametrize("k", [0, 1, K_OK, K_OK + 1])
async def test_b3_post_pipeline_run_fills_flags_and_degrades_above_1_percent(
    tmp_path: Path, stub: FakeBinance, k: int
) -> None:
    """POST /pipeline/run over Stub-BX missing k random bars of the 582-bar 1h window:
    201; the run's ``gaps`` says k of 582 + k, ``degraded`` (and the decision's reason
    ``gaps: 1h k of M bars missing (x %)``) exactly when k / M > 1 %; the stored run
    (GET /pipeline/runs/{id}) says the same."""
    serve_without(stub, random_drop(k, seed=k))
    async for api in _api(tmp_path, stub):
        resp = await api.post("/pipeline/run", json=RUN)
        assert resp.status_code == 201, resp.text
        run = resp.json()
        check_recorded(run, k, LIMIT + k)
        stored = (await api.get(f"/pipeline/runs/{run['runId']}")).json()
        check_recorded(stored, k, LIMIT + k)
        assert stored["gaps"] == run["gaps"]
        listed = (await api.get("/pipeline/runs", params={"degraded": "true"})).json()
        assert listed["total"] == int(k > K_OK)


class Recorder:
    """ASGI middleware in front of a real agent service: keeps each ``POST /run`` body."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.bodies: list[bytes] = []

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/run":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def recorded() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    self.bodies.append(b"".join(chunks))
            return message

        await self.app(scope, recorded, send)


async def test_b3_agents_over_http_see_exact_steps_on_every_timeframe(
    tmp_path: Path, stub: FakeBinance
) -> None:
    """Two agents as real services over HTTP (multi-timeframe reads 4h and 1d), the rest in
    process; Stub-BX misses 3 scattered 1h bars and the 4 of one whole 4h bucket: the JSON
    context each service receives has exact steps on 1h, 4h and 1d, and the run names both
    windows (1h 7 of 589, 4h 1 filled)."""
    bucket = LAST_OPEN - 40 * HOUR_MS - (LAST_OPEN - 40 * HOUR_MS) % (4 * HOUR_MS)
    drop = [bucket + i * HOUR_MS for i in range(4)]
    drop += [LAST_OPEN - b * HOUR_MS for b in (100, 200, 300)]
    serve_without(stub, drop)
    names = ("multi-timeframe", "momentum")
    ports = {name: free_port() for name in names}
    recorders = {
        name: Recorder(create_agent_app(name, make_settings(tmp_path), gateway=sim_gateway()))
        for name in names
    }
    agents = {"http": dict.fromkeys(names, True), "ports": ports, "timeout_s": 20.0}
    with served(recorders[names[0]], ports[names[0]]), served(recorders[names[1]], ports[names[1]]):
        async for api in _api(tmp_path, stub, agents=agents):
            resp = await api.post("/pipeline/run", json=RUN)
    assert resp.status_code == 201, resp.text
    run = resp.json()
    assert {n: run["steps"][n]["meta"]["status"] for n in names} == dict.fromkeys(names, "ok")
    assert run["gaps"]["1h"]["missing"] == 7
    assert run["gaps"]["1h"]["bars"] == LIMIT + 7
    assert run["gaps"]["4h"]["missing"] == 1
    assert run["degraded"] is True  # 7 of 589 is above 1 %
    for name, recorder in recorders.items():
        [body] = recorder.bodies
        seen = decode_context(orjson.loads(body)).agent_input
        assert seen is not None
        frames = {"1h": seen.candles, **seen.higher}
        assert set(frames) == ({"1h", "4h", "1d"} if name == "multi-timeframe" else {"1h"})
        for tf, candles in frames.items():
            assert len(candles) > 1, (name, tf)
            assert steps_are_exact(candles), (name, tf)
        at = np.isin(seen.candles.open_time, drop)
        assert int(at.sum()) == len(drop)  # each missing bar is there, made up
        assert np.all(seen.candles.volume[at] == 0)


class Seeing:
    """An agent runner that keeps every input it is given and runs the real agent."""

    mode = "local"

    def __init__(self, inner: LocalRunner, seen: list[AgentInput]) -> None:
        self.inner = inner
        self.name = inner.name
        self.seen = seen

    async def run(self, agent_input: AgentInput, *, now_iso: str) -> StepResult:
        self.seen.append(agent_input)
        return await self.inner.run(agent_input, now_iso=now_iso)

    async def health(self) -> Any:
        return await self.inner.health()


async def test_b3_every_input_the_nine_agents_get_in_process_steps_exactly(
    tmp_path: Path, candles_dir: Path
) -> None:
    """The in-process pipeline over a BTC 1h file missing 9 random bars: every one of the
    nine agents' inputs has exact steps on its own timeframe and every higher one, and
    holds a filled bar where one is missing; the gateway's cache keeps only the bars the
    source gave (the next snapshot, a cache hit, still has the 9 gaps)."""
    drop = random_drop(9, seed=90)
    path = holed_copy(candles_dir / BTC_1H, tmp_path, drop)
    agents = default_agents()
    seen: list[AgentInput] = []
    runners = {n: Seeing(LocalRunner(a, timeout_s=20.0), seen) for n, a in agents.items()}
    gateway = MarketGateway(FileSource(path), cache=MemoryCache(), resample="resample")
    async with Pipeline(gateway, agents=agents, runners=runners) as pipe:
        run = await pipe.run(None, "BTCUSDT", "1h", as_of_ms=NOW, now_iso=iso_ms(NOW))
        higher = pipe.higher_limit("1h")
        again = await gateway.snapshot("BTCUSDT", "1h", higher=("4h", "1d"), limit=LIMIT,
                                       higher_limit=higher, as_of_ms=NOW)  # fmt: skip
    assert find_gaps(again.base).missing_bars == 9
    assert not np.isin(drop, again.base.open_time).any()
    assert run.gaps_filled
    assert run.gaps["1h"].filled == 9
    assert run.degraded is True
    assert len(seen) == 9
    for data in seen:
        for candles in (data.candles, *data.higher.values()):
            assert steps_are_exact(candles)
    longest = max(seen, key=lambda d: len(d.candles))
    assert np.isin(drop, longest.candles.open_time).all()


# -- the scheduler and the command line ---------------------------------------------------------


async def test_b3_a_scheduled_run_records_the_gaps(tmp_path: Path, stub: FakeBinance) -> None:
    """The scheduler's run for the slot just closed, Stub-BX missing K_OK + 1 bars: the
    slot ends ok, its stored run is degraded by gaps with the count."""
    k = K_OK + 1
    serve_without(stub, random_drop(k, seed=3))
    market = {"source": "binance", "binance": {"base_url": stub.base_url}}
    settings = make_settings(tmp_path, market=market, **SLOW_OK)
    wall = stub.wall_ms
    source = BinanceSource(settings.market.binance, wall_ms=wall)
    runtime = await Runtime.open(settings, now_ms=wall, source=source)
    try:
        scheduler = build_scheduler(settings, runtime, only=Job(None, "BTCUSDT", "1h"))
        [outcome] = await scheduler.run_due_once()
        assert outcome.status == "ok", outcome
        assert outcome.run_id is not None
        stored = await runtime.store.get_run(outcome.run_id)
        assert stored is not None
        check_recorded(stored, k, LIMIT + k)
    finally:
        await runtime.aclose()


def holed_copy(src: Path, tmp_path: Path, drop: list[int]) -> Path:
    """A copy of candle file ``src`` in ``tmp_path`` without the rows opening at ``drop``."""
    gone = {str(t) for t in drop}
    lines = src.read_text().splitlines(keepends=True)
    kept = [lines[0]] + [ln for ln in lines[1:] if ln.split(",", 1)[0] not in gone]
    assert len(lines) - len(kept) == len(drop)
    path = tmp_path / "candles" / src.name
    path.parent.mkdir(exist_ok=True)
    path.write_text("".join(kept))
    return path


def test_b3_conclave_run_json_says_which_bars_were_filled(
    runner: CliRunner, candles_dir: Path, tmp_path: Path
) -> None:
    """``conclave run --json`` over a file missing K_OK bars: the run flags them (k of M)
    and is not degraded (at most 1 %)."""
    drop = random_drop(K_OK, seed=11)
    path = holed_copy(candles_dir / BTC_1H, tmp_path, drop)
    args = ["run", "--symbol", "BTCUSDT", "--timeframe", "1h", "--source", f"file:{path}",
            "--as-of", iso_ms(NOW), "--json"]  # fmt: skip
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["gaps"]["1h"]["missing"] == K_OK
    assert out["gaps"]["1h"]["bars"] == LIMIT + K_OK
    assert out["degraded"] is False


# -- the backtest --------------------------------------------------------------------------------


async def test_b3_backtest_agrees_with_live_on_a_gapped_history(
    tmp_path: Path, candles_dir: Path
) -> None:
    """Ten days of BTC 1h with 12 random bars missing in the period and its warm-up: the
    backtest (agents on the filled series, trades on the bars that exist) agrees with the
    live pipeline at every bar of the period within 1e-9, the lookahead check finds no
    bar that changes when the future is cut off, and the gaps are reported, not traded."""
    start = LAST_OPEN - 30 * DAY_MS
    rng = np.random.default_rng(5)
    back = scattered(rng, 1, 10 * 24 + LIMIT, 12)
    drop = [start + 10 * DAY_MS - b * HOUR_MS for b in back]
    path = holed_copy(candles_dir / BTC_1H, tmp_path, drop)
    agents = default_agents()
    src = FileSource(path)
    history = await load_history(src, "BTCUSDT", "1h", agents, start_ms=start,
                                 end_ms=start + 10 * DAY_MS, now_ms=NOW,
                                 resample_policy="resample")  # fmt: skip
    period_drop = [t for t in drop if t >= start]
    assert len(history.period) == 10 * 24 - len(period_drop)  # the trades skip the gaps
    bt = BacktestSettings(resample="resample")
    result = run_backtest(history, agents, bt)
    assert result.missing_bars == len(period_drop)
    report = await check_parity(result, agents, bt, src, n=len(result), seed=0)
    assert report.mismatches == []
    assert report.ok(), report.to_json()
    assert len(report.bars) == len(result)
    look = check_lookahead(history, agents, cuts=4, seed=1)
    assert look.ok(), look.to_json()
