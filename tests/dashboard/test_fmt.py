"""The templates' formatting: prices by their size, percentages, times, the contribution bars."""

from __future__ import annotations

import math

from conclave.dashboard.fmt import bars, num, pct, price, when


def test_prices_keep_four_significant_digits() -> None:
    assert price(64_123.456) == "64,123.46"
    assert price(1.23456) == "1.235"
    assert price(0.0512345) == "0.05123"
    assert price(0.00001234567) == "0.00001235"
    assert price(None) == "–"
    assert price(float("nan")) == "–"


def test_numbers_and_percentages() -> None:
    assert num(-0.26948, 4, signed=True) == "-0.2695"
    assert pct(0.0123) == "1.23 %"
    assert pct(-0.05, 1, signed=True) == "-5.0 %"
    assert pct(True) == "–"  # a boolean is not a number


def test_times_are_utc_text_in_a_time_element() -> None:
    html = str(when("2026-12-02T04:37:43.559Z"))
    assert html == ('<time datetime="2026-12-02T04:37:43.559Z" title="2026-12-02 04:37:43 UTC">'
                    "2026-12-02 04:37:43 UTC</time>")  # fmt: skip
    assert str(when(1_796_186_674_000)).startswith('<time datetime="2026-12-02T')
    assert str(when("<script>")) == "–"


def test_bars_are_the_contributions_on_one_scale_and_sum_to_the_conviction() -> None:
    parts = {"a": -0.2, "b": 0.05, "c": None, "d": -0.1}
    contributions = {k: {"contribution": v, "status": "ok" if v is not None else "error",
                         "weight": 1.0} for k, v in parts.items()}  # fmt: skip
    out = bars(contributions, -0.25)
    assert math.isclose(out["sum"], -0.25)
    rows = {r["agent"]: r for r in out["rows"]}
    assert rows["a"]["width"] == 80
    assert rows["a"]["x"] == 20
    assert rows["b"]["width"] == 20
    assert rows["b"]["x"] == 100
    assert rows["c"]["width"] == 0
    assert rows["c"]["value"] is None
    assert out["conviction_bar"] == {"x": 0, "width": 100, "side": "neg"}
