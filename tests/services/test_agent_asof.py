"""An agent service computes as of ``asOf`` and checks inline candles (issue 10, item 8).

A whole real series sent with a mid-series ``asOf`` answers what the in-process pipeline
computes at that instant (bars after it, the still-open one, later higher bars and later
headlines are left out); a bad row is 422 naming its column and index; no bar closed by
``asOf`` is ``insufficient_data``; data older than the gateway allows is ``stale_data``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from conclave.agents import REGISTRY
from conclave.market.candles import Candles
from conclave.market.resample import resample
from conclave.market.validation import fill_gaps
from conclave.news.headline import Headline
from conclave.news.sources import FileNewsSource
from conclave.pipeline import Pipeline, PipelineRun
from conclave.pipeline.context import fetch_plan
from conclave.pipeline.wire import COLUMNS, encode_input
from conclave.timeframes import HOUR_MS, iso_ms
from tests.agents.helpers import load
from tests.services.helpers import BTC_1H, FILE_AS_OF, NOW_ISO, context_at, file_gateway
from tests.services.test_agent_app import JSON, assert_clean_error, client

pytestmark = pytest.mark.shared_data
NEWS = "news/btc_price_moving_news_2010-2022.csv"
AFTER = 300  # bars sent after asOf
#: asOf inside a bar (the May 2021 crash, 1 min after a close) and exactly at a close
AS_OF = (FILE_AS_OF[1], FILE_AS_OF[1] - 60_000 - 5 * HOUR_MS)
LATER = [  # headlines after asOf: a strong view the answer must not see
    Headline(FILE_AS_OF[1] + k * HOUR_MS, "Bitcoin crashes as exchange hacked", assets=("BTC",))
    for k in (1, 3, 30)
]


def _columns(c: Candles) -> dict[str, Any]:
    return {COLUMNS[k]: v.tolist() for k, v in c.columns().items()}


def _series(shared_data: Path, as_of: int) -> tuple[Candles, int]:
    """The real BTC 1h bars around ``as_of``: every bar any agent reads, then ``AFTER``
    more; and the index of the last bar closed by ``as_of``. Gaps are filled as the
    pipeline fills its windows (B3): the file misses bars in the window at the close."""
    c, _ = fill_gaps(load(shared_data / "candles" / BTC_1H))
    last = int(np.searchsorted(c.close_time, as_of, side="right")) - 1
    need, _ = fetch_plan([cls() for cls in REGISTRY.values()], "1h")
    return c.take(slice(last + 1 - need - 50, last + 1 + AFTER)), need + 49


async def _local(shared_data: Path, as_of: int) -> tuple[PipelineRun, dict[str, dict[str, Any]]]:
    """The in-process pipeline's run at ``as_of`` and the wire context it gives each agent."""
    news = FileNewsSource(shared_data / NEWS, assets=("BTC",))
    async with Pipeline(file_gateway(shared_data), news_source=news) as pipe:
        run = await pipe.run(None, "BTCUSDT", "1h", as_of_ms=as_of, now_iso=NOW_ISO)
        ctx = await context_at(pipe, as_of)
    return run, {n: orjson.loads(encode_input(ctx.input_for(pipe.agents[n]))) for n in REGISTRY}


def _whole(body: dict[str, Any], series: Candles, higher: bool) -> dict[str, Any]:
    """``body`` with the whole series instead of the pipeline's window (and, with
    ``higher``, the whole 4h and 1d series built from it), and headlines to its end."""
    out = dict(body)
    out["candles"] = {"1h": _columns(series)}
    if higher:
        for tf in body["candles"]:
            if tf != "1h":
                out["candles"][tf] = _columns(resample(series, tf, trim_leading=True))
    if body["news"] is not None:
        out["news"] = [*body["news"], *({"publishedMs": h.published_ms, "title": h.title,
                                          "source": "", "url": "", "assets": ["BTC"]}
                                         for h in LATER)]  # fmt: skip
    return out


@pytest.mark.parametrize("as_of", AS_OF, ids=["inside-a-bar", "at-a-close"])
async def test_a_whole_series_answers_as_of_its_as_of(as_of: int, shared_data: Path) -> None:
    """Every agent, sent 1h bars running ``AFTER`` bars past ``asOf`` (and, second, whole
    4h and 1d series too), answers exactly what the in-process pipeline computes at
    ``asOf``: same status, score, confidence and payload, and ``meta.as_of`` the close of
    the last bar closed by then."""
    series, last = _series(shared_data, as_of)
    run, bodies = await _local(shared_data, as_of)
    closed = iso_ms(int(series.close_time[last]))
    assert int(series.close_time[last]) <= as_of < int(series.close_time[last + 1])
    for name in REGISTRY:
        step = run.steps[name]
        assert step.status == "ok", (name, step.error)
        assert step.as_of == closed
        async with client(name) as c:
            for higher in (False, True):
                body = _whole(bodies[name], series, higher)
                resp = await c.post("/run", content=orjson.dumps(body), headers=JSON)
                got = resp.json()
                assert resp.status_code == 200, resp.text
                assert got["meta"]["status"] == "ok", (name, got["meta"]["reason"])
                assert (got["score"], got["confidence"]) == (step.score, step.confidence), name
                assert got["payload"] == orjson.loads(orjson.dumps(step.payload)), name
                assert got["meta"]["as_of"] == closed, name


async def test_bars_after_as_of_change_nothing(shared_data: Path) -> None:
    """Bars after ``asOf`` (whatever they hold) and headlines after it leave the answer as
    it is: the same context with other future bars gives the same answer for every agent."""
    series, last = _series(shared_data, AS_OF[0])
    _, bodies = await _local(shared_data, AS_OF[0])
    cols = {k: np.array(v, copy=True) for k, v in series.columns().items()}
    for k in ("open", "high", "low", "close", "volume"):
        cols[k][last + 1 :] *= 3.0  # a rally of 200 % and triple volume, after asOf only
    future = series.with_columns(cols)
    for name in REGISTRY:
        async with client(name) as c:
            answers = []
            for s in (series, future):
                body = _whole(bodies[name], s, higher=True)
                resp = await c.post("/run", content=orjson.dumps(body), headers=JSON)
                got = resp.json()
                got["meta"].pop("duration_ms")
                answers.append(got)
        assert answers[0] == answers[1], name


async def test_a_bad_row_is_422_naming_its_column_and_index(shared_data: Path) -> None:
    """High below low, a price not positive, a null: 422 whose field is the column and row
    (``candles.1h.high[17]``) and whose message says which rule, with the rows after it."""
    series, _ = _series(shared_data, AS_OF[0])
    _, bodies = await _local(shared_data, AS_OF[0])
    body = _whole(bodies["momentum"], series, higher=False)
    cases: list[tuple[str, Any, str, str]] = [
        ("high", float(series.low[17]) * 0.99, "candles.1h.high[17]", "high below low"),
        ("low", -1.0, "candles.1h.low[17]", "price not positive"),
        ("close", None, "candles.1h.close[17]", "expected a number, got null"),
        ("volume", -5.0, "candles.1h.volume[17]", "negative volume"),
    ]
    async with client("momentum") as c:
        for column, value, field, rule in cases:
            bad = orjson.loads(orjson.dumps(body))
            bad["candles"]["1h"][column][17] = value
            resp = await c.post("/run", content=orjson.dumps(bad), headers=JSON)
            assert_clean_error(resp, 422, field)
            assert resp.json()["error"]["message"] == f"{field}: {rule}"
        bad = orjson.loads(orjson.dumps(body))
        for i in (17, 18, 400):
            bad["candles"]["1h"]["high"][i] = bad["candles"]["1h"]["low"][i] * 0.5
        resp = await c.post("/run", content=orjson.dumps(bad), headers=JSON)
    assert_clean_error(resp, 422, "candles.1h.high[17]")
    assert resp.json()["error"]["message"].endswith("high below low (and 2 more rows)")


async def test_as_of_before_the_first_bar_is_insufficient_data(shared_data: Path) -> None:
    """An ``asOf`` before the first bar closes leaves no bar: 200, status
    ``insufficient_data`` naming ``asOf``, score 0, confidence 0 and no ``meta.as_of``."""
    series, _ = _series(shared_data, AS_OF[0])
    _, bodies = await _local(shared_data, AS_OF[0])
    for name in ("market-structure", "risk-manager"):
        body = {**_whole(bodies[name], series, higher=False), "asOf": int(series.open_time[0])}
        async with client(name) as c:
            resp = await c.post("/run", content=orjson.dumps(body), headers=JSON)
        got = resp.json()
        assert resp.status_code == 200, resp.text
        assert got["meta"]["status"] == "insufficient_data"
        assert "got 0: none closed by asOf" in got["meta"]["reason"]
        assert (got["score"], got["confidence"], got["meta"]["as_of"]) == (0.0, 0.0, None)


async def test_old_data_is_stale_on_any_timeframe(shared_data: Path) -> None:
    """An ``asOf`` long after the last bar, or a higher timeframe that ends early, answers
    ``stale_data`` (as the gateway refuses it), never a signal from old bars."""
    series, _ = _series(shared_data, AS_OF[0])
    _, bodies = await _local(shared_data, AS_OF[0])
    late = {**_whole(bodies["momentum"], series, higher=False)}
    late["asOf"] = int(series.close_time[-1]) + 3 * HOUR_MS
    early = _whole(bodies["multi-timeframe"], series, higher=True)
    day = early["candles"]["1d"]
    keep = sum(t < AS_OF[0] - 96 * HOUR_MS for t in day["openTime"])  # to 4 days before asOf
    early["candles"]["1d"] = {k: v[:keep] for k, v in day.items()}
    for name, body in (("momentum", late), ("multi-timeframe", early)):
        async with client(name) as c:
            resp = await c.post("/run", content=orjson.dumps(body), headers=JSON)
        got = resp.json()
        assert resp.status_code == 200, resp.text
        assert got["meta"]["status"] == "stale_data", (name, got["meta"])
        assert got["meta"]["reason"].startswith("stale_data:")
