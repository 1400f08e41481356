"""The chart, the HTML report and the JSON summary."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from conclave.backtest.chart import minmax_indices, plot_png
from conclave.backtest.metrics import performance
from conclave.backtest.report import write_html
from conclave.backtest.result import BacktestResult, Fill, Gap
from conclave.backtest.summary import summary

from .helpers import T0, agent, make_result, synthetic

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HOUR = 3_600_000


def _result(n: int = 300, *, symbol: str = "BTCUSDT", n_fills: int = 4) -> BacktestResult:
    rng = np.random.default_rng(4)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    equity = 1000.0 * np.exp(np.cumsum(rng.normal(0.0005, 0.004, n)))
    fills = [
        Fill(
            T0 + (i + 1) * HOUR,
            T0 + i * HOUR,
            "BUY" if i % 2 == 0 else "SELL",
            0.5,
            float(close[i]),
            0.05,
            None if i % 2 == 0 else 1.25,
            f"fill {i}",
        )
        for i in range(n_fills)
    ]
    return make_result(
        close,
        equity=equity,
        agents=[agent("momentum", np.tanh(rng.normal(size=n)), rng.uniform(0, 100, n))],
        conviction=np.where(np.arange(n) < 10, np.nan, rng.normal(0, 0.3, n)),
        fills=fills,
        gaps=[Gap(T0 + 100 * HOUR, T0 + 104 * HOUR, 3)],
        symbol=symbol,
        settings={"fee_rate": 0.001, "note": "<b>raw</b>"},
        timings={"agents": 0.5, "replay": 0.125},
    )


def test_minmax_indices_keep_extremes() -> None:
    rng = np.random.default_rng(0)
    y = np.cumsum(rng.normal(size=100_003))
    y[77_777] = -1e6  # a one-bar crash must survive the downsampling
    idx = minmax_indices(y, 4000)
    assert idx.size <= 4002
    assert np.all(np.diff(idx) > 0)
    assert {0, 100_002, 77_777, int(np.argmax(y))} <= set(idx.tolist())
    np.testing.assert_array_equal(minmax_indices(y[:50], 4000), np.arange(50))


def test_png_is_valid(tmp_path: Path) -> None:
    path = plot_png(_result(), tmp_path / "sub" / "chart.png")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    image = matplotlib.image.imread(str(path))
    assert image.shape == (700, 1200, 4)
    assert float(image[..., :3].std()) > 0.05  # something was drawn


def test_png_of_a_long_simulated_run_is_valid(tmp_path: Path) -> None:
    """A 100,000-bar run (downsampled, gaps shaded) still gives a PNG; its speed is in
    benchmarks/backtest_figures.py."""
    path = plot_png(synthetic(100_000), tmp_path / "long.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_html_report(tmp_path: Path) -> None:
    res = _result(symbol="<BTC>")
    out = write_html(res, tmp_path / "r" / "report.html", parity={"checked": 12, "equal": True})
    text = out.read_text(encoding="utf-8")
    png = tmp_path / "r" / "report.png"  # next to the HTML by default
    assert png.read_bytes()[:8] == PNG_MAGIC
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert match is not None
    assert base64.b64decode(match.group(1)) == png.read_bytes()
    assert "&lt;BTC&gt;" in text
    assert "<BTC>" not in text
    assert "<b>raw</b>" not in text
    assert "&lt;b&gt;raw&lt;/b&gt;" in text
    perf = performance(res)
    assert f"{100 * perf.total_return:.2f}%" in text
    assert f"{100 * perf.buy_and_hold.total_return:.2f}%" in text
    assert f"{100 * perf.max_drawdown:.2f}%" in text
    assert "momentum" in text
    assert "decision" in text
    assert "2021-01-05T04:00:00.000Z" in text  # the gap's last bar before
    assert "Parity" in text
    assert "checked" in text
    assert "SIMULATED" not in text
    assert "<script" not in text
    assert "http://" not in text
    assert "https://" not in text


def test_html_report_shows_the_score_correlation_coloured(tmp_path: Path) -> None:
    """A table of the directional agents' pairwise correlation: blue for positive, red for
    negative, opacity |r|, a dash where undefined."""
    n = 200
    x = np.tanh(np.random.default_rng(5).normal(size=n))
    res = make_result(100.0 + np.arange(n), agents=[
        agent("market-structure", x),
        agent("multi-timeframe", 0.8 * x),
        agent("statistical-edge", -x),
        agent("news-sentiment", np.zeros(n), usable=np.zeros(n, dtype=bool)),
    ])  # fmt: skip
    text = write_html(res, tmp_path / "c.html").read_text(encoding="utf-8")
    section = text[text.index("<h2>Score correlation</h2>") : text.index("<h2>Gaps</h2>")]
    assert section.count("<tr>") == 5  # the header and four agents
    blue = 'style="background: rgba(33, 102, 172, 1.00); color: #fff" title="r = 1.0000">+1.00<'
    red = 'style="background: rgba(178, 24, 43, 1.00); color: #fff" title="r = -1.0000">-1.00<'
    assert blue in section
    assert red in section
    assert '<td class="muted">—</td>' in section  # news-sentiment never had data


def test_html_simulated_no_gaps_many_trades(tmp_path: Path) -> None:
    base = _result(n=400, n_fills=130)
    res = make_result(
        base.close, equity=base.equity, fills=base.fills, simulated=True, source="synthetic"
    )
    out = write_html(res, tmp_path / "r.html", png_path=tmp_path / "img" / "c.png")
    text = out.read_text(encoding="utf-8")
    assert (tmp_path / "img" / "c.png").exists()
    assert not (tmp_path / "r.png").exists()
    assert "SIMULATED" in text
    assert "no gaps" in text
    assert "130 fills; the first and last 50 are listed" in text
    assert "30 fills not shown" in text
    assert "fill 49" in text
    assert "fill 50<" not in text
    assert "fill 129" in text
    assert "Parity" not in text


def test_summary_is_plain_json() -> None:
    res = _result()
    out = summary(
        res,
        parity={"maxDiff": np.float64(0.0), "bad": float("nan")},
        lookahead={"agents": ("a", "b"), "ok": np.bool_(True)},
    )
    text = json.dumps(out, allow_nan=False)
    back = json.loads(text)
    assert back == out
    assert out["symbol"] == "BTCUSDT"
    assert out["from"] == "2021-01-01T00:00:00.000Z"
    assert out["to"] == "2021-01-13T12:00:00.000Z"  # close of bar 299
    assert out["bars"] == 300
    assert out["fills"] == 4
    assert out["missingBars"] == 3
    assert out["gaps"] == [{"afterOpenMs": T0 + 100 * HOUR, "beforeOpenMs": T0 + 104 * HOUR,
                            "missingBars": 3}]  # fmt: skip
    assert out["performance"]["totalReturn"] == pytest.approx(performance(res).total_return)
    assert "buyAndHold" in out["performance"]
    assert [s["name"] for s in out["skill"]] == ["momentum", "decision"]
    assert out["parity"] == {"maxDiff": 0.0, "bad": None}
    assert out["lookahead"] == {"agents": ["a", "b"], "ok": True}
    assert out["timings"] == {"agents": 0.5, "replay": 0.125}
    assert out["settings"]["note"] == "<b>raw</b>"
    assert out["simulated"] is False
    assert "parity" not in summary(res)


def test_summary_of_a_long_run_is_plain_json() -> None:
    """A 100,000-bar run's summary holds only JSON types (numpy settings unwrapped); its
    speed is in benchmarks/backtest_figures.py."""
    out = summary(synthetic(100_000))
    json.dumps(out, allow_nan=False)
    assert out["settings"]["max_position_fraction"] == 0.25
