"""The wire context decoded: exact round trip, strict columns, and candle rows refused by
exactly the gateway's rules (`validation.reject_invalid_rows`), the first one named."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conclave.market.candles import Candles
from conclave.market.validation import reject_invalid_rows
from conclave.pipeline import Pipeline
from conclave.pipeline.wire import WireError, decode_context, encode_input
from tests.services.helpers import SIM_NOW, sim_gateway

HOUR = 3_600_000


async def test_a_context_decodes_to_the_input_it_was_encoded_from() -> None:
    """Every agent's input, through JSON and back: the same bars bit for bit, as read-only
    int64 and float64 columns, the same higher timeframes, news and account."""
    async with Pipeline(sim_gateway()) as pipe:
        limit, higher = pipe.plan("1h")
        snap = await pipe.gateway.snapshot("BTCUSDT", "1h", higher=higher, limit=limit,
                                           as_of_ms=SIM_NOW)  # fmt: skip
        ctx = await pipe.context(snap, None)
        for agent in pipe.agents.values():
            given_input = ctx.input_for(agent)
            got = decode_context(orjson.loads(encode_input(given_input))).agent_input
            assert got is not None
            pairs = [(given_input.candles, got.candles)]
            assert got.higher.keys() == given_input.higher.keys(), agent.name
            pairs += [(c, got.higher[tf]) for tf, c in given_input.higher.items()]
            for sent, back in pairs:
                assert back.equals(sent), agent.name
                assert back.timeframe == sent.timeframe
                for col in back.columns().values():
                    assert not col.flags.writeable
                    assert col.dtype in (np.int64, np.float64)
            assert got.news == given_input.news
            assert (got.account is None) == (given_input.account is None)


def _body(cols: dict[str, Any]) -> dict[str, Any]:
    return {"symbol": "BTCUSDT", "timeframe": "1h", "asOf": 10 * HOUR, "candles": {"1h": cols}}


@pytest.mark.parametrize(
    ("column", "values", "field", "problem"),
    [
        ("volume", [True, False], "candles.1h.volume[0]", "expected a number, got bool"),
        ("trades", [1, 2.5], "candles.1h.trades[1]", "expected an integer, got float"),
        ("close", [1.0, "2"], "candles.1h.close[1]", "expected a number, got str"),
        ("open", [1.0, 10**400], "candles.1h.open", "expected a list of 2 numbers"),
    ],
)
def test_a_column_of_anything_but_numbers_is_refused_at_its_first_bad_item(
    column: str, values: list[Any], field: str, problem: str
) -> None:
    """Booleans, floats where integers belong and strings are named down to the item, an
    integer beyond any float by the column (numpy's dtype inference, not a cast, decides)."""
    one = [1.0, 1.0]
    cols: dict[str, Any] = {"openTime": [0, HOUR], "open": one, "high": one, "low": one,
                            "close": one, "volume": one}  # fmt: skip
    cols[column] = values
    with pytest.raises(WireError) as err:
        decode_context(_body(cols))
    assert err.value.field == field
    assert problem in str(err.value)


_PRICES = st.sampled_from([-1.0, 0.0, 1.0, 2.0, 2.5, 3.0, 1e-300, 1e300])
_ROW = st.tuples(_PRICES, _PRICES, _PRICES, _PRICES, st.sampled_from([-1.0, 0.0, 1.0, 4.0]),
                 st.sampled_from([None, -1.0, 0.0, 1.0, 4.0, 4.0000001]),
                 st.sampled_from([None, -1, 0, 3]))  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(_ROW, min_size=1, max_size=6))
def test_rows_are_refused_exactly_when_the_gateway_rules_reject_one(
    rows: list[tuple[Any, ...]],
) -> None:
    """Random small tables: a row breaking any rule (prices, high/low order, volume,
    taker-buy, trades) is 422 naming the first bad row and its rule; none is accepted."""
    taker = all(r[5] is not None for r in rows)
    trades = all(r[6] is not None for r in rows)
    cols: dict[str, Any] = {"openTime": [i * HOUR for i in range(len(rows))]}
    for i, key in enumerate(("open", "high", "low", "close", "volume")):
        cols[key] = [r[i] for r in rows]
    if taker:
        cols["takerBuyVolume"] = [r[5] for r in rows]
    if trades:
        cols["trades"] = [r[6] for r in rows]
    candles = Candles.from_arrays(
        "BTCUSDT", "1h", cols["openTime"], cols["open"], cols["high"], cols["low"],
        cols["close"], cols["volume"], cols.get("takerBuyVolume"), cols.get("trades"),
    )  # fmt: skip
    _, rejected = reject_invalid_rows(candles)
    if not rejected:
        decode_context(_body(cols))
        return
    with pytest.raises(WireError) as err:
        decode_context(_body(cols))
    first = int(np.searchsorted(candles.open_time, rejected[0].open_time_ms))
    assert str(err.value.field).endswith(f"[{first}]")
    assert rejected[0].reason in str(err.value)
