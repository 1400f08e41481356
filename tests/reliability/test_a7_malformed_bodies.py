"""RELIABILITY A7: malformed exchange bodies (HTML, truncated JSON, ``{"code":-1121}``, ``[]``,
1,001 rows, strings instead of numbers, a redirect) become a typed ``ExchangeDataError``;
redirects are not followed.

Pass figure of the row: **1,000 hypothesis-generated bodies: 0 unhandled exceptions, 0
agent crashes.** The 1,000 bodies (`tests.market.hostile_bodies`) go over real HTTP from
Stub-BX to `BinanceSource`; every fetch is counted and must end in candles or a Conclave
error (an `ExchangeDataError` whenever the body is not kline rows). Then each kind the row
names goes through ``POST /pipeline/run``: every run is recorded (201, never a 5xx) as
``no_signal`` with the fetch's reason, and no agent ran on it, so none crashed.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from conclave.errors import ConclaveError, ExchangeDataError
from conclave.market.sources.binance import BinanceSource
from conclave.settings import BinanceSettings
from tests.fakes import FakeBinance, Fault
from tests.market.hostile_bodies import GOOD_ROW, malformed_bodies
from tests.reliability.test_exchange_faults_api import RUN, _api

BODIES = 1_000
#: Rows asked for: the generated bodies hold 0 to 5, so some hold more than asked.
LIMIT = 3


def generated_bodies(n: int) -> list[bytes]:
    """``n`` bodies drawn by hypothesis from `malformed_bodies` (some of them valid)."""
    drawn: list[bytes] = []

    @settings(max_examples=n, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(malformed_bodies())
    def draw(body: bytes) -> None:
        drawn.append(body)

    draw()
    return drawn[:n]


def kline_rows(body: bytes, limit: int) -> bool:
    """True when ``body`` could be at most ``limit`` kline rows: a JSON array of 12-field
    rows, whole non-negative times and counts, finite numbers (as numbers or text) elsewhere,
    no row closing before it opens. Checked here, independently of the parser under test,
    and looser than it: whatever the parser accepts must pass this."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(data, list) or len(data) > limit:
        return False
    for row in data:
        if not isinstance(row, list) or len(row) != 12:
            return False
        if any(isinstance(row[j], bool) or not isinstance(row[j], int) or row[j] < 0
               for j in (0, 6, 8)):  # fmt: skip
            return False
        for j in (1, 2, 3, 4, 5, 7, 9, 10):
            if isinstance(row[j], bool) or not isinstance(row[j], int | float | str):
                return False
            try:
                if not math.isfinite(float(row[j])):
                    return False
            except ValueError:
                return False
        if row[6] < row[0]:
            return False
    return True


def _row(**fields: Any) -> bytes:
    row = list(GOOD_ROW)
    for index, value in fields.items():
        row[int(index.lstrip("f"))] = value
    return json.dumps([row]).encode()


#: Bodies pinned besides the generated ones: numbers that only overflow to infinity once
#: read, and other values a loose parser lets through; each must be an ExchangeDataError.
PINNED = (
    _row(f2=1.7e308), _row(f4="1e999"), _row(f1="-1e999"),
    _row(f5=True), _row(f0=-1), _row(f0=2**64), _row(f8=1.5), _row(f1=" 1"),
    _row(f1="0x10"), _row(f3="1_000"), _row(f6=1), b'"a string"', b"42", b"null",
)  # fmt: skip


async def test_a7_a_thousand_generated_bodies_end_in_candles_or_a_typed_error(
    stub: FakeBinance,
) -> None:
    """A7 (pass figure: 1,000 hypothesis-generated bodies: 0 unhandled exceptions): 1,000
    bodies, and the 14 pinned ones, served by Stub-BX as 200 answers to one `BinanceSource`
    (no retries): every outcome counted, 0 exceptions other than Conclave errors, each
    `ExchangeDataError`'s message under 300 characters, only bodies of kline rows within the
    limit (checked independently) turned into as many candles, every value finite; each
    pinned body an `ExchangeDataError`."""
    bodies = generated_bodies(BODIES)
    assert len(bodies) == BODIES
    src = BinanceSource(BinanceSettings(base_url=stub.base_url, max_retries=0),
                        rng=random.Random(7))  # fmt: skip
    outcomes: list[str] = []
    unhandled: list[str] = []
    long_messages = 0
    try:
        for body in [*bodies, *PINNED]:
            stub.push(Fault(body=body))
            try:
                candles = await src.get_candles("BTCUSDT", "1h", LIMIT)
            except ExchangeDataError as exc:
                outcomes.append("exchange_data")
                long_messages += len(str(exc)) >= 300
            except ConclaveError as exc:
                outcomes.append(exc.reason)
            except Exception as exc:  # the row's figure: none
                outcomes.append("unhandled")
                unhandled.append(f"{type(exc).__name__}: {exc} for {body[:80]!r}")
            else:
                outcomes.append("candles")
                assert kline_rows(body, LIMIT), body[:200]  # only kline rows become candles
                opens = {row[0] for row in json.loads(body)}  # duplicates merge into one bar
                assert len(candles) == len(opens), body[:200]
                values = np.stack([candles.open, candles.high, candles.low, candles.close,
                                   candles.volume])  # fmt: skip
                assert np.isfinite(values).all(), body[:200]
    finally:
        await src.aclose()
    generated = Counter(outcomes[:BODIES])
    print(f"A7: {dict(generated)}")
    assert unhandled == []
    assert long_messages == 0
    assert sum(generated.values()) == BODIES
    assert generated["exchange_data"] >= BODIES // 2  # mostly malformed, as generated
    assert outcomes[BODIES:] == ["exchange_data"] * len(PINNED)
    assert len(stub.requests()) == BODIES + len(PINNED)  # one each: no retry, no redirect


NAMED: dict[str, Fault] = {
    "html": Fault(body=b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>"),
    "truncated": Fault(body=json.dumps([GOOD_ROW] * 3).encode()[:-7]),
    "code -1121": Fault(body=b'{"code":-1121,"msg":"Invalid symbol."}'),
    "empty": Fault(body=b"[]"),
    "1001 rows": Fault(body=json.dumps([GOOD_ROW] * 1001).encode()),
    "strings": Fault(body=json.dumps([[*GOOD_ROW[:1], "abc", *GOOD_ROW[2:]]]).encode()),
    "redirect": Fault(status=302),  # its Location (Stub-BX's /followed) is set per test
}


@pytest.mark.parametrize("kind", list(NAMED))
async def test_a7_each_named_body_ends_the_run_no_signal_with_no_agent_run(
    tmp_path: Path, stub: FakeBinance, kind: str
) -> None:
    """A7 (pass figure: 0 agent crashes) through ``POST /pipeline/run``: klines answered with
    the row's kind (HTML, truncated JSON, ``{"code":-1121}``, ``[]``, 1,001 rows, a string
    for a price, a 302): 201 ``no_signal`` with ``exchange_data`` (``stale_data`` for ``[]``:
    no bars), every step failed with that same reason (no agent was given data, none
    crashed), the redirect's target never requested."""
    fault = NAMED[kind]
    if kind == "redirect":
        fault = Fault(status=302, headers={"Location": f"{stub.base_url}/followed"})
    stub.rule = lambda path, params: fault if path.endswith("/klines") else None
    async for api in _api(tmp_path, stub, "", "p", max_retries=0):
        resp = await api.post("/pipeline/run", json=RUN)
        assert resp.status_code == 201, resp.text
        run: dict[str, Any] = resp.json()
    decision = run["decision"]
    assert decision["status"] == "no_signal"
    expected = "stale_data" if kind == "empty" else "exchange_data"
    assert decision["reason"].startswith(expected), decision["reason"]
    for name, step in run["steps"].items():
        assert step["meta"]["reason"] == decision["reason"], name
        assert step["score"] is None
    assert [h.path for h in stub.hits if not h.path.startswith("/api/v3/")] == []
