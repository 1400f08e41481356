"""Paper accounts over the store (SQLite and PostgreSQL): fills, P&L, idempotency, risk."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import text

from conclave.accounts import AccountService, StoreAccountReader, UnknownAccountError
from conclave.agents import AgentInput
from conclave.agents.risk_manager import RiskManager
from conclave.market.candles import Candles
from tests.accounts.conftest import T0, H, bar, new_account, run


async def _count(service: AccountService, table: str, account_id: str) -> int:
    async with service.repo.read() as conn:
        got = await conn.execute(
            text(f"SELECT count(*) FROM {table} WHERE account_id = :a"), {"a": account_id}
        )
        return int(got.scalar_one())


async def test_a_decision_fills_at_the_next_bars_open_with_fees_and_slippage(
    service: AccountService,
) -> None:
    """BUY at bar 0's close (110) fills at bar 1's open 120 x 1.001, fee 0.1 % of notional."""
    acct = await new_account(service, max_position_fraction=0.5)
    first = await service.process_run(acct, run("BUY", 1.0), bars=[bar(0, 100.0, 110.0)])
    assert first["order"]["status"] == "pending"
    assert first["fills"] == []
    assert first["order"]["notional"] == pytest.approx(5000.0)
    bars = [bar(0, 100.0, 110.0), bar(1, 120.0, 130.0)]
    second = await service.process_run(acct, run("HOLD", 0.0), bars=bars)
    (fill,) = second["fills"]
    assert fill["price"] == pytest.approx(120.0 * 1.001)  # never 110, the decision close
    assert fill["price"] != pytest.approx(110.0 * 1.001)
    assert fill["qty"] == pytest.approx(5000.0 / 120.12)
    assert fill["fee"] == pytest.approx(5.0)
    shown = await service.get(acct)
    assert shown is not None
    assert shown["cash"] == pytest.approx(10_000 - 5005.0)
    assert shown["equity"] == pytest.approx(4995.0 + fill["qty"] * 130.0)
    (pos,) = shown["positions"]
    assert pos["avgCost"] == pytest.approx(5005.0 / fill["qty"])
    assert pos["unrealisedPnl"] == pytest.approx(fill["qty"] * 130.0 - 5005.0)


async def test_realised_and_unrealised_pnl_add_up_to_equity(service: AccountService) -> None:
    """After a buy and a partial sell, equity = start + realised + unrealised."""
    acct = await new_account(service, max_position_fraction=0.5)
    await service.process_run(acct, run("BUY"), bars=[bar(0, 100, 100)])
    await service.process_run(acct, run("SELL", 0.3), bars=[bar(0, 100, 100), bar(1, 100, 110)])
    out = await service.process_run(acct, run("HOLD"), bars=[bar(1, 100, 110), bar(2, 120, 90)])
    (sale,) = out["fills"]
    assert sale["side"] == "SELL"
    assert sale["price"] == pytest.approx(120 * 0.999)
    shown = await service.get(acct)
    assert shown is not None
    assert shown["realisedPnl"] == pytest.approx(sale["realisedPnl"])
    total = 10_000 + shown["realisedPnl"] + shown["unrealisedPnl"]
    assert shown["equity"] == pytest.approx(total)


async def test_reprocessing_the_same_run_is_a_no_op(service: AccountService) -> None:
    """The same run twice: one order, one equity point, the first outcome replayed."""
    acct = await new_account(service)
    wire = run("BUY")
    first = await service.process_run(acct, wire, bars=[bar(0, 100, 100)])
    again = await service.process_run(acct, wire, bars=[bar(0, 100, 100)])
    assert again["replayed"] is True
    assert again["order"] == first["order"]
    assert await _count(service, "orders", acct) == 1
    assert await _count(service, "equity_points", acct) == 1


async def test_halt_then_resume_past_hysteresis_or_by_hand_recorded(
    service: AccountService,
) -> None:
    """A 25 % drawdown halts; 17 % stays halted; 10 % resumes; manual resume is recorded too."""
    acct = await new_account(service, max_position_fraction=1.0, hysteresis=0.05,
                             daily_loss_limits=(0.5, 0.6, 0.9))  # fmt: skip
    await service.process_run(acct, run("BUY"), bars=[bar(0, 100, 100)])
    out = await service.process_run(acct, run("HOLD"), bars=[bar(0, 100, 100), bar(1, 100, 100)])
    qty = out["fills"][0]["qty"]
    cash = (await service.get(acct) or {})["cash"]

    def price(dd: float) -> float:  # the close giving drawdown dd from the peak at 100
        peak = cash + qty * 100
        return (peak * (1 - dd) - cash) / qty

    halted = await service.process_run(acct, run("BUY"), bars=[bar(2, 100, price(0.25))])
    assert halted["status"] == "halted"
    assert halted["events"][0]["kind"] == "halt"
    assert "drawdown" in halted["events"][0]["reason"]
    assert halted["order"] is None
    still = await service.process_run(acct, run("HOLD"), bars=[bar(3, 90, price(0.17))])
    assert still["status"] == "halted"
    back = await service.process_run(acct, run("HOLD"), bars=[bar(4, 90, price(0.10))])
    assert back["status"] == "active"
    assert "hysteresis" in back["events"][0]["reason"]
    await service.process_run(acct, run("HOLD"), bars=[bar(5, 90, price(0.30))])
    resumed = await service.resume(acct, "operator accepts the loss", now_ms=T0 + 10 * H)
    assert resumed["status"] == "active"
    assert resumed["drawdown"] == 0.0
    kinds = [(e["kind"], e["source"]) for e in resumed["riskEvents"]]
    assert kinds == [("halt", "auto"), ("resume", "auto"), ("halt", "auto"), ("resume", "manual")]
    assert resumed["riskEvents"][-1]["reason"] == "operator accepts the loss"


async def test_a_losing_sale_starts_a_cooldown_on_entries(service: AccountService) -> None:
    """After a losing sale, the next BUY is not placed (cooldown); pause blocks every order."""
    acct = await new_account(service, cooldown_bars=3)
    await service.process_run(acct, run("BUY"), bars=[bar(0, 100, 100)])
    await service.process_run(acct, run("SELL"), bars=[bar(0, 100, 100), bar(1, 100, 100)])
    out = await service.process_run(acct, run("BUY"), bars=[bar(1, 100, 100), bar(2, 90, 90)])
    assert out["fills"][0]["realisedPnl"] < 0
    assert out["order"] is None
    assert "cooldown" in out["skipped"]
    assert [e["kind"] for e in out["events"]] == ["cooldown"]
    await service.pause(acct, "maintenance", now_ms=T0)
    paused = await service.process_run(acct, run("BUY"), bars=[bar(9, 90, 90)])
    assert paused["order"] is None
    assert "paused" in paused["skipped"]


async def test_the_reader_gives_the_risk_agent_the_real_drawdown(service: AccountService) -> None:
    """An account 15 % below its peak is ``reduce`` for the risk-manager agent; 25 % halts."""
    acct = await new_account(service, max_position_fraction=1.0,
                             daily_loss_limits=(0.5, 0.6, 0.9))  # fmt: skip
    await service.process_run(acct, run("BUY"), bars=[bar(0, 100, 100)])
    await service.process_run(acct, run("HOLD"), bars=[bar(0, 100, 100), bar(1, 100, 120)])
    await service.process_run(acct, run("HOLD"), bars=[bar(2, 120, 101)])
    reader = StoreAccountReader(service)
    state = await reader.read(acct, as_of_ms=T0 + 3 * H)
    assert state.equity.max() > 10_000  # the peak is above the starting balance
    n = 3
    candles = Candles.from_arrays("BTCUSDT", "1h", T0 + np.arange(n) * H, *([np.ones(n)] * 5))
    agent_input = AgentInput("BTCUSDT", "1h", T0 + 3 * H, candles, account=state)
    result = RiskManager().run(agent_input, now_iso="x")
    assert result.payload["level"] == "reduce", result.payload
    assert result.payload["drawdown"] == pytest.approx(1 - state.equity[-1] / state.equity.max())
    await service.pause(acct, "manual", now_ms=T0)
    paused = await reader.read(acct, as_of_ms=T0 + 3 * H)
    assert RiskManager().run(AgentInput("BTCUSDT", "1h", T0 + 3 * H, candles, account=paused),
                             now_iso="x").payload["allowed"] is False  # fmt: skip
    with pytest.raises(UnknownAccountError, match="no account"):
        await reader.read("paper-missing", as_of_ms=T0)


async def _halted_with_a_position(service: AccountService, **limits: object) -> str:
    """An all-in account halted by a 25 % drawdown at bar 2's close, still holding."""
    acct = await new_account(service, max_position_fraction=1.0,
                             daily_loss_limits=(0.5, 0.6, 0.9), **limits)  # fmt: skip
    await service.process_run(acct, run("BUY"), bars=[bar(0, 100, 100)])
    await service.process_run(acct, run("HOLD"), bars=[bar(0, 100, 100), bar(1, 100, 100)])
    return acct


async def test_a_halted_account_refuses_entries_but_executes_exits(
    service: AccountService,
) -> None:
    """block_entries: halted, a BUY is refused; a SELL is placed and fills at the next open."""
    acct = await _halted_with_a_position(service)
    halted = await service.process_run(acct, run("BUY"), bars=[bar(2, 100, 74)])
    assert (halted["status"], halted["order"]) == ("halted", None)
    assert "entries blocked" in halted["skipped"]
    sold = await service.process_run(acct, run("SELL", 0.5), bars=[bar(3, 74, 73)])
    assert sold["status"] == "halted"
    assert sold["order"]["side"] == "SELL"
    out = await service.process_run(acct, run("HOLD"), bars=[bar(3, 74, 73), bar(4, 72, 72)])
    (fill,) = out["fills"]
    assert (fill["side"], fill["fillOpenMs"]) == ("SELL", T0 + 4 * H)


async def test_flatten_sells_the_whole_position_at_the_next_open_when_halted(
    service: AccountService,
) -> None:
    """halt_action flatten: the run that halts places a sell-all whatever its decision, a
    BLOCKED one included (closing needs no risk verdict); it fills whole at the next open,
    even above the decision's close."""
    acct = await _halted_with_a_position(service, halt_action="flatten")
    blocked = run("HOLD")
    blocked["decision"] |= {"status": "blocked", "action": "BLOCKED"}
    halted = await service.process_run(acct, blocked, bars=[bar(2, 100, 74)])
    assert halted["status"] == "halted"
    assert halted["order"]["side"] == "SELL"
    assert "flatten" in halted["order"]["reason"]
    out = await service.process_run(acct, run("HOLD"), bars=[bar(2, 100, 74), bar(3, 80, 80)])
    (fill,) = out["fills"]
    assert fill["side"] == "SELL"
    assert fill["price"] > 74
    shown = await service.get(acct)
    assert shown is not None
    assert shown["positions"][0]["qty"] == 0.0
    assert shown["status"] == "halted"


async def test_the_streak_guard_pauses_entries_only_and_a_hand_pause_stops_all(
    service: AccountService,
) -> None:
    """After a losing sale with a streak of 1: a BUY waits, a SELL goes through; after
    `pause` by hand neither does."""
    acct = await new_account(service, stoploss_streak=1, stoploss_pause_bars=10,
                             max_position_fraction=0.5,
                             daily_loss_limits=(0.5, 0.6, 0.9))  # fmt: skip
    await service.process_run(acct, run("BUY"), bars=[bar(0, 100, 100)])
    await service.process_run(acct, run("SELL", 0.3), bars=[bar(0, 100, 100), bar(1, 100, 100)])
    out = await service.process_run(acct, run("BUY"), bars=[bar(1, 100, 100), bar(2, 90, 90)])
    assert out["fills"][0]["realisedPnl"] < 0
    assert out["order"] is None
    assert "stop-loss streak guard" in out["skipped"]
    sell = await service.process_run(acct, run("SELL", 0.3), bars=[bar(3, 90, 90)])
    assert sell["order"]["side"] == "SELL"
    await service.pause(acct, "review", now_ms=T0)
    paused = await service.process_run(acct, run("SELL", 0.3), bars=[bar(4, 90, 90)])
    assert paused["order"] is None
    assert "paused by hand" in paused["skipped"]


async def test_a_sell_all_closes_the_position_when_the_next_open_is_higher(
    service: AccountService,
) -> None:
    """Sized at a close of 100, a sell-all filled at an open of 150 sells every unit."""
    acct = await new_account(service, max_position_fraction=0.5)
    await service.process_run(acct, run("BUY"), bars=[bar(0, 100, 100)])
    await service.process_run(acct, run("SELL"), bars=[bar(0, 100, 100), bar(1, 100, 100)])
    out = await service.process_run(acct, run("HOLD"), bars=[bar(1, 100, 100), bar(2, 150, 150)])
    (fill,) = out["fills"]
    shown = await service.get(acct)
    assert shown is not None
    assert fill["side"] == "SELL"
    assert shown["positions"][0]["qty"] == 0.0
