"""Per-agent skill: how well each agent's score (and the decision's conviction) called the
next bar.

A *signal* is a bar ``i < n - 1`` where the agent is usable, its score is finite and not 0,
and the next bar's return ``r[i] = close[i + 1] / close[i] - 1`` is finite. Over the
signals:

- ``hit_rate``: fraction with ``sign(score) == sign(r)``, bars with ``r == 0`` left out;
- ``ic``: the information coefficient, Spearman's rank correlation of score and ``r``
  (average ranks for ties); None with fewer than 3 signals or a constant side;
- ``mean_signed_return``: mean of ``sign(score) x r`` (a fraction per bar);
- ``buckets``: the same by confidence bucket [0, 20), [20, 40), [40, 60), [60, 80),
  [80, 100] (confidence 0..100; out-of-range values go to the nearest end bucket).

The decision is scored as the agent ``"decision"``: conviction as its score (usable where
a decision was made, i.e. conviction is finite), the decision's confidence as confidence.

`score_correlation` shows redundancy between the directional agents: Pearson's correlation
of two agents' scores over the bars where both are usable (1: one vote cast twice, -1: two
methods that read the same moves opposite ways).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from conclave.backtest.result import F64, B, BacktestResult
from conclave.pipeline.decision import DIRECTIONAL_AGENTS

DECISION = "decision"
#: Lower edges of the confidence buckets; the last one includes 100.
BUCKET_EDGES: tuple[float, ...] = (0.0, 20.0, 40.0, 60.0, 80.0)
BUCKET_WIDTH = 20.0
MIN_IC_SIGNALS = 3


def _nan_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


@dataclass(frozen=True, slots=True)
class Bucket:
    """Signals whose confidence is in [lower, upper) (the top bucket includes 100)."""

    lower: float
    upper: float
    count: int
    hit_rate: float | None
    mean_signed_return: float | None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "lower": self.lower,
            "upper": self.upper,
            "count": self.count,
            "hitRate": _nan_none(self.hit_rate),
            "meanSignedReturn": _nan_none(self.mean_signed_return),
        }


@dataclass(frozen=True, slots=True)
class AgentSkill:
    """One agent's skill against the next bar's return (see the module docstring)."""

    name: str
    signals: int
    hit_rate: float | None
    ic: float | None
    mean_signed_return: float | None
    buckets: tuple[Bucket, ...]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "name": self.name,
            "signals": self.signals,
            "hitRate": _nan_none(self.hit_rate),
            "ic": _nan_none(self.ic),
            "meanSignedReturn": _nan_none(self.mean_signed_return),
            "buckets": [b.to_json() for b in self.buckets],
        }


def _ranks_sorted(x: F64, order: npt.NDArray[np.intp]) -> F64:
    """Average ranks 1..n of ``x`` given ``order``, an argsort of ``x``."""
    n = x.size
    ranks = np.empty(n, dtype=np.float64)
    if n == 0:
        return ranks
    xs = x[order]
    new = np.empty(n, dtype=np.bool_)
    new[0] = True
    np.not_equal(xs[1:], xs[:-1], out=new[1:])
    if new.all():  # no ties
        ranks[order] = np.arange(1.0, n + 1.0)
        return ranks
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], n)
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    ranks[order] = average[np.cumsum(new) - 1]
    return ranks


def rankdata(x: F64) -> F64:
    """Ranks 1..n of ``x``, ties given their average rank (as scipy's ``rankdata``)."""
    return _ranks_sorted(x, np.argsort(x))


def _pearson(rx: F64, ry: F64) -> float | None:
    rx = rx - rx.mean()
    ry = ry - ry.mean()
    den = math.sqrt(float(np.dot(rx, rx)) * float(np.dot(ry, ry)))
    if den <= 0.0:
        return None
    return max(-1.0, min(1.0, float(np.dot(rx, ry)) / den))


def spearman(x: F64, y: F64) -> float | None:
    """Spearman's rank correlation with average ranks for ties; None with fewer than 3
    points or when either side is constant."""
    if x.size < MIN_IC_SIGNALS or x.size != y.size:
        return None
    return _pearson(rankdata(x), rankdata(y))


def next_returns(close: F64) -> F64:
    """``r[i] = close[i + 1] / close[i] - 1`` for ``i < n - 1`` (length ``n - 1``)."""
    c = np.asarray(close, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out: F64 = c[1:] / c[:-1] - 1.0
    return out


def _ic(s: F64, rr: F64, mask: B, r_order: npt.NDArray[np.intp] | None) -> float | None:
    """Spearman of the signals' scores ``s`` and returns ``rr`` (``r[mask]``), ranking
    ``rr`` through the full ``r_order`` filtered to the mask (no second sort)."""
    if s.size < MIN_IC_SIGNALS:
        return None
    if r_order is None:
        return spearman(s, rr)
    position = np.cumsum(mask) - 1  # index into the signals of each masked bar
    order = position[r_order[mask[r_order]]]
    return _pearson(rankdata(s), _ranks_sorted(rr, order))


def _empty_buckets() -> tuple[Bucket, ...]:
    return tuple(Bucket(lo, lo + BUCKET_WIDTH, 0, None, None) for lo in BUCKET_EDGES)


def score_skill(
    name: str,
    score: F64,
    confidence: F64,
    usable: B,
    r: F64,
    r_order: npt.NDArray[np.intp] | None = None,
) -> AgentSkill:
    """Skill of one per-bar ``score``/``confidence``/``usable`` series against next-bar
    returns ``r`` (``len(r) == len(score) - 1``; the last bar has no next bar).
    ``r_order`` (``np.argsort(r)``) saves sorting ``r`` again for each agent."""
    m = r.size
    s = np.asarray(score, dtype=np.float64)[:m]
    mask = np.asarray(usable, dtype=np.bool_)[:m] & np.isfinite(s) & (s != 0.0) & np.isfinite(r)
    count = int(mask.sum())
    if count == 0:
        return AgentSkill(name, 0, None, None, None, _empty_buckets())
    s = s[mask]
    rr = r[mask]
    sign = np.sign(s)
    signed = sign * rr
    decided = rr != 0.0
    hit = decided & (sign == np.sign(rr))
    conf = np.asarray(confidence, dtype=np.float64)[:m][mask]
    k = len(BUCKET_EDGES)
    b = np.floor(np.nan_to_num(conf, nan=0.0) / BUCKET_WIDTH)
    b = np.clip(b, 0, k - 1).astype(np.int64)
    n_b = np.bincount(b, minlength=k)
    d_b = np.bincount(b, weights=decided, minlength=k)
    h_b = np.bincount(b, weights=hit, minlength=k)
    s_b = np.bincount(b, weights=signed, minlength=k)
    buckets = tuple(
        Bucket(
            lower=lo,
            upper=lo + BUCKET_WIDTH,
            count=int(n_b[j]),
            hit_rate=float(h_b[j] / d_b[j]) if d_b[j] > 0 else None,
            mean_signed_return=float(s_b[j] / n_b[j]) if n_b[j] > 0 else None,
        )
        for j, lo in enumerate(BUCKET_EDGES)
    )
    n_decided = int(decided.sum())
    return AgentSkill(
        name=name,
        signals=count,
        hit_rate=int(hit.sum()) / n_decided if n_decided else None,
        ic=_ic(s, rr, mask, r_order),
        mean_signed_return=float(signed.mean()),
        buckets=buckets,
    )


def agent_skill(result: BacktestResult) -> list[AgentSkill]:
    """Skill of every agent in ``result.agents`` (in their order), then of the decision
    (named ``"decision"``). Agents that never give a non-zero score get zero signals."""
    r = next_returns(result.close)
    r_order = np.argsort(r)
    out = [
        score_skill(name, a.score, a.confidence, a.usable, r, r_order)
        for name, a in result.agents.items()
    ]
    conviction = np.asarray(result.conviction, dtype=np.float64)
    out.append(score_skill(DECISION, conviction, result.confidence, np.isfinite(conviction), r))
    return out


def score_correlation(result: BacktestResult) -> dict[str, dict[str, float | None]]:
    """``{agent: {agent: r}}`` over the directional agents of ``result`` (registry order):
    Pearson's r of their scores over the bars where both are usable; None with fewer than
    `MIN_IC_SIGNALS` such bars or a constant side (an agent that never had data)."""
    names = [a for a in DIRECTIONAL_AGENTS if a in result.agents]
    out: dict[str, dict[str, float | None]] = {a: {} for a in names}
    for i, a in enumerate(names):
        sa = result.agents[a]
        for b in names[i:]:
            sb = result.agents[b]
            both = np.asarray(sa.usable, dtype=np.bool_) & np.asarray(sb.usable, dtype=np.bool_)
            r = None
            if int(both.sum()) >= MIN_IC_SIGNALS:
                x = np.asarray(sa.score, dtype=np.float64)[both]
                y = np.asarray(sb.score, dtype=np.float64)[both]
                constant = x.min() == x.max() or y.min() == y.max()  # no rounding noise
                r = None if constant else _pearson(x, y)
            out[a][b] = out[b][a] = r
    return out
