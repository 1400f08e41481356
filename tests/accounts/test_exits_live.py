"""Through the live `AccountService` (SQLite): risk never traps a position.

For random price paths and signal sequences, each bar runs the chain a scheduled run
does: `StoreAccountReader` -> the `RiskManager` agent -> `decide` -> `process_run`. Fewer
examples than the backtest's properties (tests/backtest/test_risk_exits.py): each one is
a real store on disk.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from conclave.accounts import AccountConfig, AccountService, Bar, StoreAccountReader, paper
from conclave.agents import AgentInput
from conclave.agents.risk_manager import RiskManager
from conclave.market.candles import Candles
from conclave.pipeline.context import StepResult
from conclave.pipeline.decision import ANALYSIS_AGENTS, RISK_AGENT, SIZING_AGENT, DecisionConfig
from conclave.pipeline.decision import decide as live_decide
from conclave.store import RunStore
from tests.accounts.conftest import T0, H

# thresholds fixed so that the scores below trade whatever the defaults are
DECISION = DecisionConfig(buy_threshold=0.15, sell_threshold=0.15, strong_threshold=0.5)


async def replay(
    root: Path, moves: Sequence[float], scores: Sequence[float], cfg: AccountConfig
) -> Counter[str]:
    """Run the bars; check every SELL on a held position (and every flatten); count what
    risk state each executed SELL went through."""
    store = await RunStore.open(None, data_dir=root)
    seen: Counter[str] = Counter()
    try:
        service = AccountService(store)
        reader = StoreAccountReader(service)
        created = await service.create("p", balance=10_000.0, quote="USDT", fee_rate=0.001,
                                       slippage=0.0005, config=cfg)  # fmt: skip
        acct = str(created["id"])
        bars: list[Bar] = []
        last = 100.0
        for i, (move, score) in enumerate(zip(moves, scores, strict=True)):
            o, c = last, last * (1.0 + move)
            last = c
            bars.append(Bar(T0 + i * H, T0 + (i + 1) * H, o, c))
            state = await reader.read(acct, as_of_ms=bars[-1].close_ms)
            one = Candles.from_arrays("BTCUSDT", "1h", [T0 + i * H], [o], [max(o, c)],
                                      [min(o, c)], [c], [1.0])  # fmt: skip
            verdict = RiskManager().run(AgentInput("BTCUSDT", "1h", bars[-1].close_ms, one,
                                                   account=state), now_iso="x")  # fmt: skip
            steps = {a: StepResult(a, "ok", score, 90.0, {}, 0.0) for a in ANALYSIS_AGENTS}
            steps[SIZING_AGENT] = StepResult(SIZING_AGENT, "ok", 0.0, 90.0,
                                             {"size_multiplier": 0.5}, 0.0)  # fmt: skip
            steps[RISK_AGENT] = StepResult.from_result(verdict)
            d = live_decide(steps, DECISION)
            wire = {"runId": f"r{i}", "symbol": "BTCUSDT", "timeframe": "1h",
                    "decision": d.to_wire()}  # fmt: skip
            out = await service.process_run(acct, wire, bars=bars[-2:])
            shown = await service.get(acct)
            assert shown is not None
            qty = sum(p["qty"] for p in shown["positions"])
            if qty <= paper.QTY_EPS:
                continue
            if out["status"] == "halted" and cfg.halt_action == "flatten":
                assert out["order"] is not None
                assert (out["order"]["side"], out["order"]["qty"]) == ("SELL", qty)
                seen["flatten"] += 1
                continue
            if d.action != "SELL":
                continue
            assert d.tradable
            assert d.size_multiplier == d.strength  # an exit, sized by the decision alone
            want, _ = paper.size_order(
                "SELL", equity=out["equity"], size_multiplier=d.size_multiplier,
                max_position_fraction=cfg.max_position_fraction, position_qty=qty, price=c,
                min_order_notional=cfg.min_order_notional, qty_step=cfg.qty_step,
            )  # fmt: skip
            if want is None:
                continue  # the lot rules refuse it, not the risk rules
            assert out["order"] is not None, out["skipped"]
            assert out["order"]["side"] == "SELL"
            prot, now = shown["protections"], bars[-1].close_ms
            states = {
                "halted": out["status"] == "halted",
                "streak guard": (prot["pausedUntilMs"] or 0) > now,
                "cooldown": (prot["cooldownUntilMs"] or 0) > now,
                "veto": d.risk_veto,
            }
            seen.update([k for k, v in states.items() if v] or ["no risk state"])
    finally:
        await store.aclose()
    return seen


@st.composite
def paths(draw: st.DrawFn) -> tuple[list[float], list[float], AccountConfig]:
    n = draw(st.integers(20, 50))
    moves = draw(st.lists(st.floats(-0.06, 0.06), min_size=n, max_size=n))
    scores = draw(st.lists(st.sampled_from([-0.9, -0.4, 0.0, 0.4, 0.9]), min_size=n,
                           max_size=n))  # fmt: skip
    cfg = AccountConfig(
        max_position_fraction=draw(st.sampled_from([0.5, 1.0])),
        min_order_notional=draw(st.sampled_from([10.0, 300.0])),
        drawdown_limits=(0.02, 0.05, 0.1),
        daily_loss_limits=draw(st.sampled_from([(0.01, 0.02, 0.03), (0.1, 0.2, 0.5)])),
        stoploss_streak=draw(st.integers(1, 3)),
        stoploss_pause_bars=draw(st.integers(0, 6)),
        cooldown_bars=draw(st.integers(0, 3)),
        halt_action=draw(st.sampled_from(["block_entries", "flatten"])),
    )
    return moves, scores, cfg


@settings(max_examples=20, deadline=None)
@given(paths())
def test_the_live_account_never_blocks_a_sell_on_a_held_position(
    path: tuple[list[float], list[float], AccountConfig],
) -> None:
    """A SELL decided on a held position is a tradable SELL sized by its strength, and the
    account places it (unless the lot rules refuse the same order anywhere) whether the
    account is halted, under the streak guard or a cooldown, or the risk manager vetoes;
    with ``flatten`` a halted account sells the whole position."""
    with tempfile.TemporaryDirectory() as root:
        seen = asyncio.run(replay(Path(root), *path))
    for state in seen:
        event(f"executed: {state}")


@pytest.mark.parametrize("halt_action", ["block_entries", "flatten"])
def test_the_live_property_meets_the_risk_states(halt_action: str) -> None:
    """The property above is not vacuous: on seeded choppy paths with tight limits, SELLs
    were placed while halted (or flattened), vetoed, under the streak guard and a cooldown."""
    seen: Counter[str] = Counter()
    for seed, fraction, streak, scores in (
        (3, 1.0, 2, [-0.9, -0.4, 0.4, 0.9, 0.9]),
        (0, 0.5, 1, [-0.9, -0.2, -0.2, 0.4, 0.9, 0.9]),
    ):
        rng = np.random.default_rng(seed)
        moves = rng.uniform(-0.05, 0.045, 60).tolist()
        signals = rng.choice(scores, 60).tolist()
        cfg = AccountConfig(max_position_fraction=fraction, drawdown_limits=(0.02, 0.05, 0.1),
                            daily_loss_limits=(0.1, 0.2, 0.5), stoploss_streak=streak,
                            stoploss_pause_bars=4, cooldown_bars=2, hysteresis=0.0,
                            halt_action=halt_action)  # fmt: skip
        with tempfile.TemporaryDirectory() as root:
            seen += asyncio.run(replay(Path(root), moves, signals, cfg))
    halt = "flatten" if halt_action == "flatten" else "halted"
    assert {halt, "veto", "streak guard", "cooldown"} <= set(seen), seen
