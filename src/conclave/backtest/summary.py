"""The backtest's JSON summary: the CLI's ``--json`` object, in plain JSON types only.

`summary` gathers the run, its performance (with buy-and-hold), per-agent skill, the
correlation of the agents' scores, gaps, what validation removed from the data, timings and
settings; `plain` turns numpy values, tuples and objects with ``to_json`` into JSON types
(NaN and infinities as null).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from conclave.backtest.export import iso_array
from conclave.backtest.metrics import performance
from conclave.backtest.result import BacktestResult
from conclave.backtest.skill import agent_skill, score_correlation


def plain(value: Any) -> Any:
    """``value`` with only JSON types: numpy scalars and arrays unwrapped, tuples as lists,
    mapping keys as text, NaN/inf as None, objects with ``to_json`` converted, anything
    else as its text."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if hasattr(value, "to_json"):
        return plain(value.to_json())
    if isinstance(value, Path):
        return str(value)
    return str(value)


def period_iso(result: BacktestResult) -> tuple[str | None, str | None]:
    """The period as ISO texts: the first bar's open and the last bar's close (None, None
    when the result holds no bar)."""
    if len(result) == 0:
        return None, None
    start = str(iso_array([int(result.open_time[0])])[0])
    end = str(iso_array([int(result.close_time[-1])])[0])
    return start, end


def summary(
    result: BacktestResult,
    *,
    parity: Mapping[str, Any] | None = None,
    lookahead: Mapping[str, Any] | None = None,
    validation: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything about the run as one plain-JSON object (camelCase keys): symbol,
    timeframe, source, simulated, from/to (ISO, first open to last close), bars,
    performance (with buyAndHold), skill, correlation (Pearson of agent scores), gaps and
    missingBars, fills (count), timings (seconds), settings, and validation
    (`HistoryValidation.to_json`) and parity/lookahead when given."""
    start, end = period_iso(result)
    out: dict[str, Any] = {
        "symbol": result.symbol,
        "timeframe": result.timeframe,
        "source": result.source,
        "simulated": bool(result.simulated),
        "from": start,
        "to": end,
        "bars": len(result),
        "performance": performance(result).to_json(),
        "skill": [s.to_json() for s in agent_skill(result)],
        "correlation": score_correlation(result),
        "gaps": [g.to_json() for g in result.gaps],
        "missingBars": result.missing_bars,
        "fills": len(result.fills),
        "timings": dict(result.timings),
        "settings": dict(result.settings),
    }
    if validation is not None:
        out["validation"] = dict(validation)
    if parity is not None:
        out["parity"] = dict(parity)
    if lookahead is not None:
        out["lookahead"] = dict(lookahead)
    result_json: dict[str, Any] = plain(out)
    return result_json
