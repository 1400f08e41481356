"""Number and time formatting for the templates (Jinja filters), and the contribution bars.

Prices are shown with the precision their size needs (a 60 000 USDT price with 2 decimals,
a 0.05 BTC price with 6): the API does not carry the exchange's tick size, and this keeps
four significant digits at least. Times are rendered as UTC text inside a ``<time>`` element
(``datetime`` attribute, UTC in the ``title``); the page's script rewrites the text to the
viewer's local time, so without script the reader still sees a correct, labelled time.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment
from markupsafe import Markup, escape


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def price(value: Any) -> str:
    """``value`` with at least four significant digits and at most 8 decimals."""
    v = _number(value)
    if v is None:
        return "–"
    size = math.floor(math.log10(abs(v))) if v else 0
    decimals = min(8, max(2, 3 - size))
    return f"{v:,.{decimals}f}"


def num(value: Any, decimals: int = 2, signed: bool = False) -> str:
    """A plain number (``–`` for none)."""
    v = _number(value)
    if v is None:
        return "–"
    return f"{v:+,.{decimals}f}" if signed else f"{v:,.{decimals}f}"


def pct(value: Any, decimals: int = 2, signed: bool = False) -> str:
    """A fraction as a percentage (0.0123 -> 1.23 %)."""
    v = _number(value)
    if v is None:
        return "–"
    return (f"{v * 100:+.{decimals}f}" if signed else f"{v * 100:.{decimals}f}") + " %"


def _parse(value: Any) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000, UTC)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
        except ValueError:
            return None
    return None


def when(value: Any) -> Markup:
    """A ``<time>`` element: UTC text, ISO ``datetime``, rewritten to local time by app.js."""
    t = _parse(value)
    if t is None:
        return Markup("–")
    iso = t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    text = t.strftime("%Y-%m-%d %H:%M:%S UTC")
    return Markup('<time datetime="{0}" title="{1}">{1}</time>').format(escape(iso), text)


def bars(contributions: dict[str, Any], conviction: Any) -> dict[str, Any]:
    """Geometry of the contribution bars: one row per agent, x and width in a 0-200 box
    whose middle (100) is zero, scaled so the largest part (or the conviction) fills half.

    The values are the decision's own ``contributions`` (w c s / sum w c): they add up to
    its conviction, shown as the last row with the sum beside it.
    """
    parts = {a: _number(c.get("contribution")) for a, c in contributions.items()}
    conv = _number(conviction)
    scale = max([abs(v) for v in parts.values() if v is not None] + [abs(conv or 0.0), 1e-12])
    rows = []
    for agent, c in contributions.items():
        v = parts[agent]
        width = 0.0 if v is None else abs(v) / scale * 100
        rows.append(
            {
                "agent": agent,
                "value": v,
                "status": c.get("status"),
                "weight": c.get("weight"),
                "x": 100 - width if (v or 0) < 0 else 100,
                "width": width,
                "side": "neg" if (v or 0) < 0 else "pos",
            }
        )
    total = math.fsum(v for v in parts.values() if v is not None)
    cw = abs(conv or 0.0) / scale * 100
    return {
        "rows": rows,
        "sum": total,
        "conviction": conv,
        "conviction_bar": {
            "x": 100 - cw if (conv or 0) < 0 else 100,
            "width": cw,
            "side": "neg" if (conv or 0) < 0 else "pos",
        },
    }


def install(env: Environment) -> None:
    """Register the filters on ``env``."""
    env.filters.update(price=price, num=num, pct=pct, when=when)
    env.globals.update(bars=bars)


__all__ = ["bars", "install", "num", "pct", "price", "when"]
