"""Tables of a backtest (one row per bar, one per fill) and writing them as CSV or Parquet.

A table is an ordered ``dict`` of equal-length numpy columns. Times are ISO 8601 UTC text
with milliseconds (``2021-01-01T00:00:00.000Z``) next to the raw ms; money is in the quote
currency. Missing values are NaN in float columns (conviction and confidence where no
decision was made, a BUY's realised P&L) and are written as an empty CSV field or a Parquet
null.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from conclave.backtest.result import ACTIONS, LEVELS, BacktestResult
from conclave.errors import InvalidRequestError

Table = dict[str, npt.NDArray[Any]]
SUFFIXES: tuple[str, ...] = (".csv", ".parquet")


def iso_array(t_ms: npt.ArrayLike) -> npt.NDArray[np.str_]:
    """ISO 8601 UTC text with milliseconds of each ms time (as `conclave.timeframes.iso_ms`)."""
    t = np.asarray(t_ms, dtype=np.int64)
    out: npt.NDArray[np.str_] = np.datetime_as_string(
        t.astype("datetime64[ms]"), unit="ms", timezone="UTC"
    )
    return out


def _codes(names: tuple[str, ...], codes: npt.NDArray[Any]) -> npt.NDArray[np.str_]:
    lookup = np.asarray(names)
    idx = np.asarray(codes, dtype=np.int64)
    return lookup[np.clip(idx, 0, len(names) - 1)]


def signals_table(result: BacktestResult) -> Table:
    """One row per bar: time, open_time_ms, open, close, ``<agent>.score``/``.confidence``/
    ``.usable`` for each agent, the decision (conviction, confidence, action, size_multiplier,
    risk_level, allowed) and the account at the close (equity, cash, position_qty,
    exposure)."""
    table: Table = {
        "time": iso_array(result.open_time),
        "open_time_ms": np.asarray(result.open_time, dtype=np.int64),
        "open": np.asarray(result.open, dtype=np.float64),
        "close": np.asarray(result.close, dtype=np.float64),
    }
    for name, agent in result.agents.items():
        table[f"{name}.score"] = np.asarray(agent.score, dtype=np.float64)
        table[f"{name}.confidence"] = np.asarray(agent.confidence, dtype=np.float64)
        table[f"{name}.usable"] = np.asarray(agent.usable, dtype=np.bool_)
    table.update(
        conviction=np.asarray(result.conviction, dtype=np.float64),
        confidence=np.asarray(result.confidence, dtype=np.float64),
        action=_codes(ACTIONS, result.action),
        size_multiplier=np.asarray(result.size_multiplier, dtype=np.float64),
        risk_level=_codes(LEVELS, result.risk_level),
        allowed=np.asarray(result.allowed, dtype=np.bool_),
        equity=np.asarray(result.equity, dtype=np.float64),
        cash=np.asarray(result.cash, dtype=np.float64),
        position_qty=np.asarray(result.position_qty, dtype=np.float64),
        exposure=np.asarray(result.exposure, dtype=np.float64),
    )
    return table


def trades_table(result: BacktestResult) -> Table:
    """One row per fill: time (the fill bar's open), time_ms, decision_time, decision_ms,
    side, qty, price (after slippage), notional (before the fee), fee, realised_pnl (NaN for
    a BUY), reason."""
    fills = result.fills
    time_ms = np.array([f.time_ms for f in fills], dtype=np.int64)
    decision_ms = np.array([f.decision_ms for f in fills], dtype=np.int64)
    pnl = [np.nan if f.realised_pnl is None else f.realised_pnl for f in fills]
    return {
        "time": iso_array(time_ms),
        "time_ms": time_ms,
        "decision_time": iso_array(decision_ms),
        "decision_ms": decision_ms,
        "side": np.array([f.side for f in fills], dtype=np.str_),
        "qty": np.array([f.qty for f in fills], dtype=np.float64),
        "price": np.array([f.price for f in fills], dtype=np.float64),
        "notional": np.array([f.notional for f in fills], dtype=np.float64),
        "fee": np.array([f.fee for f in fills], dtype=np.float64),
        "realised_pnl": np.array(pnl, dtype=np.float64),
        "reason": np.array([f.reason for f in fills], dtype=np.str_),
    }


def _quote(text: str) -> str:
    """A CSV field as the ``csv`` module writes it (quoted only when it must be)."""
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _csv_column(col: npt.NDArray[Any]) -> list[str]:
    """Text of a column: floats in shortest round-trip form (``repr``; NaN empty), bools
    true/false, text quoted where needed."""
    if col.dtype.kind == "f":
        values = col.astype(np.float64)
        text = list(map(float.__repr__, values.tolist()))
        for i in np.flatnonzero(np.isnan(values)).tolist():
            text[i] = ""
        return text
    if col.dtype.kind == "b":
        return ["true" if v else "false" for v in col.tolist()]
    if col.dtype.kind in "iu":
        return list(map(str, col.tolist()))
    return [_quote(str(v)) for v in col.tolist()]


def _write_csv(table: Table, path: Path) -> None:
    columns = [_csv_column(np.asarray(c)) for c in table.values()]
    with path.open("w", newline="", encoding="utf-8") as fh:
        fh.write(",".join(_quote(name) for name in table) + "\n")
        fh.writelines(",".join(row) + "\n" for row in zip(*columns, strict=True))


def _write_parquet(table: Table, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = [pa.array(np.asarray(c), from_pandas=True) for c in table.values()]
    pq.write_table(pa.Table.from_arrays(arrays, names=list(table)), str(path))


def write_table(table: Table, path: str | Path) -> Path:
    """Write ``table`` to ``path`` by its suffix (``.csv`` or ``.parquet``), creating parent
    directories; return the path. CSV floats are written in shortest round-trip form so they
    read back exactly; bools as ``true``/``false``. Raise `InvalidRequestError` for any other
    suffix."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise InvalidRequestError(
            f"unsupported table format {p.suffix or '(no suffix)'!r} for {str(p)!r}:"
            f" expected one of {', '.join(SUFFIXES)}",
            field="path",
        )
    lengths = {np.asarray(c).shape[0] for c in table.values()}
    if len(lengths) > 1:
        raise ValueError(f"table columns differ in length: {sorted(lengths)}")
    p.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        _write_csv(table, p)
    else:
        _write_parquet(table, p)
    return p
